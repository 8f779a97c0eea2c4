"""Members as Ray actors on a local CPU cluster (CLI, API usage, chat): the in-process answer, bit for bit,
and a member actor that dies mid-request costs that request only."""

import json
import os
import signal

import pytest

pytest.importorskip("ray")

from tie_lite.engine.events import StepFrame  # noqa: E402
from tie_lite.engine.sampler import DecodeSettings  # noqa: E402
from tie_lite.engine.tie import TieSettings  # noqa: E402
from tie_lite.errors import UserError  # noqa: E402
from tie_lite.runtime.session import Ensemble, LoadSettings  # noqa: E402

try:
    from test_bad_input import run_cli
    from test_ui import free_port
except ImportError:
    from .test_bad_input import run_cli
    from .test_ui import free_port

PROMPT = [{"role": "user", "content": "What is 23*4+17*5?"}]


def summary(result):
    return (result.text, result.final_member, result.rounds, result.responses, result.steps)


def test_cli_ray_flag_gives_the_in_process_answer():
    # first in this module: the in-process CLI starts the local cluster that the tests below reuse
    # one thread on both sides: CPU float sums depend on the thread count, and --threads sets the actors' too
    argv = ["generate", "What is 48+39?", "--json", "--score", "verify", "--select", "verify", "--threads", "1"]
    code, here, _ = run_cli(argv, "ray")
    assert code == 0
    code, remote, err = run_cli(argv + ["--ray"], "ray")
    assert code == 0, err
    keys = ("text", "final_member", "rounds", "responses", "steps")
    assert {k: json.loads(remote)[k] for k in keys} == {k: json.loads(here)[k] for k in keys}


def test_ray_refuses_a_memory_budget_in_one_line():
    code, _, err = run_cli(["generate", "What is 2+3?", "--ray", "--max-memory", "1GiB"], "ray")
    assert code == 2 and "--ray" in err and "--max-memory" in err


def test_joining_a_cluster_that_is_not_there_is_one_line():
    code, _, err = run_cli(["generate", "What is 2+3?", "--ray", f"127.0.0.1:{free_port()}"], "ray")
    assert code == 2 and "no Ray cluster answers there" in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def ensembles():
    import torch

    # the actors compute with this process's thread count, so that float sums are the same on both sides
    return Ensemble(LoadSettings()), Ensemble(LoadSettings(ray="local", threads=torch.get_num_threads()))


@pytest.mark.parametrize("score,select", [("tcc", "lowest-tcc"), ("verify", "verify")])
@pytest.mark.parametrize("cache,temperature", [("none", 0.0), ("dual", 0.8)])
def test_actors_give_the_in_process_result(ensembles, score, select, cache, temperature):
    here, remote = ensembles
    decode = DecodeSettings(cache=cache, temperature=temperature, seed=5)
    tie = TieSettings(interval=16, score=score, select=select)
    expected = here.run(PROMPT, decode, tie)
    assert len(expected.rounds) > 1  # relays happened, so the relay state crossed
    assert summary(remote.run(PROMPT, decode, tie)) == summary(expected)


def test_only_relay_state_crosses(ensembles):
    _, remote = ensembles
    before = [m.bytes_crossed for m in remote.members]
    result = remote.run(PROMPT, DecodeSettings(), TieSettings(score="verify", select="verify"))
    crossed = sum(m.bytes_crossed for m in remote.members) - sum(before)
    # kilobytes a round: logits of one canvas alone would be positions x vocabulary floats
    assert 0 < crossed / len(result.rounds) < 32 * 1024


def test_a_member_dying_mid_request_is_one_error_and_the_next_request_works(ensembles):
    here, remote = ensembles
    decode, tie = DecodeSettings(), TieSettings(score="verify", select="verify")
    victim = remote.members[1]
    victim.load()  # its worker's process id now

    def kill_at_first_step(event):
        if isinstance(event, StepFrame):
            os.kill(victim.pid, signal.SIGKILL)

    with pytest.raises(UserError) as lost:
        remote.run(PROMPT, decode, tie, on_event=kill_at_first_step)
    message = str(lost.value)
    assert "\n" not in message and victim.name in message and "send the request again" in message
    assert summary(remote.run(PROMPT, decode, tie)) == summary(here.run(PROMPT, decode, tie))


def test_the_api_servers_usage_counts_tokens_on_the_actors(ensembles):
    from tie_lite.faces.serve import token_counts

    here, remote = ensembles
    result = remote.run(PROMPT, DecodeSettings(), TieSettings())
    usage = token_counts(remote, result, PROMPT)
    assert usage == token_counts(here, result, PROMPT) and usage[0] > 0


def test_the_chat_runs_on_ray_members(ensembles):
    from dataclasses import replace

    from gradio_client import Client

    from tie_lite.faces.chat.app import build_app, launch_app

    here, remote = ensembles
    demo = build_app(remote)  # the summary reads each member's name, size and quantization from its actor
    port = free_port()
    launch_app(demo, port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        settings = {"score": "verify", "select": "verify"}
        reply = client.predict(PROMPT[0]["content"], None, settings, api_name="/chat")
        decode, tie = demo.tie_defaults.decode, replace(demo.tie_defaults.tie, **settings)
        assert reply == here.run(PROMPT, decode, tie).text
    finally:
        demo.close()
