"""`tie-lite serve`, driven by the official `openai` client against a live server on localhost."""

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


def start_server(max_batch=8, max_queue=32, api_key=KEY):
    """(app, base url, stop) for a server on the shipped pair, in this process."""
    import httpx
    import uvicorn

    from tie_lite.faces.client_settings import Defaults
    from tie_lite.faces.serve import create_app
    from tie_lite.runtime.session import Ensemble, LoadSettings

    defaults = Defaults(load=LoadSettings())
    app = create_app(Ensemble(defaults.load), defaults, api_key=api_key, max_batch=max_batch, max_queue=max_queue)
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


def generate_text(*args) -> str:
    from tie_lite.faces.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["generate", PROMPT, *args, "--json"]) == 0
    return json.loads(out.getvalue())["text"]


def ask(client, model="tie:tiny-sp+tiny-bpe", prompt=PROMPT, **kwargs):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                          temperature=0, **kwargs)


def test_models_are_the_ensemble_and_each_member(client):
    assert [m.id for m in client.models.list()] == ["tie:tiny-sp+tiny-bpe", "tiny-sp", "tiny-bpe"]


@pytest.mark.parametrize("model,args", [("tie:tiny-sp+tiny-bpe", []), ("tiny-bpe", ["--model", "tiny-bpe"])])
def test_answers_equal_tie_lite_generate(client, model, args):
    reply = ask(client, model, max_tokens=64)
    assert reply.choices[0].message.content == generate_text(*args)
    assert reply.choices[0].finish_reason == "stop" and reply.usage.completion_tokens > 0
    trace = reply.model_extra["tie"]
    assert trace["final_member"] in trace["members"] and len(trace["rounds"]) >= 1


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
             (lambda: ask(client, extra_body={"score": "bogus"}), openai.BadRequestError, "unknown --score"),
             (lambda: ask(client, extra_body={"models": ["/etc"]}), openai.BadRequestError, "operator"),
             (lambda: ask(client, max_tokens=0), openai.BadRequestError, "max_tokens"),
             (lambda: ask(openai.OpenAI(base_url=served[1] + "/v1", api_key="wrong", max_retries=0)),
              openai.AuthenticationError, "API key")]
    for call, kind, says in cases:
        with pytest.raises(kind) as err:
            call()
        message = err.value.body["message"]
        assert says in message and "\n" not in message


def test_concurrent_requests_share_forwards_and_keep_their_answers(served, client):
    # same-shaped prompts give canvases of one length, which stack (different lengths run side by side)
    prompts = [PROMPT, "What is (15+62)*3?", "What is (31+27)*4?", "What is (40+19)*6?", "What is (12+56)*8?",
               "What is (25+33)*2?"]
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
