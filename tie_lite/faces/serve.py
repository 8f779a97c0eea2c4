"""`tie-lite serve`: an OpenAI-compatible API (FastAPI + uvicorn) on the batched engine.

    GET  /health                 status and load
    GET  /v1/models              the ensemble (tie:a+b) and each member alone
    POST /v1/chat/completions    messages, max_tokens, temperature, seed, stream; TIE settings as extra fields

Only the members the operator named at launch run; a request chooses among them by model id. Errors use
the OpenAI error shape with the usual status codes (400 bad parameters, 401 wrong key, 404 unknown model,
429 queue full with Retry-After).
"""


import asyncio
import json
import math
import os
import queue
import secrets
import sys
import time
import uuid

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tie_lite.checks import check_text
from tie_lite.engine.events import Relay, StepFrame
from tie_lite.errors import UserError
from tie_lite.faces.client_settings import (
    SETTING_KEYS,
    Defaults,
    history_messages,
    member_indices,
    off_task_reply,
    parse_settings,
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
from tie_lite.runtime.batching import BatchEngine, QueueFull
from tie_lite.runtime.session import Ensemble

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
# OpenAI request fields tie-lite accepts and ignores (they have no meaning for a masked diffusion decode).
IGNORED = {"top_p", "n", "stop", "user", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs",
           "top_logprobs", "stream_options", "max_completion_tokens", "response_format", "tools", "tool_choice",
           "parallel_tool_calls", "service_tier", "store", "metadata"}


class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code, self.headers = status, message, kind, param, code, headers


def model_ids(defaults: Defaults) -> dict[str, list[str]]:
    """Model id -> member names: the whole ensemble as one model, and each member alone."""
    names = defaults.member_names
    ids = {"tie:" + "+".join(names): names} if len(names) > 1 else {}
    ids.update({n: [n] for n in names})
    return ids


def request_settings(body, defaults: Defaults):
    """An OpenAI chat request -> (model id, messages, load, decode, tie, stream). Raises APIError."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    ids = model_ids(defaults)
    model = body.get("model")
    if not isinstance(model, str) or model not in ids:
        raise APIError(404, f"unknown model '{str(model)[:60]}'; this server has {', '.join(ids)}", param="model",
                       code="model_not_found")
    unknown = [k for k in body if k not in IGNORED and k not in SETTING_KEYS
               and k not in ("model", "messages", "max_tokens", "stream")]
    if unknown:
        raise APIError(400, f"unknown field '{str(unknown[0])[:40]}'", param=str(unknown[0])[:40])
    if body.get("n", 1) != 1:
        raise APIError(400, "n must be 1: one response per request", param="n")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict) \
            or messages[-1].get("role") != "user":
        raise APIError(400, "messages must be a list ending with a user message", param="messages")
    values = {k: body[k] for k in SETTING_KEYS if k in body and k not in ("models", "quant", "backend")}
    for key in ("quant", "backend", "models"):
        if key in body:
            raise APIError(400, f"'{key}' is set by the server's operator; choose a model id instead", param=key)
    values["models"] = ids[model]  # temperature and seed are settings keys too: they came with the rest
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "stream must be true or false", param="stream")
    try:
        block = defaults.decode.block_size if "block_size" not in values else int(values["block_size"])
        if body.get("max_tokens") is not None:
            tokens = body["max_tokens"]
            if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
                raise UserError("max_tokens must be a positive whole number")
            values["gen_length"] = max(1, math.ceil(tokens / max(1, block))) * max(1, block)  # whole blocks
        load, decode, tie = parse_settings(values, defaults)
        question = messages[-1].get("content")
        check_text(question if isinstance(question, str) else None, "the last message")
        if (refusal := off_task_reply(load, question)) is not None:  # the rule the chat and generate apply
            raise UserError(refusal)
        chat = history_messages(messages[:-1], question)
    except (UserError, TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise APIError(400, str(exc) if isinstance(exc, UserError) else f"bad parameter ({exc})") from None
    return model, chat, load, decode, tie, stream


def _usage(result, ensemble, messages) -> dict:
    # the loaded members, not the scheduler's current selection (other requests change that)
    member = next(m for m in ensemble.scheduler.loaded if m.name == result.final_member.split("#")[0])
    prompt, completion = member.token_counts(messages, result.text)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _trace(result) -> dict:
    return {"members": result.members, "final_member": result.final_member, "rounds": result.rounds,
            "leader_changes": result.leader_changes, "steps": result.steps, "seconds": round(result.seconds, 4),
            "swaps": result.memory.get("swaps", 0), "strategy": result.memory.get("strategy")}


def create_app(ensemble, defaults: Defaults, *, api_key: str | None = None, max_batch: int = 8, max_queue: int = 32,
               engine: BatchEngine | None = None):
    engine = engine or BatchEngine(ensemble, max_batch=max_batch, max_queue=max_queue)
    app = FastAPI(title="tie-lite", docs_url=None, redoc_url=None)
    app.state.engine = engine

    def error(exc: APIError) -> JSONResponse:
        body = {"error": {"message": exc.message, "type": exc.kind, "param": exc.param, "code": exc.code}}
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise APIError(401, "wrong or missing API key (send Authorization: Bearer KEY)", kind="authentication_error",
                           code="invalid_api_key")

    @app.exception_handler(APIError)
    async def on_api_error(request, exc: APIError):
        return error(exc)

    @app.get("/health")
    async def health(request: Request):
        given = request.headers.get("authorization", "").encode()
        if api_key is not None and not secrets.compare_digest(given, f"Bearer {api_key}".encode()):
            return {"status": "ok"}  # without the key: alive or not, nothing about models or load
        return {"status": "ok", "models": list(model_ids(defaults)), **engine.load}

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        created = int(time.time())
        return {"object": "list", "data": [{"id": i, "object": "model", "created": created, "owned_by": "tie-lite"}
                                           for i in model_ids(defaults)]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        check_key(request)
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise APIError(400, "the request body is not valid JSON (or nests too deeply)") from None
        model, messages, load, decode, tie, stream = request_settings(body, defaults)
        latest: dict = {}  # member name -> its trajectory at its last step (worker thread only)
        events: queue.Queue = queue.Queue()  # the job's queue, known to on_event before the job exists

        def on_event(event):  # in the worker, while the trajectories are as the event says
            if isinstance(event, StepFrame):
                latest[event.member] = event.trajectory
            elif isinstance(event, Relay) and event.leader in latest:
                # after a relay every member shares the leader's committed text; a token cut mid-character
                # decodes to U+FFFD, so the prefix stops before it
                prefix = latest[event.leader].state().reasoning.strip().split("\ufffd")[0]
                events.put(("prefix", prefix))

        try:
            job = engine.submit(messages, decode, tie, member_indices(defaults.load, load),
                                on_event=on_event if stream else (lambda event: None), events=events)
        except QueueFull as exc:
            raise APIError(429, f"the server is busy ({exc}); retry shortly", kind="rate_limit_error",
                           code="queue_full", headers={"Retry-After": "1"}) from None
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if stream:
            return StreamingResponse(_stream(job, request, cid, created, model, messages), media_type="text/event-stream")
        try:
            while not job.finished.is_set():
                if await request.is_disconnected():
                    job.cancel()
                    return JSONResponse({}, status_code=499)
                await asyncio.to_thread(job.finished.wait, 0.05)
        except asyncio.CancelledError:
            job.cancel()
            raise
        if job.error is not None:
            if job.error.startswith("internal error"):
                raise APIError(500, job.error, kind="server_error")
            raise APIError(400, job.error)
        if job.result is None:
            raise APIError(503, "the request was cancelled", kind="server_error")
        result = job.result
        return {"id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                             "finish_reason": "stop"}],
                "usage": _usage(result, ensemble, messages), "tie": _trace(result)}

    async def _stream(job, request, cid, created, model, messages):
        def chunk(delta: dict, finish=None, **extra) -> str:
            body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
            return f"data: {json.dumps(body)}\n\n"

        sent = ""
        try:
            yield chunk({"role": "assistant", "content": ""})
            while True:
                try:  # a client that goes away cancels this generator (Starlette), and `finally` drops the job
                    kind, value = await asyncio.to_thread(job.events.get, True, 0.1)
                except queue.Empty:
                    continue
                if kind == "prefix":  # stream what the relayed, shared text added since the last chunk
                    if value.startswith(sent) and len(value) > len(sent):
                        yield chunk({"content": value[len(sent):]})
                        sent = value
                elif kind == "done":
                    text = value.text
                    if text.startswith(sent) and len(text) > len(sent):
                        yield chunk({"content": text[len(sent):]})
                    # the trace carries the whole answer too: a client can check what it joined against it
                    yield chunk({}, "stop", usage=_usage(value, ensemble, messages),
                                tie=_trace(value) | {"text": text})
                    yield "data: [DONE]\n\n"
                    return
                elif kind in ("error", "cancelled"):
                    message = value or "the request was cancelled"
                    yield f"data: {json.dumps({'error': {'message': message, 'type': 'invalid_request_error'}})}\n\n"
                    return
        finally:
            if not job.finished.is_set():
                job.cancel()  # the client went away mid-stream: free its slot at the next step

    return app


def check_binding(host: str, api_key: str | None) -> None:
    if host not in LOCAL_HOSTS and not api_key:
        raise UserError(f"--host {host} opens the server to other machines; give --api-key KEY (or set "
                        f"TIE_LITE_API_KEY) so that only your clients can use it")


def run_server(app, host: str, port: int) -> None:
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    uvicorn.Server(config).run()


def add_serve_parser(sub) -> None:
    p = sub.add_parser(
        "serve", help="an OpenAI-compatible API server (batched, streaming TIE)",
        description="Serve /v1/chat/completions for the members named here: the ensemble as model "
                    "'tie:A+B' and each member alone. The decoding options are the defaults a request can change.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=whole, default=8000, metavar="N", help="port (default 8000)")
    p.add_argument("--api-key", default=None, help="required from clients as 'Authorization: Bearer KEY' "
                   "(default $TIE_LITE_API_KEY; needed whenever --host is not local)")
    p.add_argument("--max-batch", type=whole, default=8, metavar="N", help="requests decoded together (default 8)")
    p.add_argument("--max-queue", type=whole, default=32, metavar="N", help="requests waiting beyond those; more "
                   "are answered 429 (default 32)")
    add_model_args(p)
    add_decode_args(p)
    add_tie_args(p)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    api_key = args.api_key or os.environ.get("TIE_LITE_API_KEY") or None
    check_binding(args.host, api_key)
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port} is not a port number (1-65535)")
    if args.max_batch < 1 or args.max_queue < 0:
        raise UserError("--max-batch must be at least 1 and --max-queue at least 0")
    defaults = Defaults(load=load_settings(args), decode=decode_settings(args), tie=tie_settings(args))
    defaults.tie.validate(defaults.member_names)
    print(f"tie-lite serve: loading {', '.join(defaults.member_names)} …", file=sys.stderr, flush=True)
    ensemble = Ensemble(defaults.load)
    app = create_app(ensemble, defaults, api_key=api_key, max_batch=args.max_batch, max_queue=args.max_queue)
    print(f"tie-lite serve: http://{args.host}:{args.port}/v1 serving {', '.join(model_ids(defaults))} "
          f"(Ctrl+C stops it)", file=sys.stderr, flush=True)
    try:
        run_server(app, args.host, args.port)
    except OSError as exc:
        raise UserError(f"cannot start the server on {args.host}:{args.port}: {exc}") from None
    return 0
