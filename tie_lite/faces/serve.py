"""`tie-lite serve`: an OpenAI-compatible API (FastAPI + uvicorn) on the batched engine.

    GET  /health                 status and load
    GET  /v1/models              the ensemble (tie:a+b) and each member alone; /v1/models/{id} one of them
    GET  /tokenizer_info, POST /tokenize, /detokenize   the server's tokenizer (vLLM's names; lm-eval reads them)
    POST /v1/chat/completions    messages -> n choices (stream, stop, logprobs, token caps; TIE settings as fields)
    POST /v1/completions         prompt(s) -> choices, the same fields
    POST /v1/responses           input (+ instructions) -> one response, streamed as the Responses API's events

Only the members the operator named at launch run; a request chooses among them by model id. Every error,
the framework's 404 and 405 included, uses OpenAI's error object. What the fields mean: openai_api.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import sys
import time
import uuid
from dataclasses import replace

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from tie_lite.checks import CHARS_PER_TOKEN, MAX_LENGTH, parse_size
from tie_lite.engine.events import Relay, StepFrame
from tie_lite.errors import UserError
from tie_lite.faces.client_settings import Defaults, check_binding, member_indices
from tie_lite.faces.openai_api import (
    APIError,
    Ask,
    api_words,
    check_prompt_size,
    cut,
    fit_canvas,
    model_ids,
    read_ask,
    stop_in,
    token_logprobs,
)
from tie_lite.faces.options import (
    add_decode_args,
    add_model_args,
    add_tie_args,
    decode_settings,
    load_settings,
    tie_settings,
    whole,
)
from tie_lite.runtime.batching import BatchEngine, Closed, QueueFull
from tie_lite.runtime.session import Ensemble

log = logging.getLogger("tie_lite.serve")
MAX_BODY = 1 << 20  # bytes; the default of --max-body
READ_TIMEOUT = 30.0  # seconds a request body may take to arrive; the default of --read-timeout
SHUTDOWN_GRACE = 5  # seconds uvicorn waits for connections after SIGTERM/SIGINT (streams end sooner: see Server)


# --- HTTP: bodies, timeouts, shutdown -------------------------------------------------------------------------


class BodyTooLarge(Exception):
    pass


def too_large(max_bytes: int) -> APIError:
    return APIError(413, f"the request body is larger than {max_bytes:,} bytes (the server's --max-body)",
                    code="body_too_large")


class BodyTimeout(Exception):
    def __init__(self, stopping: bool):
        super().__init__()
        self.stopping = stopping


class BodyGuard:
    """ASGI middleware: a body over `max_bytes` is answered 413 before it is read whole (at once when its
    Content-Length says so, else as soon as the bytes received pass the limit). FastAPI's own `max_body_size`
    answers a too-long Content-Length in plain text whatever the exception handlers say, so the server counts
    itself, in OpenAI's error shape. A body that stops arriving for `timeout` seconds ends the request with 408,
    and one still arriving when the server stops ends with 503, so half-sent requests hold no slot and never
    delay a shutdown (uvicorn has no read timeout for bodies). Reads after the body is in pass through."""

    def __init__(self, app, max_bytes: int, timeout: float, stopping):
        self.app, self.max_bytes, self.timeout, self.stopping = app, max_bytes, timeout, stopping

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await JSONResponse(too_large(self.max_bytes).body(), status_code=413)(scope, receive, send)
        complete, received = False, 0

        async def timed():
            nonlocal complete, received
            if complete:
                return await receive()
            loop = asyncio.get_running_loop()
            deadline, arrival = loop.time() + self.timeout, asyncio.ensure_future(receive())
            while not arrival.done():  # checked in slices, so a shutdown need not wait out the deadline
                if self.stopping() or loop.time() > deadline:
                    arrival.cancel()
                    raise BodyTimeout(stopping=self.stopping())
                await asyncio.wait({arrival}, timeout=min(0.25, self.timeout))
            message = arrival.result()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise BodyTooLarge()
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, timed, send)


class Server(uvicorn.Server):
    """uvicorn's server; on SIGTERM or SIGINT it first closes the engine, so every request in flight ends at its
    next step (streams with an error event and [DONE]) and uvicorn's graceful wait is short."""

    def __init__(self, config, engine: BatchEngine):
        super().__init__(config)
        self.engine = engine

    def handle_exit(self, sig, frame):
        self.engine.close()
        super().handle_exit(sig, frame)
        self._captured_signals.clear()  # uvicorn would re-raise it after shutting down: a stop asked for exits 0


# --- the app --------------------------------------------------------------------------------------------------


def _sse(body: dict, event: str | None = None) -> str:
    return (f"event: {event}\n" if event else "") + f"data: {json.dumps(body)}\n\n"


class Choice:
    """One choice's decode: its job, the member trajectories it saw (the final one gives logprobs) and what
    the stream sent of it."""

    def __init__(self, index: int):
        self.index = index
        self.latest: dict = {}  # member name -> its trajectory (written by the worker thread)
        self.job = None
        self.sent = ""
        self.done = False


def create_app(ensemble, defaults: Defaults, *, api_key: str | None = None, max_batch: int = 8, max_queue: int = 32,
               engine: BatchEngine | None = None, max_body: int = MAX_BODY, read_timeout: float = READ_TIMEOUT):
    engine = engine or BatchEngine(ensemble, max_batch=max_batch, max_queue=max_queue)
    app = FastAPI(title="tie-lite", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.add_middleware(BodyGuard, max_bytes=max_body, timeout=read_timeout, stopping=lambda: engine.closed)
    created = int(time.time())

    def error(exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(APIError)
    async def on_api_error(request, exc: APIError):
        return error(exc)

    @app.exception_handler(HTTPException)
    async def on_http_error(request, exc: HTTPException):  # the framework's 404 and 405, in OpenAI's shape
        # (no route validates a body model, so the framework never answers 422: bad bodies are our 400s)
        words = {404: f"no endpoint {request.url.path}; see /v1/models, /v1/chat/completions, /v1/completions, "
                      f"/v1/responses", 405: f"{request.method} is not allowed on {request.url.path}"}
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error(APIError(exc.status_code, words.get(exc.status_code, str(exc.detail)), kind=kind,
                              headers=getattr(exc, "headers", None)))

    @app.exception_handler(BodyTooLarge)
    async def on_too_large(request, exc):
        return error(too_large(max_body))

    @app.exception_handler(BodyTimeout)
    async def on_slow_body(request, exc: BodyTimeout):
        if exc.stopping:
            return error(APIError(503, "the server is shutting down", kind="server_error", code="shutting_down"))
        return error(APIError(408, f"the request body did not arrive within {read_timeout:g} s", code="timeout"))

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise APIError(401, "wrong or missing API key (send Authorization: Bearer KEY)", kind="authentication_error",
                           code="invalid_api_key")

    def model_object(model_id: str) -> dict:
        return {"id": model_id, "object": "model", "created": created, "owned_by": "tie-lite"}

    @app.get("/health")
    async def health(request: Request):
        given = request.headers.get("authorization", "").encode()
        if api_key is not None and not secrets.compare_digest(given, f"Bearer {api_key}".encode()):
            return {"status": "ok"}  # without the key: alive or not, nothing about models or load
        return {"status": "ok", "models": list(model_ids(defaults)), **engine.load}

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        return {"object": "list", "data": [model_object(i) for i in model_ids(defaults)]}

    @app.get("/v1/models/{model_id:path}")
    async def one_model(model_id: str, request: Request):
        check_key(request)
        if model_id not in model_ids(defaults):
            raise APIError(404, f"unknown model '{model_id[:60]}'; this server has {', '.join(model_ids(defaults))}",
                           param="model", code="model_not_found")
        return model_object(model_id)

    # The server's tokenizer (/tokenize, /detokenize, token-id prompts; what lm-eval's remote tokenizer reads): the
    # first launched member's. Each member still reads the prompt as text, in its own tokens.
    tokenizer = ensemble.scheduler.loaded[0].tokenizer
    context = ensemble.scheduler.loaded[0].max_length

    # what a prompt can be: no text longer than the context holds at any tokenization, no more ids than it holds
    # (refused before tokenizing: three 900 KB /tokenize requests grew the server by a gigabyte)
    most_tokens = context or MAX_LENGTH
    most_chars = most_tokens * CHARS_PER_TOKEN

    def detokenize(ids) -> str:
        if not isinstance(ids, list) or not all(isinstance(t, int) and 0 <= t < len(tokenizer) for t in ids):
            raise APIError(400, f"tokens must be a list of token ids, 0..{len(tokenizer) - 1}", param="tokens")
        if len(ids) > most_tokens:
            raise APIError(400, f"tokens: {len(ids):,} ids are more than the context of {most_tokens:,}; send at most "
                                f"{most_tokens:,}", param="tokens", code="context_length_exceeded")
        return tokenizer.decode(ids, skip_special_tokens=True)

    async def json_body(request: Request):
        check_key(request)
        try:
            return json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise APIError(400, "the request body is not valid JSON (or nests too deeply)") from None

    @app.get("/tokenizer_info")
    async def tokenizer_info(request: Request):
        check_key(request)
        return {"tokenizer_class": type(tokenizer).__name__, "eos_token": tokenizer.eos_token,
                "bos_token": tokenizer.bos_token, "pad_token": tokenizer.pad_token, "model_max_length": context,
                "chat_template": getattr(tokenizer, "chat_template", None)}

    @app.post("/tokenize")
    async def tokenize(request: Request):
        body = await json_body(request)
        text = body.get("prompt") if isinstance(body, dict) else None
        if not isinstance(text, str):
            raise APIError(400, "prompt must be a string", param="prompt")
        if len(text) > most_chars:
            raise APIError(400, f"prompt: {len(text):,} characters cannot fit the context of {most_tokens:,} tokens; "
                                f"send at most {most_chars:,}", param="prompt", code="context_length_exceeded")
        special = isinstance(body.get("add_special_tokens"), bool) and body["add_special_tokens"]
        ids = await asyncio.to_thread(tokenizer.encode, text, add_special_tokens=special)
        return {"tokens": ids, "count": len(ids), "max_model_len": context}

    @app.post("/detokenize")
    async def detokenize_endpoint(request: Request):
        body = await json_body(request)
        return {"prompt": detokenize(body.get("tokens") if isinstance(body, dict) else None)}

    async def read(request: Request, endpoint: str) -> Ask:
        body = await json_body(request)
        ask = read_ask(endpoint, body, defaults, detokenize)
        members = [ensemble.scheduler.loaded[i] for i in member_indices(defaults.load, ask.load)]
        check_prompt_size(ask, members)  # before any tokenizing
        # tokenizing and the context check run beside the engine's worker, never on it
        return await asyncio.to_thread(fit_canvas, ask, members)

    def submit(ask: Ask) -> tuple[list[Choice], asyncio.Queue]:
        # one inbox for every choice, (index, kind, value), fed from the worker thread without polling threads
        choices, inbox, loop = [], asyncio.Queue(), asyncio.get_running_loop()
        members = member_indices(defaults.load, ask.load)
        try:
            for k in range(ask.choices):
                choice, tagged = Choice(k), Tagged(loop, inbox, k)

                def on_event(event, choice=choice, tagged=tagged):  # in the worker, while trajectories are as it says
                    if isinstance(event, StepFrame):
                        choice.latest[event.member] = event.trajectory
                    elif ask.stream and isinstance(event, Relay) and event.leader in choice.latest:
                        # after a relay every member shares the leader's committed text; a token cut
                        # mid-character decodes to U+FFFD, so the prefix stops before it
                        prefix = choice.latest[event.leader].state().reasoning.strip().split("\ufffd")[0]
                        tagged.put(("prefix", prefix))

                decode = replace(ask.decode, seed=ask.seed(k))
                choice.job = engine.submit(ask.conversations[k // ask.n], decode, ask.tie, members, on_event=on_event,
                                           events=tagged)
                choices.append(choice)
        except (QueueFull, Closed) as exc:
            for choice in choices:
                choice.job.cancel()
            if isinstance(exc, Closed):
                raise APIError(503, "the server is shutting down", kind="server_error", code="shutting_down") from None
            raise APIError(429, f"the server is busy ({exc}); retry shortly", kind="rate_limit_error",
                           code="queue_full", headers={"Retry-After": "1"}) from None
        return choices, inbox

    def finished(ask: Ask, choice: Choice, result) -> dict:
        """A choice's final text, finish reason, token counts and (when asked) logprobs."""
        text, reason = cut(result.text, ask, final_member(ensemble, result).tokenizer)
        prompt, completion = token_counts(ensemble, result, ask.conversations[choice.index // ask.n], text)
        out = {"text": text, "reason": reason, "prompt_tokens": prompt, "completion_tokens": completion,
               "trace": _trace(result, ask.member_token_ids)}
        if ask.logprobs:
            out["logprobs"] = token_logprobs(choice.latest[result.final_member], text)
        return out

    def job_failure(job) -> APIError:
        if job.error is None:
            return APIError(503, "the server is shutting down", kind="server_error", code="shutting_down")
        if job.error.startswith("internal error"):
            return APIError(500, job.error, kind="server_error")
        return APIError(400, api_words(job.error))

    async def handle(request: Request, endpoint: str):
        with engine.arriving():  # the engine holds a step briefly for a request it knows is on its way
            ask = await read(request, endpoint)
            choices, events = submit(ask)
        rid = {"chat": "chatcmpl-", "completions": "cmpl-", "responses": "resp_"}[endpoint] + uuid.uuid4().hex[:24]
        if ask.stream:
            stream = _stream(ask, choices, events, request, rid)
            return StreamingResponse(stream, media_type="text/event-stream")
        start, left = time.perf_counter(), len(choices)
        try:
            while left:
                try:
                    _, kind, _ = await asyncio.wait_for(events.get(), 0.5)
                    left -= kind in ("done", "error", "cancelled")
                except TimeoutError:  # between events: is the client still there?
                    if await request.is_disconnected():
                        for c in choices:
                            c.job.cancel()
                        log.warning("tie-lite serve: %s: the client went away after %.1f s; its decode was dropped",
                                    rid, time.perf_counter() - start)
                        return JSONResponse({}, status_code=499)
        except asyncio.CancelledError:
            for c in choices:
                c.job.cancel()
            raise
        for c in choices:
            if c.job.result is None:
                raise job_failure(c.job)
        done = [finished(ask, c, c.job.result) for c in choices]
        return JSONResponse(_reply(ask, rid, done))

    async def _stream(ask: Ask, choices: list[Choice], events: asyncio.Queue, request: Request, rid: str):
        """Server-sent events: what each choice's relayed text adds after each round, then the rest of its
        response and its finish; an error after the first byte ends the stream with an error event (and [DONE])."""
        form = StreamForm(ask, rid)
        holdback = max((len(s) for s in ask.stop), default=1) - 1  # a stop sequence may be split across rounds
        totals = {"prompt": 0, "completion": 0}
        start = time.perf_counter()
        try:
            yield form.opening(len(choices))
            while not all(c.done for c in choices):
                index, kind, value = await events.get()
                choice = choices[index]
                if choice.done:
                    continue
                if kind == "prefix":
                    if ask.logprobs:
                        continue  # the tokens' logprobs are known once the text is final: it comes in one chunk
                    member = choice.latest[next(iter(choice.latest))].member
                    if stop_in(value, ask):  # the text ends here whatever the rest of the decode does
                        text, _ = cut(value, ask, member.tokenizer)
                        choice.job.cancel()
                        choice.done = True
                        yield form.delta(index, text[len(choice.sent):]) if text.startswith(choice.sent) else ""
                        prompt, completion = member.token_counts(ask.conversations[index // ask.n], text)
                        totals["prompt"] += prompt
                        totals["completion"] += completion
                        yield form.finish(index, "stop", text, None, None)
                        continue
                    safe = value[: len(value) - holdback] if holdback else value
                    if ask.cap is not None and len(member.tokenizer.encode(safe, add_special_tokens=False)) >= ask.cap:
                        continue  # the cap cuts this text: the final text decides where
                    if safe.startswith(choice.sent) and len(safe) > len(choice.sent):
                        yield form.delta(index, safe[len(choice.sent):])
                        choice.sent = safe
                elif kind == "done":
                    out = finished(ask, choice, value)
                    choice.done = True
                    if out["text"].startswith(choice.sent) and len(out["text"]) > len(choice.sent):
                        yield form.delta(index, out["text"][len(choice.sent):], out.get("logprobs"))
                    totals["prompt"] += out["prompt_tokens"]
                    totals["completion"] += out["completion_tokens"]
                    yield form.finish(index, out["reason"], out["text"], out["trace"], out.get("logprobs"))
                else:  # ("error", message) or ("cancelled", None): the server is stopping or the request failed
                    failure = job_failure(choice.job)
                    log.warning("tie-lite serve: %s ended mid-stream: %s", rid, failure.message)
                    yield form.error(failure)
                    return
            if ask.include_usage or ask.endpoint == "responses":
                yield form.usage(totals["prompt"] // ask.n, totals["completion"])
            yield form.closing()
        except asyncio.CancelledError:  # the client went away mid-stream: one line, no traceback
            log.warning("tie-lite serve: %s: the client went away after %.1f s; its decode was dropped", rid,
                        time.perf_counter() - start)
            raise
        finally:
            for c in choices:
                if not c.job.finished.is_set():
                    c.job.cancel()  # free its slot at the next step

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await handle(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await handle(request, "completions")

    @app.post("/v1/responses")
    async def responses(request: Request):
        return await handle(request, "responses")

    return app


class Tagged:
    """A job's event queue, as the engine's worker thread writes it: into the request's asyncio inbox on the
    server's loop, tagged with the choice's index."""

    def __init__(self, loop: asyncio.AbstractEventLoop, inbox: asyncio.Queue, index: int):
        self.loop, self.inbox, self.index = loop, inbox, index

    def put(self, item) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed (the server stopped): nobody is listening
            self.loop.call_soon_threadsafe(self.inbox.put_nowait, (self.index, *item))


def final_member(ensemble, result):
    # the loaded members, not the scheduler's current selection (other requests change that)
    return next(m for m in ensemble.scheduler.loaded if m.name == result.final_member.split("#")[0])


def token_counts(ensemble, result, messages: list[dict], text: str | None = None) -> tuple[int, int]:
    """Prompt and completion tokens as `usage` reports them: in the final member's tokens (a Ray member counts on
    its actor), of `text` (the returned text) or the whole response."""
    return final_member(ensemble, result).token_counts(messages, result.text if text is None else text)


def _trace(result, member_token_ids: bool = False) -> dict:
    """The `tie` field of a reply: how the ensemble reached it, and the generated token ids (the whole decoded
    canvas after the prompt, before stop or a cap cut the text), as `generate --json` gives them."""
    trace = {"members": result.members, "final_member": result.final_member, "rounds": result.rounds,
             "leader_changes": result.leader_changes, "steps": result.steps, "seconds": round(result.seconds, 4),
             "swaps": result.memory.get("swaps", 0), "strategy": result.memory.get("strategy"),
             "token_ids": result.token_ids, "member_settings": result.member_settings}
    return trace | ({"response_token_ids": result.response_token_ids} if member_token_ids else {})


def _chat_logprobs(tokens) -> dict | None:
    if tokens is None:
        return None
    return {"content": [{"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []} for t, lp in tokens]}


def _completion_logprobs(tokens) -> dict | None:
    if tokens is None:
        return None
    offsets, at = [], 0
    for t, _ in tokens:
        offsets.append(at)
        at += len(t)
    return {"tokens": [t for t, _ in tokens], "token_logprobs": [lp for _, lp in tokens], "top_logprobs": None,
            "text_offset": offsets}


def _usage(prompt: int, completion: int, responses: bool = False) -> dict:
    if responses:
        return {"input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion}
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _response_object(rid: str, model: str, created: int, text: str | None, reason: str | None, usage: dict | None,
                     trace=None) -> dict:
    status = "in_progress" if text is None else ("incomplete" if reason == "length" else "completed")
    output = [] if text is None else [_message_item(rid, text, "completed")]
    body = {"id": rid, "object": "response", "created_at": created, "status": status, "model": model,
            "output": output, "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "error": None, "usage": usage}
    return body | ({"tie": trace} if trace is not None else {})


def _message_item(rid: str, text: str, status: str) -> dict:
    return {"id": "msg_" + rid[5:], "type": "message", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def _reply(ask: Ask, rid: str, done: list[dict]) -> dict:
    created = int(time.time())
    prompt = sum(d["prompt_tokens"] for d in done[:: ask.n])  # each prompt once, however many choices it has
    usage = _usage(prompt, sum(d["completion_tokens"] for d in done), ask.endpoint == "responses")
    if ask.endpoint == "responses":
        return _response_object(rid, ask.model, created, done[0]["text"], done[0]["reason"], usage, done[0]["trace"])
    if ask.endpoint == "completions":
        choices = [{"index": k, "text": d["text"], "logprobs": _completion_logprobs(d.get("logprobs")),
                    "finish_reason": d["reason"]} for k, d in enumerate(done)]
        return {"id": rid, "object": "text_completion", "created": created, "model": ask.model, "choices": choices,
                "usage": usage, "tie": done[0]["trace"] if len(done) == 1 else [d["trace"] for d in done]}
    choices = [{"index": k, "message": {"role": "assistant", "content": d["text"]},
                "logprobs": _chat_logprobs(d.get("logprobs")), "finish_reason": d["reason"]} for k, d in enumerate(done)]
    return {"id": rid, "object": "chat.completion", "created": created, "model": ask.model, "choices": choices,
            "usage": usage, "tie": done[0]["trace"] if len(done) == 1 else [d["trace"] for d in done]}


class StreamForm:
    """The server-sent events of one endpoint: chat and completion chunks (ending with [DONE]), or the
    Responses API's typed events."""

    def __init__(self, ask: Ask, rid: str):
        self.ask, self.rid, self.created, self.sequence = ask, rid, int(time.time()), 0
        self.text = ""

    def _event(self, kind: str, **fields) -> str:
        self.sequence += 1
        return _sse({"type": kind, "sequence_number": self.sequence, **fields}, kind)

    def _chunk(self, choices: list[dict], **extra) -> str:
        kind = "chat.completion.chunk" if self.ask.endpoint == "chat" else "text_completion"
        return _sse({"id": self.rid, "object": kind, "created": self.created, "model": self.ask.model,
                     "choices": choices, **extra})

    def opening(self, choices: int) -> str:
        if self.ask.endpoint == "chat":
            return "".join(self._chunk([{"index": k, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                         "finish_reason": None}]) for k in range(choices))
        if self.ask.endpoint == "completions":
            return ""
        empty = _response_object(self.rid, self.ask.model, self.created, None, None, None)
        item = _message_item(self.rid, "", "in_progress") | {"content": []}
        part = {"type": "output_text", "text": "", "annotations": []}
        return (self._event("response.created", response=empty)
                + self._event("response.in_progress", response=empty)
                + self._event("response.output_item.added", output_index=0, item=item)
                + self._event("response.content_part.added", item_id=item["id"], output_index=0, content_index=0,
                              part=part))

    def delta(self, index: int, text: str, logprobs=None) -> str:
        if not text:
            return ""
        if self.ask.endpoint == "chat":
            return self._chunk([{"index": index, "delta": {"content": text}, "logprobs": _chat_logprobs(logprobs),
                                 "finish_reason": None}])
        if self.ask.endpoint == "completions":
            return self._chunk([{"index": index, "text": text, "logprobs": _completion_logprobs(logprobs),
                                 "finish_reason": None}])
        return self._event("response.output_text.delta", item_id="msg_" + self.rid[5:], output_index=0,
                           content_index=0, delta=text)

    def finish(self, index: int, reason: str, text: str, trace, logprobs) -> str:
        extra = {"tie": trace | {"text": text}} if trace is not None else {}  # a client can check what it joined
        if self.ask.endpoint == "chat":
            return self._chunk([{"index": index, "delta": {}, "logprobs": None, "finish_reason": reason}], **extra)
        if self.ask.endpoint == "completions":
            return self._chunk([{"index": index, "text": "", "logprobs": None, "finish_reason": reason}], **extra)
        self.text, self.reason, self.trace = text, reason, trace
        item_id = "msg_" + self.rid[5:]
        part = {"type": "output_text", "text": text, "annotations": []}
        return (self._event("response.output_text.done", item_id=item_id, output_index=0, content_index=0, text=text)
                + self._event("response.content_part.done", item_id=item_id, output_index=0, content_index=0,
                              part=part)
                + self._event("response.output_item.done", output_index=0,
                              item=_message_item(self.rid, text, "completed")))

    def usage(self, prompt: int, completion: int) -> str:
        if self.ask.endpoint == "responses":
            usage = _usage(prompt, completion, responses=True)
            response = _response_object(self.rid, self.ask.model, self.created, self.text, self.reason, usage,
                                        self.trace)
            kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
            return self._event(kind, response=response)
        return self._chunk([], usage=_usage(prompt, completion))  # OpenAI's usage chunk: no choices

    def error(self, failure: APIError) -> str:
        if self.ask.endpoint == "responses":
            return self._event("error", code=failure.code, message=failure.message, param=failure.param)
        return _sse(failure.body()) + "data: [DONE]\n\n"

    def closing(self) -> str:
        return "" if self.ask.endpoint == "responses" else "data: [DONE]\n\n"


# --- the command ----------------------------------------------------------------------------------------------


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before any model loads: a port in use is one line at once, not after loading."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto TCP, said outright: asyncio turns Nagle's algorithm off only on sockets that say so, and with it on a
    # kept-alive connection's reply waited ~40 ms for the client's delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port "
                        f"(or stop what uses it)") from None
    return sock


def run_server(app, sock: socket.socket) -> None:
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=SHUTDOWN_GRACE)
    Server(config, app.state.engine).run(sockets=[sock])


def add_serve_parser(sub) -> None:
    p = sub.add_parser(
        "serve", help="an OpenAI-compatible API server (batched, streaming TIE)",
        description="Serve /v1/chat/completions, /v1/completions and /v1/responses for the members named here: the "
                    "ensemble as model 'tie:A+B' and each member alone. The decoding options are the defaults a "
                    "request can change.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=whole, default=8000, metavar="N", help="port (default 8000)")
    p.add_argument("--api-key", default=None, help="required from clients as 'Authorization: Bearer KEY' "
                   "(default $TIE_LITE_API_KEY; needed whenever --host is not a loopback address)")
    p.add_argument("--open-to-network", action="store_true",
                   help="serve a non-loopback --host without a key: anyone who reaches it can use it")
    p.add_argument("--max-batch", type=whole, default=8, metavar="N", help="requests decoded together (default 8)")
    p.add_argument("--max-queue", type=whole, default=32, metavar="N", help="requests waiting beyond those; more "
                   "are answered 429 (default 32)")
    p.add_argument("--max-body", default="1MiB", metavar="SIZE", help="largest request body; larger ones are "
                   "answered 413 before they are read (default 1MiB)")
    p.add_argument("--read-timeout", type=whole, default=int(READ_TIMEOUT), metavar="S",
                   help="seconds a request body may take to arrive; slower ones are answered 408 (default 30)")
    add_model_args(p)
    add_decode_args(p)
    add_tie_args(p)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    api_key = args.api_key or os.environ.get("TIE_LITE_API_KEY") or None
    check_binding(args.host, api_key, args.open_to_network)
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port} is not a port number (1-65535)")
    if args.max_batch < 1 or args.max_queue < 0:
        raise UserError("--max-batch must be at least 1 and --max-queue at least 0")
    max_body = parse_size(args.max_body)
    if args.read_timeout < 1:
        raise UserError("--read-timeout must be at least 1 second")
    defaults = Defaults(load=load_settings(args), decode=decode_settings(args), tie=tie_settings(args))
    defaults.tie.validate(defaults.member_names)
    sock = bind(args.host, args.port)
    print(f"tie-lite serve: loading {', '.join(defaults.member_names)} …", file=sys.stderr, flush=True)
    ensemble = Ensemble(defaults.load)
    app = create_app(ensemble, defaults, api_key=api_key, max_batch=args.max_batch, max_queue=args.max_queue,
                     max_body=max_body, read_timeout=float(args.read_timeout))
    logging.basicConfig(format="%(message)s")  # our one-line notes (a client gone, a stream ended) on stderr
    print(f"tie-lite serve: http://{args.host}:{args.port}/v1 serving {', '.join(model_ids(defaults))} "
          f"(Ctrl+C stops it)", file=sys.stderr, flush=True)
    run_server(app, sock)
    print("tie-lite serve: stopped", file=sys.stderr, flush=True)
    return 0
