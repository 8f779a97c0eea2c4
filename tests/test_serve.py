"""`tie-lite serve`, driven by the official `openai` client against a live server on localhost: chat,
completions and responses, streaming, stop, token caps, logprobs and n. Robustness (bodies, timeouts,
signals, ports, keys): tests/test_serve_robustness.py."""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time

import pytest

try:
    from test_ui import free_port, slow_forwards, tiny_models  # noqa: F401  (tiny_models: a fixture)
except ImportError:
    from .test_ui import free_port, slow_forwards, tiny_models  # noqa: F401

openai = pytest.importorskip("openai")

PROMPT = "What is (23+41)*7?"
KEY = "test-key"


def start_server(max_batch=8, max_queue=32, api_key=KEY, load=None, **options):
    """(app, base url, stop) for a server on the shipped pair (or the members `load` names), in this process."""
    import httpx
    import uvicorn

    from tie_lite.faces.client_settings import Defaults
    from tie_lite.faces.serve import create_app
    from tie_lite.runtime.session import Ensemble, LoadSettings

    defaults = Defaults(load=load or LoadSettings())
    app = create_app(Ensemble(defaults.load), defaults, api_key=api_key, max_batch=max_batch, max_queue=max_queue,
                     **options)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)

    def stop():
        server.should_exit = True
        thread.join(10)

    return app, url, stop


@pytest.fixture(scope="module")
def served(tiny_models):
    app, url, stop = start_server()
    yield app, url
    stop()


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served[1] + "/v1", api_key=KEY, max_retries=0)


def generate_json(*args, prompt=PROMPT) -> dict:
    from tie_lite.faces.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["generate", prompt, *args, "--json"]) == 0
    return json.loads(out.getvalue())


def generate_text(*args, prompt=PROMPT) -> str:
    return generate_json(*args, prompt=prompt)["text"]


def served_and_chatted(load, max_tokens: int, chat_settings: dict, prompt: str = "What is 2+3?") -> tuple[dict, str]:
    """An ensemble launched with no decoding flag, asked once through the official openai client (with a token cap)
    and once through the chat (gradio_client): (the API trace's member_settings, the chat's answer)."""
    from gradio_client import Client
    from openai import OpenAI
    from test_ui import free_port

    from tie_lite.faces.chat.app import build_app, launch_app
    from tie_lite.faces.client_settings import Defaults
    from tie_lite.runtime.session import Ensemble

    names = Defaults(load=load).member_names
    _, url, stop = start_server(load=load)
    try:
        reply = OpenAI(base_url=f"{url}/v1", api_key=KEY).chat.completions.create(
            model="tie:" + "+".join(names), max_tokens=max_tokens, temperature=0,
            messages=[{"role": "user", "content": prompt}])
        ran = reply.model_extra["tie"]["member_settings"]
    finally:
        stop()
    demo = build_app(Ensemble(load), Defaults(load=load))
    port = free_port()
    launch_app(demo, port=port, prevent_thread_lock=True, quiet=True)
    try:
        text = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(prompt, api_name="/chat",
                                                                          settings=chat_settings)
    finally:
        demo.close()
    return ran, text


def ask(client, model="tie:tiny-sp+tiny-bpe", prompt=PROMPT, temperature=0, **kwargs):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                          temperature=temperature, **kwargs)


def test_models_are_the_ensemble_and_each_member(client):
    assert [m.id for m in client.models.list()] == ["tie:tiny-sp+tiny-bpe", "tiny-sp", "tiny-bpe"]
    assert client.models.retrieve("tie:tiny-sp+tiny-bpe").id == "tie:tiny-sp+tiny-bpe"
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("gpt-4o")
    assert err.value.body["code"] == "model_not_found"


@pytest.mark.parametrize("model,args", [("tie:tiny-sp+tiny-bpe", []), ("tiny-bpe", ["--model", "tiny-bpe"])])
def test_answers_equal_tie_lite_generate(client, model, args):
    reply = ask(client, model, max_tokens=64)
    assert reply.choices[0].message.content == generate_text(*args)
    assert reply.choices[0].finish_reason == "stop" and reply.usage.completion_tokens > 0
    trace = reply.model_extra["tie"]
    assert trace["final_member"] in trace["members"] and len(trace["rounds"]) >= 1


def test_replies_carry_the_generated_token_ids_as_generate_json_does(client):
    expected = generate_json("--member-token-ids")
    trace = ask(client).model_extra["tie"]
    assert trace["token_ids"] == expected["token_ids"] and "response_token_ids" not in trace
    trace = ask(client, extra_body={"member_token_ids": True}).model_extra["tie"]
    assert trace["response_token_ids"] == expected["response_token_ids"]
    assert trace["token_ids"] == trace["response_token_ids"][trace["final_member"]]
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, extra_body={"member_token_ids": "yes"})
    assert err.value.body["param"] == "member_token_ids"


def test_tie_settings_travel_as_extra_fields(client):
    reply = ask(client, extra_body={"score": "tcc", "interval": 32})
    assert reply.choices[0].message.content == generate_text("--score", "tcc", "--interval", "32")


def test_streaming_ends_with_the_same_answer_and_the_trace(client):
    chunks = list(ask(client, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ask(client).choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2  # streamed, not one block
    assert chunks[-1].choices[0].finish_reason == "stop" and "tie" in chunks[-1].model_extra


def test_errors_are_documented_status_codes_with_one_line(served, client):
    cases = [(lambda: ask(client, "no-such-model"), openai.NotFoundError, "unknown model"),
             (lambda: client.chat.completions.create(model="tiny-sp", messages=[{"role": "user", "content": "x"}],
                                                     temperature=-1), openai.BadRequestError, "temperature"),
             (lambda: ask(client, extra_body={"score": "bogus"}), openai.BadRequestError, "unknown score"),
             (lambda: ask(client, extra_body={"models": ["/etc"]}), openai.BadRequestError, "operator"),
             (lambda: ask(client, max_tokens=0), openai.BadRequestError, "max_tokens"),
             (lambda: ask(client, extra_body={"steps": 7}), openai.BadRequestError, "gen_length / block_size"),
             (lambda: ask(client, extra_body={"gen_length": 4096}), openai.BadRequestError, "lower gen_length"),
             (lambda: ask(openai.OpenAI(base_url=served[1] + "/v1", api_key="wrong", max_retries=0)),
              openai.AuthenticationError, "API key")]
    for call, kind, says in cases:
        with pytest.raises(kind) as err:
            call()
        message = err.value.body["message"]
        assert says in message and "\n" not in message and "--" not in message  # the API's names, not the CLI's


def test_concurrent_requests_share_forwards_and_keep_their_answers(served, client):
    # prompts of different lengths: their canvases (and block caches) stack, right-padded
    prompts = [PROMPT, "What is (15+62)*3?", "What is (3+4)*5?", "What is (40+19)*6?", "Compute (12+56)*8.",
               "What is (25+3)*2?"]
    alone = {p: ask(client, prompt=p).choices[0].message.content for p in prompts}
    engine = served[0].state.engine
    forwards, served_before = engine.forwards, engine.batched
    got: dict[str, str] = {}
    threads = [threading.Thread(target=lambda p=p: got.__setitem__(p, ask(client, prompt=p).choices[0].message.content))
               for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert got == alone
    assert engine.batched - served_before > 1.5 * (engine.forwards - forwards)  # requests stacked in forwards


def test_full_queue_is_429_and_a_dropped_client_frees_its_slot(tiny_models, monkeypatch):
    app, url, stop = start_server(max_batch=1, max_queue=0)
    try:
        engine = app.state.engine
        slow_forwards(monkeypatch, engine.ensemble, 0.02)
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        stream = ask(client, stream=True)
        next(iter(stream))  # the first request is running
        with pytest.raises(openai.RateLimitError) as err:
            ask(client)
        assert err.value.response.headers["retry-after"] == "1"
        stream.close()  # the client goes away mid-stream
        for _ in range(200):
            if engine.load["running"] == 0:
                break
            time.sleep(0.05)
        assert engine.load["running"] == 0
        assert "Answer:" in ask(client).choices[0].message.content  # and the server is healthy after
    finally:
        stop()


def test_binding_beyond_localhost_needs_a_key():
    from tie_lite.faces.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "--api-key" in err.getvalue() and len(err.getvalue().strip().splitlines()) == 1


def test_a_failing_request_ends_alone_and_the_engine_lives_on(served, client, monkeypatch):
    """A bug or a device error while a request starts ends that request with one line (500); the worker
    thread survives and the next request is answered."""
    ensemble = served[0].state.engine.ensemble
    real = ensemble.batch_limit
    calls = []

    def fails_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CUDA error: out of memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(ensemble, "batch_limit", fails_once)
    with pytest.raises(openai.InternalServerError) as err:
        ask(client)
    assert "internal error (RuntimeError" in err.value.body["message"]
    assert "Answer:" in ask(client).choices[0].message.content


# --- the API's fields ------------------------------------------------------------------------------------------


def test_a_token_cap_cuts_the_text_and_never_changes_the_decode(client):
    """The shipped members decode their trained canvas whatever max_tokens says; the cap only cuts the text.
    A cap past what the context leaves (lm-eval's default 256) is clamped, not refused."""
    full = generate_text()
    for cap in (64, 128, 256):
        reply = ask(client, max_tokens=cap)
        assert reply.choices[0].message.content == full and reply.choices[0].finish_reason == "stop"
    short = ask(client, max_tokens=5)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 5
    assert full.startswith(short.choices[0].message.content)
    newer = ask(client, max_completion_tokens=5, max_tokens=64)  # max_completion_tokens supersedes max_tokens
    assert newer.choices[0].message.content == short.choices[0].message.content


def test_stop_cuts_before_the_sequence_streamed_or_not(client):
    full = generate_text()
    reply = ask(client, stop=["=", "\n"])
    assert reply.choices[0].message.content == full.split("=")[0] and reply.choices[0].finish_reason == "stop"
    chunks = list(ask(client, stop=";", stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.split(";")[0]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_n_choices_use_distinct_seeds_and_big_seeds_stay_exact(client):
    seed = 2**64 - 2  # past 2**53, where a float conversion would round it
    reply = ask(client, "tiny-sp", n=2, seed=seed, temperature=0.9)
    assert [c.index for c in reply.choices] == [0, 1]
    for k, choice in enumerate(reply.choices):
        assert choice.message.content == generate_text("--model", "tiny-sp", "--temperature", "0.9", "--seed",
                                                       str(seed + k))
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, n=9)
    assert err.value.body["param"] == "n"


def test_logprobs_are_the_committed_tokens_probabilities(client):
    reply = ask(client, logprobs=True)
    content = reply.choices[0].logprobs.content
    assert "".join(t.token for t in content) == reply.choices[0].message.content
    assert all(t.logprob <= 0 for t in content) and any(t.logprob < -1e-4 for t in content)
    alone = ask(client, "tiny-sp", logprobs=True, temperature=0.9, seed=3)  # sampled: some tokens were unlikely
    assert min(t.logprob for t in alone.choices[0].logprobs.content) < min(t.logprob for t in content)
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, logprobs=True, top_logprobs=2)
    assert err.value.body["param"] == "top_logprobs"


def test_fields_the_server_cannot_honour_are_refused_by_name(client):
    for field, value in [("response_format", {"type": "json_object"}),
                         ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}])]:
        with pytest.raises(openai.BadRequestError) as err:
            ask(client, **{field: value})
        assert err.value.body["param"] == field and field in err.value.body["message"]
    assert ask(client, response_format={"type": "text"}).choices[0].message.content  # the default is fine


def test_completions_read_the_prompt_as_the_chat_reads_a_message(client):
    reply = client.completions.create(model="tie:tiny-sp+tiny-bpe", prompt=[PROMPT, "What is 37+85?"], temperature=0,
                                      max_tokens=256)
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.choices[0].text == generate_text()
    assert reply.choices[1].text == ask(client, prompt="What is 37+85?").choices[0].message.content
    streamed = list(client.completions.create(model="tie:tiny-sp+tiny-bpe", prompt=PROMPT, temperature=0,
                                              stream=True, stop=["\n"]))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == generate_text().split("\n")[0]


def test_responses_text_in_text_out_streamed_or_not(client):
    reply = client.responses.create(model="tie:tiny-sp+tiny-bpe", input=PROMPT, temperature=0)
    assert reply.output_text == generate_text() and reply.status == "completed" and reply.usage.output_tokens > 0
    events = list(client.responses.create(model="tie:tiny-sp+tiny-bpe", input=[{"role": "user", "content": PROMPT}],
                                          temperature=0, stream=True))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == reply.output_text
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert events[-1].response.output_text == reply.output_text
    cut = client.responses.create(model="tiny-sp", input=PROMPT, temperature=0, max_output_tokens=4)
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"


def test_usage_comes_in_a_final_chunk_when_asked(client):
    chunks = list(ask(client, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    assert all(c.usage is None for c in ask(client, stream=True))


def test_content_parts_and_nulls_are_read_as_openai_does(served):
    import httpx

    body = {"model": "tie:tiny-sp+tiny-bpe", "temperature": 0, "stream": None, "n": None, "max_tokens": None,
            "stop": None, "seed": None,
            "messages": [{"role": "system", "content": [{"type": "text", "text": "You do arithmetic."}]},
                         {"role": "user", "content": [{"type": "text", "text": "What is (23+41)"},
                                                      {"type": "text", "text": "*7?"}]}]}
    reply = httpx.post(f"{served[1]}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"},
                       timeout=120)
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] == generate_text()
    body["messages"][1]["content"].append({"type": "image_url", "image_url": {"url": "http://x/y.png"}})
    refused = httpx.post(f"{served[1]}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {KEY}"})
    assert refused.status_code == 400 and "image_url" in refused.json()["error"]["message"]


def test_framework_errors_use_the_openai_error_object(served):
    import httpx

    for method, path, status in [("get", "/v1/nothing", 404), ("get", "/v1/chat/completions", 405),
                                 ("delete", "/v1/models", 405)]:
        reply = httpx.request(method, served[1] + path, headers={"authorization": f"Bearer {KEY}"})
        assert reply.status_code == status
        error = reply.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and "\n" not in error["message"]


def test_stream_errors_fail_before_the_first_byte_or_end_with_an_event_and_done(served, client, monkeypatch):
    import httpx

    with pytest.raises(openai.NotFoundError):  # a bad request is a status, not a stream
        list(ask(client, "no-such-model", stream=True))
    member = served[0].state.engine.ensemble.scheduler.loaded[0]  # tiny-sp
    real, calls = member.forward, []

    def fails_later(request):
        calls.append(1)
        if len(calls) > 20:
            raise RuntimeError("device lost")
        return real(request)

    monkeypatch.setattr(member, "forward", fails_later)
    with httpx.stream("POST", f"{served[1]}/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"},
                      json={"model": "tiny-sp", "messages": [{"role": "user", "content": PROMPT}], "stream": True},
                      timeout=120) as reply:
        assert reply.status_code == 200
        events = [line[6:] for line in reply.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and "internal error (RuntimeError: device lost)" in json.loads(events[-2])["error"]["message"]


def test_committed_logprobs_survive_a_relay_between_tokenizers(served):
    """The shipped pair write different tokens; a relay through text hands the receiver the leader's committed
    log-probabilities, regrouped into its own tokens with the total kept (what `logprobs` reports after relays)."""
    from tie_lite.engine.process import run
    from tie_lite.engine.sampler import DecodeSettings, Trajectory

    sp, bpe = served[0].state.engine.ensemble.scheduler.loaded  # the launched pair (members: the latest choice)
    messages, decode = [{"role": "user", "content": PROMPT}], DecodeSettings()
    leader, receiver = Trajectory.start(sp, messages, decode), Trajectory.start(bpe, messages, decode)
    run(leader.advance(decode, 2))
    receiver.adopt(leader)
    assert not receiver.same_canvas(leader)
    given = sum(sum(chars) for chars in leader.layout.char_logprobs(sp.tokenizer, leader.ids, leader.commit_logp))
    kept = float(receiver.commit_logp.sum())
    assert given < 0 and kept == pytest.approx(given, abs=1e-4)
    committed = receiver.ids[receiver.layout.reasoning] != receiver.layout.mask_id
    assert (receiver.commit_logp[receiver.layout.reasoning][committed] != 0).any()
