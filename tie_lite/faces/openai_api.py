"""What the OpenAI API's fields mean on a masked diffusion ensemble: a request body -> `Ask`, a decoded
response -> the API's objects. The server (serve.py) does the HTTP; nothing here does I/O.

Three endpoints read one way: `/v1/chat/completions` (messages), `/v1/completions` (a prompt, read as one
user message in each member's own template: the members are instruction-tuned and none continues raw text)
and `/v1/responses` (input and instructions). A token cap (`max_tokens`, `max_completion_tokens`,
`max_output_tokens`) cuts the text; it changes the canvas only for families that decode well at any length.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

from tie_lite.checks import CHARS_PER_TOKEN, SEED_LIMIT, check_text, shown
from tie_lite.engine.recipe import settings_for
from tie_lite.errors import UserError
from tie_lite.faces.client_settings import (
    SETTING_KEYS,
    Defaults,
    history_messages,
    off_task_reply,
    parse_settings,
)

MAX_CHOICES = 8  # choices one request may ask for (n, times the prompts of a completion), within the batch
MAX_STOP = 16  # stop sequences (OpenAI allows 4; lm-eval's completions send a task's list plus the EOS text)

# Fields clients send that change nothing in a masked diffusion decode when left at their defaults.
NEUTRAL = {"user": None, "store": None, "metadata": None, "service_tier": None, "safety_identifier": None,
           "prompt_cache_key": None, "parallel_tool_calls": None, "truncation": None, "include": None,
           "top_p": 1, "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {}, "best_of": 1,
           "tool_choice": "none", "modalities": ["text"], "reasoning_effort": None}
# Fields with no meaning here: refused with a 400 naming them unless null (or their default, per NEUTRAL).
REFUSED = {
    "response_format": "structured output is not available (a masked diffusion canvas is not constrained to a schema)",
    "tools": "tool calls are not available", "functions": "function calls are not available",
    "function_call": "function calls are not available", "audio": "audio output is not available",
    "prediction": "predicted outputs are not available", "echo": "echoing the prompt is not available",
    "suffix": "a suffix is not available", "previous_response_id": "stored responses are not kept",
    "reasoning": "reasoning settings are not available", "text": "only plain text output is available",
}
TRACE_FIELDS = {"member_token_ids"}  # what the `tie` trace of a reply carries, on every endpoint
ENDPOINT_FIELDS = {
    "chat": {"model", "messages", "max_tokens", "max_completion_tokens", "stream", "stream_options", "n", "stop",
             "logprobs", "top_logprobs"} | TRACE_FIELDS,
    "completions": {"model", "prompt", "max_tokens", "stream", "stream_options", "n", "stop", "logprobs"} | TRACE_FIELDS,
    "responses": {"model", "input", "instructions", "max_output_tokens", "stream", "top_logprobs"} | TRACE_FIELDS,
}
CAP_FIELDS = {"chat": ("max_completion_tokens", "max_tokens"), "completions": ("max_tokens",),
              "responses": ("max_output_tokens",)}
NUMBER_SETTINGS = {"gen_length", "block_size", "steps", "threshold", "topk", "answer_length", "interval", "temperature",
                   "seed", "eps", "edit_threshold", "edit_steps"}
PROMPT_FIELD = {"chat": "messages", "completions": "prompt", "responses": "input"}


class APIError(Exception):
    """An answer in OpenAI's error shape: status, one-line message, type, the field at fault, a code."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code, self.headers = (status, message, kind, param,
                                                                                     code, headers)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Ask:
    """One API request as the engine needs it: every prompt's conversation, settings, and what to send back."""

    endpoint: str
    model: str
    conversations: list  # engine messages, one conversation per prompt
    load: object
    decode: object
    tie: object
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    cap: int | None = None  # completion tokens at most (clamped to what the context leaves by `fit_canvas`)
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    canvas_given: bool = False  # the request set gen_length itself
    member_token_ids: bool = False  # the trace carries each member's generated ids too

    @property
    def choices(self) -> int:
        return self.n * len(self.conversations)

    def seed(self, choice: int) -> int:
        """Distinct seeds for the n choices of one prompt: seed, seed + 1, ... (wrapping within 0..2^64-1)."""
        return (self.decode.seed + choice % self.n) % SEED_LIMIT


def model_ids(defaults: Defaults) -> dict[str, list[str]]:
    """Model id -> member names: the whole ensemble as one model, and each member alone."""
    names = defaults.member_names
    ids = {"tie:" + "+".join(names): names} if len(names) > 1 else {}
    ids.update({n: [n] for n in names})
    return ids


def _whole(body: dict, key: str, low: int, high: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f"at least {low}"
        raise APIError(400, f"{key} must be a whole number, {bound} (got {shown(value)})", param=key)
    return value


def _flag(body: dict, key: str) -> bool:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise APIError(400, f"{key} must be true or false", param=key)
    return bool(value)


def _check_fields(endpoint: str, body: dict) -> None:
    for key, value in body.items():
        if key in ENDPOINT_FIELDS[endpoint] or key in SETTING_KEYS:
            continue
        if key in REFUSED:
            plain = value in (None, [], {}) or (key == "response_format" and value == {"type": "text"}) \
                or (key == "text" and value in ({"format": {"type": "text"}}, {})) or (key == "echo" and value is False)
            if not plain:
                raise APIError(400, f"{key}: {REFUSED[key]} on this server; leave it out", param=key)
        elif key in NEUTRAL:
            if value is not None and value != NEUTRAL[key] and NEUTRAL[key] is not None \
                    and not (key == "tool_choice" and value == "auto"):
                raise APIError(400, f"{key} {shown(value)} is not available on this server; leave it out or send "
                                    f"{NEUTRAL[key]!r}", param=key)
        else:
            raise APIError(400, f"unknown field '{shown(key)}'", param=shown(key))


def content_text(content, field: str) -> str | None:
    """A message's content: a string, a list of text parts, or null."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in ("text", "input_text", "output_text") or not isinstance(part.get("text"), str):
                raise APIError(400, f"{field}: only text content parts are available (got a part of type "
                                    f"{shown(kind)})", param=field)
            parts.append(part["text"])
        return "".join(parts)
    raise APIError(400, f"{field}: content must be a string or a list of text parts", param=field)


def _messages(items, field: str) -> list[dict]:
    """OpenAI messages (chat) or input items (responses) -> [{'role', 'content'}] with text content."""
    if not isinstance(items, list) or not items:
        raise APIError(400, f"{field} must be a non-empty list of messages", param=field)
    out = []
    for item in items:
        if not isinstance(item, dict) or item.get("type", "message") != "message":
            raise APIError(400, f"{field}: each item must be a message with a role and content", param=field)
        role = item.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise APIError(400, f"{field}: role {shown(role)} is not available (system, developer, user, "
                                f"assistant)", param=field)
        out.append({"role": role, "content": content_text(item.get("content"), field)})
    return out


def _conversation(messages: list[dict], field: str) -> list[dict]:
    if messages[-1]["role"] != "user" or not (messages[-1]["content"] or "").strip():
        raise APIError(400, f"{field} must end with a user message that has text", param=field)
    question = messages[-1]["content"]
    try:
        check_text(question, "the last message")
        return history_messages(messages[:-1], question)
    except UserError as exc:
        raise APIError(400, str(exc), param=field) from None


def conversations(endpoint: str, body: dict, detokenize=None) -> list[list[dict]]:
    """Each prompt's conversation. A completion's prompt may be token ids of the server's tokenizer (`/tokenize`),
    which `detokenize` turns back into text."""
    field = PROMPT_FIELD[endpoint]
    if endpoint == "chat":
        return [_conversation(_messages(body.get("messages"), field), field)]
    if endpoint == "completions":
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) or _token_ids(prompt) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) or _token_ids(p) for p in prompts):
            raise APIError(400, "prompt must be a string, a list of strings, or token ids from this server's "
                                "/tokenize", param="prompt")
        prompts = [p if isinstance(p, str) else detokenize(p) for p in prompts]
        return [_conversation([{"role": "user", "content": p}], "prompt") for p in prompts]
    given = body.get("input")
    messages = [{"role": "user", "content": given}] if isinstance(given, str) else _messages(given, field)
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise APIError(400, "instructions must be a string", param="instructions")
    if instructions:
        messages = [{"role": "system", "content": instructions}] + messages
    return [_conversation(messages, field)]


def _token_ids(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def read_ask(endpoint: str, body, defaults: Defaults, detokenize=None) -> Ask:
    """A request body -> Ask, or an APIError naming the field at fault."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    ids = model_ids(defaults)
    model = body.get("model")
    if not isinstance(model, str) or model not in ids:
        raise APIError(404, f"unknown model '{shown(model)}'; this server has {', '.join(ids)}", param="model",
                       code="model_not_found")
    _check_fields(endpoint, body)
    for key in ("quant", "backend", "models"):
        if body.get(key) is not None:
            raise APIError(400, f"'{key}' is set by the server's operator; choose a model id instead", param=key)
    talks = conversations(endpoint, body, detokenize)
    n = _whole(body, "n", 1, MAX_CHOICES) or 1
    if n * len(talks) > MAX_CHOICES:
        raise APIError(400, f"n times the prompts is {n * len(talks)}; at most {MAX_CHOICES} choices a request",
                       param="n")
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or not stream):
        raise APIError(400, "stream_options is an object, and only with stream: true", param="stream_options")
    include_usage = _flag(options or {}, "include_usage")
    cap = None
    for key in CAP_FIELDS[endpoint]:  # max_completion_tokens supersedes max_tokens, as OpenAI has it
        cap = cap if cap is not None else _whole(body, key, 1)
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else (stop or [])
    if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(isinstance(s, str) and s for s in stop):
        raise APIError(400, f"stop must be a non-empty string or a list of at most {MAX_STOP} of them", param="stop")
    if endpoint == "completions":
        logprobs = _whole(body, "logprobs", 0, 5)
        if logprobs:
            raise APIError(400, "logprobs: only each chosen token's own probability is recorded, not alternatives; "
                                "send logprobs 0", param="logprobs")
        logprobs = logprobs == 0
    else:
        logprobs = _flag(body, "logprobs") if endpoint == "chat" else False
        if _whole(body, "top_logprobs", 0, 20):
            raise APIError(400, "top_logprobs: only each chosen token's own probability is recorded, not "
                                "alternatives; send 0 or leave it out", param="top_logprobs")
    values = {k: body[k] for k in SETTING_KEYS if body.get(k) is not None and k not in ("models", "quant", "backend")}
    for key in NUMBER_SETTINGS & set(values):  # JSON numbers: "0.9" is text (a chat box may hold text, JSON not)
        value = values[key]
        if isinstance(value, str) or (isinstance(value, bool) and not (key == "edit_threshold" and value is False)):
            kind = "text" if isinstance(value, str) else "true/false"
            raise APIError(400, f"{key} must be a JSON number, not {kind} ({shown(value)})", param=key)
    values["models"] = ids[model]
    try:
        load, decode, tie = parse_settings(values, defaults)
    except UserError as exc:
        message = api_words(str(exc))
        raise APIError(400, message, param=_named_field(message, values)) from None
    for talk in talks:  # the rule the chat and generate apply: the shipped members are not asked what they cannot do
        if (refusal := off_task_reply(load, talk[-1]["content"])) is not None:
            raise APIError(400, refusal)
    return Ask(endpoint, model, talks, load, decode, tie, n=n, stream=stream, include_usage=include_usage, cap=cap,
               stop=tuple(stop), logprobs=logprobs, canvas_given="gen_length" in values,
               member_token_ids=_flag(body, "member_token_ids"))


def api_words(message: str) -> str:
    """A settings message in the API's field names: '--gen-length 256' -> 'gen_length 256'."""
    message = re.sub(r"--([a-z]+(?:-[a-z]+)*)", lambda m: m.group(1).replace("-", "_"), message)
    for key in SETTING_KEYS:  # settings named without their dashes too ("gen-length / block-size")
        message = message.replace(key.replace("_", "-"), key)
    return message


def _named_field(message: str, values: dict) -> str | None:
    """The field a settings message names, as a whole word ('threshold' is not named by 'edit_threshold')."""
    def named(key: str) -> bool:
        return any(re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", message)
                   for name in (key, key.replace("_", " ")))

    return next((k for k in values if named(k)), None)


# --- the canvas and the cap, against each member's context (tokenizes: run it off the engine's worker) -------


def check_prompt_size(ask: Ask, members: list) -> None:
    """Refuse, before tokenizing it, a prompt too long for any chosen member's context at any tokenization."""
    contexts = [m.max_length for m in members if m.max_length]
    if not contexts:
        return
    limit = min(contexts) * CHARS_PER_TOKEN
    size = max(sum(len(m["content"]) for m in talk) for talk in ask.conversations)
    if size > limit:
        raise APIError(400, f"{PROMPT_FIELD[ask.endpoint]}: {size:,} characters cannot fit the context of "
                            f"{min(contexts)} tokens; send at most {limit:,}", param=PROMPT_FIELD[ask.endpoint],
                       code="context_length_exceeded")


def member_block(decode, members: list) -> int:
    """The block a capped canvas is rounded to: one every member's blocks divide (members decode with their own
    recipes, e.g. LLaDA2's blocks of 32 beside blocks of 16)."""
    block = 1
    for m in members:
        try:
            own = settings_for(m, decode)
        except UserError as exc:
            raise APIError(400, api_words(str(exc))) from None
        if not own.dream and getattr(m, "denoising", None) is None:
            block = math.lcm(block, own.block_size)
    return block if block > 1 else max(1, decode.block_size)


def fit_canvas(ask: Ask, members: list) -> Ask:
    """The canvas each choice decodes, and the cap clamped to what every chosen member's context leaves after the
    prompt. A family that decodes well at one canvas length (the shipped members) keeps it whatever the cap; a
    family that decodes well at any length gets the cap rounded up to whole blocks (the server's --gen-length
    without a cap)."""
    field = PROMPT_FIELD[ask.endpoint]
    room = math.inf
    for m in members:
        if m.max_length:
            longest = max(len(m.prompt_ids(talk)) for talk in ask.conversations)
            if longest >= m.max_length:
                raise APIError(400, f"{field}: the prompt takes {longest} tokens of {m.name}'s context of "
                                    f"{m.max_length}; shorten it", param=field, code="context_length_exceeded")
            room = min(room, m.max_length - longest)
    decode, block = ask.decode, member_block(ask.decode, members)
    fixed = [m.family.canvas_length for m in members if getattr(m.family, "canvas_length", None)]
    if not (ask.canvas_given or fixed or ask.cap is not None or decode.given is None or "gen_length" in decode.given):
        return ask  # no length asked for: each member's recipe says it (its context is checked when it runs)
    if ask.canvas_given or fixed:
        canvas = decode.gen_length if ask.canvas_given else max(fixed)
        if canvas > room:
            what = f"gen_length {canvas}" if ask.canvas_given else f"the members' canvas of {canvas} tokens"
            advice = "lower gen_length or shorten the prompt" if ask.canvas_given else "shorten the prompt"
            param = "gen_length" if ask.canvas_given else field
            raise APIError(400, f"{param}: the prompt leaves {room} tokens of the context and {what} does not fit; "
                                f"{advice}", param=param,
                           code="context_length_exceeded")
    else:
        want = ask.cap or decode.gen_length
        canvas = min(math.ceil(want / block) * block, int(room // block * block) if room < math.inf else math.inf)
        if canvas < block:
            raise APIError(400, f"{field}: the prompt leaves {room} tokens of the context, less than one block of "
                                f"{block}; shorten the prompt", param=field, code="context_length_exceeded")
    cap = ask.cap if ask.cap is None or room == math.inf else min(ask.cap, int(room))
    decode = decode if ask.canvas_given else decode.for_length(int(canvas))  # the server's steps per token
    try:
        decode.validate()
    except UserError as exc:
        raise APIError(400, api_words(str(exc))) from None
    return replace(ask, decode=decode, cap=cap)


# --- a decoded response -> the text the API returns ------------------------------------------------------------


def cut(text: str, ask: Ask, tokenizer) -> tuple[str, str]:
    """(text, finish_reason): at most `cap` tokens ('length' when that cut it), then up to the first stop
    sequence ('stop')."""
    reason = "stop"
    if ask.cap is not None:
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) > ask.cap:
            text, reason = tokenizer.decode(ids[: ask.cap], skip_special_tokens=True), "length"
    at = min((i for i in (text.find(s) for s in ask.stop) if i >= 0), default=-1)
    if at >= 0:
        text, reason = text[:at], "stop"
    return text, reason


def stop_in(text: str, ask: Ask) -> bool:
    return any(s in text for s in ask.stop)


def token_logprobs(trajectory, text: str) -> list[tuple[str, float]]:
    """(token, logprob) for `text` (a prefix of the trajectory's response) in the final member's tokens: each
    token's log-probability is what its characters had when committed (relays carry it through text); the
    marker the layout places is certain (0). The tokens' texts join to `text` exactly."""
    layout, tokenizer = trajectory.layout, trajectory.member.tokenizer
    reasoning_lp, answer_lp = layout.char_logprobs(tokenizer, trajectory.ids, trajectory.commit_logp)
    state = trajectory.state()

    def stripped(raw: str, values: list[float]) -> tuple[str, list[float]]:
        lead = len(raw) - len(raw.lstrip())
        return raw.strip(), values[lead: lead + len(raw.strip())]

    full, values = stripped(state.reasoning, reasoning_lp)
    if layout.has_answer:  # as Layout.text writes it
        answer, answer_values = stripped(state.answer, answer_lp)
        glue = f"\n{layout.marker_text} "
        full, values = stripped(full + glue + answer, values + [0.0] * len(glue) + answer_values)
    values = (values + [0.0] * len(text))[: len(text)]
    starts = [0]
    ids = tokenizer.encode(text, add_special_tokens=False)
    for k in range(1, len(ids)):  # where each token starts: the length of the text the tokens before it spell
        starts.append(min(len(text), len(tokenizer.decode(ids[:k], skip_special_tokens=True))))
    bounds = list(zip(starts, starts[1:] + [len(text)]))
    return [(text[a:b], float(sum(values[a:b]))) for a, b in bounds if b > a]
