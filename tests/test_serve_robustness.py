"""`tie-lite serve` against hostile or careless clients, over raw HTTP: body and prompt caps, half-sent requests,
clients that vanish, signals, a taken port, and who may connect."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

try:
    from test_serve import KEY, PROMPT, start_server
    from test_ui import free_port, tiny_models  # noqa: F401  (tiny_models: a fixture)
except ImportError:
    from .test_serve import KEY, PROMPT, start_server
    from .test_ui import free_port, tiny_models  # noqa: F401

AUTH = {"authorization": f"Bearer {KEY}"}
ROOT = Path(__file__).resolve().parent.parent


def chat_body(**fields) -> dict:
    return {"model": "tie:tiny-sp+tiny-bpe", "messages": [{"role": "user", "content": PROMPT}], "temperature": 0,
            **fields}


def raw_request(url: str, head: bytes) -> socket.socket:
    """A connection that sent `head` and nothing more (a half-sent request)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(head)
    return sock


@pytest.fixture(scope="module")
def guarded(tiny_models):
    """A server with a small body cap and a short read timeout."""
    app, url, stop = start_server(max_body=16384, read_timeout=1.0)
    yield app, url
    stop()


def test_bodies_over_the_cap_are_413_before_they_are_read(guarded):
    _, url = guarded
    declared = httpx.post(f"{url}/v1/chat/completions", content=b"x" * 20000, headers=AUTH)
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "body_too_large"

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(100):
            yield b"x" * 1024

    streamed = httpx.post(f"{url}/v1/chat/completions", content=chunks(), headers=AUTH)
    assert streamed.status_code == 413 and "16,384 bytes" in streamed.json()["error"]["message"]
    assert httpx.post(f"{url}/v1/chat/completions", json=chat_body(), headers=AUTH, timeout=120).status_code == 200


def test_a_prompt_too_long_for_the_context_is_a_400_without_the_engine(guarded, monkeypatch):
    """The prompt is sized and tokenized beside the engine's worker: with the worker held by a running decode,
    an oversized prompt still gets its answer, and the decode is unaffected."""
    app, url = guarded
    engine = app.state.engine
    member = engine.ensemble.scheduler.loaded[0]  # tiny-sp
    held, real = threading.Event(), member.forward
    monkeypatch.setattr(member, "forward", lambda request: (held.wait(120), real(request))[1])
    running = threading.Thread(target=lambda: httpx.post(f"{url}/v1/chat/completions", headers=AUTH, timeout=120,
                                                         json=chat_body(model="tiny-sp")))
    running.start()
    try:
        for _ in range(400):
            if engine.load["running"]:
                break
            time.sleep(0.05)
        for prompt, says in [("7+" * 4200, "characters cannot fit"), ("7+" * 300, "tokens of tiny-sp's context")]:
            reply = httpx.post(f"{url}/v1/chat/completions", headers=AUTH, timeout=60,
                               json=chat_body(model="tiny-sp", messages=[{"role": "user", "content": prompt}]))
            error = reply.json()["error"]
            assert reply.status_code == 400 and says in error["message"] and error["param"] == "messages"
        assert engine.load["running"] == 1  # still held: the answers did not go through the worker
    finally:
        held.set()
        running.join(120)


def test_a_half_sent_body_is_408_and_holds_nothing(guarded):
    _, url = guarded
    sock = raw_request(url, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\n"
                            b"Authorization: Bearer " + KEY.encode() + b"\r\n\r\n{\"model\":")
    sock.settimeout(60)
    assert sock.recv(4096).startswith(b"HTTP/1.1 408")
    sock.close()
    assert httpx.get(f"{url}/v1/models", headers=AUTH).status_code == 200


def test_a_client_that_disconnects_is_one_log_line(guarded, caplog):
    app, url = guarded
    engine = app.state.engine
    caplog.set_level(logging.WARNING)
    body = json.dumps(chat_body(stream=True, gen_length=224)).encode()
    sock = raw_request(url, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                            b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    sock.recv(64)  # the stream has started
    sock.close()
    for _ in range(400):
        if engine.load["running"] == 0 and any("went away" in r.getMessage() for r in caplog.records):
            break
        time.sleep(0.05)
    notes = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(notes) == 1 and "went away" in notes[0].getMessage() and "\n" not in notes[0].getMessage()
    assert notes[0].exc_info is None and engine.load["running"] == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_streams_cleanly_and_exits_0(tiny_models, sig):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    server = subprocess.Popen([sys.executable, "-m", "tie_lite.faces.cli", "serve", "--port", str(port)], cwd=ROOT,
                              env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            time.sleep(0.1)
        half = raw_request(url, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        body = chat_body(stream=True, n=8, gen_length=224, temperature=0.5)  # seconds of decoding
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as reply:
            lines = reply.iter_lines()
            assert next(lines).startswith("data: ")  # streaming
            server.send_signal(sig)
            events = [line[6:] for line in lines if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "shutting_down"
        assert server.wait(60) == 0
        half.close()
        log = server.stderr.read()
        assert "Traceback" not in log and log.strip().endswith("tie-lite serve: stopped")
    finally:
        if server.poll() is None:
            server.kill()


def run_cli(*args) -> tuple[int, str]:
    from tie_lite.faces.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, err.getvalue()


def test_a_taken_port_is_one_line_before_anything_loads():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, err = run_cli("serve", "--port", str(taken.getsockname()[1]))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--port" in err and "loading" not in err


def test_the_listening_socket_sends_replies_without_waiting_for_acks():
    """`serve` binds its socket itself (before loading, for the taken-port line). asyncio turns Nagle's algorithm
    off only on sockets that say they are TCP; without it a kept-alive connection's reply (headers, then body)
    waited about 40 ms for the client's delayed ACK: every request of the openai client paid it."""
    import asyncio

    from tie_lite.faces.serve import bind

    async def accepted_nodelay() -> int:
        loop = asyncio.get_running_loop()
        got = loop.create_future()

        class Accept(asyncio.Protocol):
            def connection_made(self, transport):
                got.set_result(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await loop.create_server(Accept, sock=bind("127.0.0.1", 0))
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await asyncio.wait_for(got, 10)
        finally:
            writer.close()
            server.close()

    assert asyncio.run(accepted_nodelay()) != 0


def test_serving_the_network_needs_a_key_or_an_explicit_open_flag():
    code, err = run_cli("serve", "--host", "0.0.0.0")
    assert code == 2 and "--api-key" in err and "--open-to-network" in err and len(err.strip().splitlines()) == 1
    code, err = run_cli("chat", "--host", "0.0.0.0")
    assert code == 2 and "--login" in err and "--open-to-network" in err and len(err.strip().splitlines()) == 1
    with socket.socket() as taken:  # past the key check: the next check (the port) answers, nothing loads
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        code, err = run_cli("serve", "--host", "0.0.0.0", "--open-to-network", "--port", str(taken.getsockname()[1]))
    assert code == 2 and "cannot listen" in err
