"""Bounded requests (issue 45): every numeric setting has a bound that follows from the model, a prompt too long
for the context is refused by its characters before it is tokenized, and a long request yields to others
between forwards."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from tie_lite.engine.sampler import MAX_EDIT_STEPS
from tie_lite.faces.client_settings import Defaults
from tie_lite.runtime.batching import BatchEngine
from tie_lite.runtime.session import Ensemble

try:
    from test_serve import KEY, start_server
    from test_ui import tiny_models  # noqa: F401  (a fixture)
except ImportError:
    from .test_serve import KEY, start_server
    from .test_ui import tiny_models  # noqa: F401

AUTH = {"authorization": f"Bearer {KEY}"}

MESSAGES = [{"role": "user", "content": "What is (23+41)*7?"}]
HUGE = "What is 37+85? " + "9" * 5_000_000  # a prompt no shipped member's context holds, at any tokenization


def tie_lite(*args, stdin: str | None = None, timeout: float = 300):
    return subprocess.run([sys.executable, "-m", "tie_lite.faces.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout)


def refused(run, *words):
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tie-lite: error:"), run.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert run.stdout == ""
    return lines[0]


@pytest.mark.parametrize("flags, words", [
    (["--edit-threshold", "0.9", "--edit-steps", "1000000000"], ["--edit-steps", f"0..{MAX_EDIT_STEPS}"]),
    (["--unmask", "topk", "--topk", "1000000"], ["--topk", "1..16"]),
])
def test_a_setting_past_its_bound_is_refused_before_anything_runs(flags, words):
    refused(tie_lite("generate", "What is 37+85?", *flags), *words)


def test_more_steps_than_positions_still_take_at_most_one_forward_a_position():
    """--steps past the canvas is what LLaDA's generate() allows (steps that commit nothing); every step of
    tie-lite's commits at least one position, so the decode's forwards stay bounded by the canvas."""
    done = tie_lite("generate", "What is 37+85?", "--model", "tiny-sp", "--steps", "100000", "--json")
    assert done.returncode == 0, done.stderr
    assert 0 < json.loads(done.stdout)["steps"] <= 64


def test_a_huge_prompt_on_standard_input_is_refused_by_its_length():
    line = refused(tie_lite("generate", "-", stdin=HUGE + "\n"), "5,000,015 characters", "context of 256 tokens")
    assert "shorten it" in line


def test_a_huge_prompt_in_a_prompts_file_names_its_line(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "What is 37+85?"}) + "\n" + json.dumps({"prompt": HUGE}) + "\n")
    refused(tie_lite("generate", "--prompts", str(prompts)), "prompts.jsonl line 2", "characters")


def test_a_huge_question_in_a_data_file_names_its_line(tmp_path):
    data = tmp_path / "questions.jsonl"
    data.write_text(json.dumps({"question": "What is 37+85?", "answer": "122"}) + "\n"
                    + json.dumps({"question": HUGE, "answer": "122"}) + "\n")
    refused(tie_lite("eval", "--data", str(data), "--checker", "number"), "questions.jsonl line 2", "characters")


@pytest.fixture(scope="module")
def engine():
    defaults = Defaults()
    return BatchEngine(Ensemble(defaults.load), max_batch=4), defaults


def test_a_long_request_on_one_member_does_not_hold_a_request_on_another(engine):
    """A request editing on tiny-sp at the largest edit_steps, and a short one on tiny-bpe that comes after it:
    while both run they take turns, so the short one waits at most one forward for each of its own (before, the
    resident member's request went first until it was done)."""
    eng, defaults = engine
    quick, one = replace(defaults.decode, steps=16), replace(defaults.tie, score="tcc")  # one member: plain decoding
    alone = eng.forwards
    job = eng.submit(MESSAGES, quick, one, [1])
    assert job.finished.wait(120) and job.result is not None, job.error
    alone = eng.forwards - alone

    long = eng.submit(MESSAGES, replace(defaults.decode, edit_threshold=0.0, edit_steps=MAX_EDIT_STEPS),
                      one, [0])
    while eng.forwards < 3:  # the long one holds tiny-sp
        pass
    start = eng.forwards
    short = eng.submit(MESSAGES, quick, one, [1])
    assert short.finished.wait(120) and short.result is not None, short.error
    during = eng.forwards - start
    long_done = long.finished.is_set()
    long.cancel()
    assert not long_done  # it was still running: the short one had company all along
    assert during <= 2 * alone + 2, (during, alone)
    assert short.result.token_ids == job.result.token_ids


# --- the server: the same bounds, as a client meets them ------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_models):
    app, url, stop = start_server()  # the default body cap, 1 MiB: a 900 KB text gets through to the endpoint
    yield url
    stop()


def test_tokenize_refuses_text_no_context_holds_and_memory_stays_flat(server):
    import concurrent.futures

    import httpx
    import psutil

    process = psutil.Process()
    before = process.memory_info().rss
    body = {"model": "tiny-sp", "prompt": "9" * 900_000}
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        replies = list(pool.map(lambda _: httpx.post(f"{server}/tokenize", json=body, headers=AUTH, timeout=60),
                                range(3)))
    for reply in replies:
        assert reply.status_code == 400, reply.text
        error = reply.json()["error"]
        assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"
        assert "900,000 characters" in error["message"]
    assert process.memory_info().rss - before < 64 << 20
    ok = httpx.post(f"{server}/tokenize", json={"model": "tiny-sp", "prompt": "What is 37+85?"}, headers=AUTH)
    assert ok.status_code == 200 and ok.json()["count"] > 0


def test_detokenize_refuses_more_ids_than_the_context(server):
    import httpx

    reply = httpx.post(f"{server}/detokenize", json={"tokens": [5] * 100_000}, headers=AUTH)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "tokens", reply.text


def test_responses_refuse_a_huge_input_untokenized(server):
    from openai import BadRequestError, OpenAI

    client = OpenAI(base_url=f"{server}/v1", api_key=KEY)
    with pytest.raises(BadRequestError) as caught:
        client.responses.create(model="tie:tiny-sp+tiny-bpe", input="What is 37+85? " + "9" * 200_000)
    assert caught.value.body["code"] == "context_length_exceeded" and caught.value.body["param"] == "input"


@pytest.mark.parametrize("fields, param", [
    ({"edit_threshold": 0.9, "edit_steps": 1_000_000_000}, "edit_steps"),
    ({"edit_threshold": "0.9"}, "edit_threshold"),
    ({"edit_threshold": 0.9, "edit_steps": "3"}, "edit_steps"),
    ({"temperature": True}, "temperature"),
])
def test_the_api_refuses_settings_past_their_bounds_or_written_as_text(server, fields, param):
    from openai import BadRequestError, OpenAI

    client = OpenAI(base_url=f"{server}/v1", api_key=KEY)
    with pytest.raises(BadRequestError) as caught:
        client.completions.create(model="tie:tiny-sp+tiny-bpe", prompt="What is 37+85?", extra_body=fields)
    assert caught.value.body["param"] == param, caught.value.body
    assert "\n" not in caught.value.body["message"]


def test_a_data_file_record_no_context_holds_is_refused_before_it_is_parsed(tmp_path):
    from tie_lite.tasks.data import LONGEST_RECORD

    data = tmp_path / "huge.jsonl"
    with open(data, "w") as f:
        f.write(json.dumps({"question": "What is 37+85?", "answer": "122"}) + "\n")
        f.write('{"question": "' + "9" * LONGEST_RECORD + '", "answer": "122"}\n')
    refused(tie_lite("eval", "--data", str(data), "--checker", "number"), "huge.jsonl line 2", "characters")


def test_a_canvas_cut_to_a_cap_keeps_the_server_s_steps_per_token():
    """A server started with --steps for its --gen-length, asked for fewer tokens by a family that decodes at any
    length: the canvas shrinks to the cap and the steps with it, as lm-eval's max_gen_toks shrinks them (the same
    steps per token, a whole number per block; under Dream's schedule too, where the old inline version divided by
    zero)."""
    from tie_lite.engine.sampler import DecodeSettings

    wide = DecodeSettings(gen_length=256, block_size=32, steps=256)
    narrow = wide.for_length(32)
    assert (narrow.gen_length, narrow.steps) == (32, 32)
    narrow.validate()
    assert DecodeSettings(gen_length=256, block_size=32, steps=128).for_length(64).steps == 32
    assert DecodeSettings(gen_length=256, block_size=32, steps=128, schedule="dream").for_length(64).steps == 32


def test_lm_eval_takes_the_answer_marker_it_documents():
    from tie_lite.faces.lm_eval_model import model_settings

    args, decode, *_ = model_settings("tiny-sp", "cpu", {"answer_marker": "The answer is", "answer_length": 8},
                                      quiet=True)
    assert decode.answer_marker == "The answer is" and decode.answer_length == 8
