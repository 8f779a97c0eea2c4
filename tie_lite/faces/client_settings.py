"""What a client of the chat or the API server may ask for, checked against what the operator launched.

A request names members (a subset of the launched ones, by name), decoding and TIE settings, and a
conversation; `parse_settings` and `history_messages` turn those into engine settings and messages or
raise a one-line UserError. No client text ever reaches the file system or the model loader.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from tie_lite.checks import check_text, shown
from tie_lite.engine.recipe import settings_for
from tie_lite.engine.sampler import RECIPE_KEYS, DecodeSettings
from tie_lite.engine.scoring import SCORES
from tie_lite.engine.tie import SELECTIONS, TieSettings, unique_names
from tie_lite.errors import UserError
from tie_lite.runtime.checkpoint import read_config
from tie_lite.runtime.registry import resolve
from tie_lite.runtime.session import LoadSettings
from tie_lite.tasks.phrasing import find_expression

STOPPED = "■ stopped"  # an assistant turn that starts with this was cut short; it is not sent as history
PUBLIC_SELECTIONS = tuple(s for s in SELECTIONS if s != "oracle")
PUBLIC_SCORES = tuple(s for s in SCORES if s != "oracle")

# The settings the panel and the API's `settings` dict share (API keys = these names).
SETTING_KEYS = (
    "models", "quant", "backend", "gen_length", "block_size", "steps", "unmask", "threshold", "topk",
    "answer_length", "free", "interval", "score", "select", "select_model", "temperature", "seed", "schedule", "eps",
    "cache", "edit_threshold", "edit_steps",
)
# Settings whose empty value means something (one token a step, no best model, no token editing) rather than "not given"
EMPTY_IS_A_VALUE = ("steps", "select_model", "edit_threshold")
LABELS = {
    "models": "members", "gen_length": "generation length", "block_size": "block size", "steps": "steps",
    "threshold": "threshold", "topk": "top-k", "answer_length": "answer length", "interval": "interval",
    "temperature": "temperature", "seed": "seed",
}


# --- settings ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Defaults:
    """What the panel starts with, and what the operator allowed at launch: `load` names every member the
    server may run (clients choose among them by name, never by path or hub id) with its quantization,
    device, memory budget and remote-code trust, none of which a client can change."""

    load: LoadSettings = field(default_factory=LoadSettings)
    # the CLI's defaults; fields not given at launch (all, here) are each member's recipe
    decode: DecodeSettings = field(default_factory=lambda: DecodeSettings(cache="dual", given=frozenset()))
    tie: TieSettings = field(default_factory=lambda: TieSettings(score="verify"))  # best on the validation seed

    @cached_property
    def _display_names(self) -> dict[str, str]:
        """Each launched spec's display name, resolved once: resolving touches the disk, and a server asks for
        names on every request."""
        return {spec: resolve(spec)[0] for spec in self.load.models}

    def names_of(self, specs) -> list[str]:
        """The names the launched members `specs` (a request's choice among them) have once loaded."""
        return unique_names([self._display_names[spec] for spec in specs])

    @property
    def member_names(self) -> list[str]:
        return self.names_of(self.load.models)

    def values(self) -> dict:
        d, t = self.decode, self.tie
        return dict(
            models=self.member_names, quant=self.load.quant, backend=self.load.backend,
            gen_length=d.gen_length, block_size=d.block_size, steps=d.steps or 0, unmask=d.unmask,
            threshold=d.threshold, topk=d.topk, answer_length=d.answer_length or 8, free=d.answer_length is None,
            interval=t.interval, score=t.score, select=t.select, select_model=t.select_model, temperature=d.temperature,
            seed=d.seed, schedule=d.schedule, eps=d.eps, cache=d.cache, edit_threshold=d.edit_threshold,
            edit_steps=d.edit_steps,
        )


def _whole(key: str, value: Any, minimum: int | None = None) -> int:
    label = LABELS.get(key, key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise UserError(f"{label} is empty; enter a whole number")
    if isinstance(value, bool):
        raise UserError(f"{label} must be a whole number, not true or false")
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        value = int(value.strip())  # a typed seed like 18446744073709551615 must stay exact
    if isinstance(value, int):  # taken as is: a float conversion would round integers past 2**53
        number = value
    else:
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise UserError(f"{label} '{shown(value)}' is not a whole number") from None
        if not math.isfinite(number) or number != int(number):
            raise UserError(f"{label} {shown(value)} is not a whole number")
    if minimum is not None and number < minimum:
        raise UserError(f"{label} must be at least {minimum} (got {int(number)})")
    return int(number)


def _number(key: str, value: Any) -> float:
    label = LABELS.get(key, key)
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{label} '{shown(value)}' is not a number") from None
    if not math.isfinite(number):
        raise UserError(f"{label} must be a finite number")
    return number


def _edit_threshold(value: Any) -> float | None:
    """LLaDA2.1's token editing threshold: a number, or None / false / empty for no editing."""
    if value is None or value is False or (isinstance(value, str) and not value.strip()):
        return None
    if value is True:
        raise UserError("edit_threshold must be a number in [0, 1) (the LLaDA2.1 authors use 0.9); empty or false "
                        "means no token editing")
    return _number("edit_threshold", value)


def parse_settings(values: dict, defaults: Defaults | None = None,
                   panel: bool = False) -> tuple[LoadSettings, DecodeSettings, TieSettings]:
    """Panel or API values -> validated engine settings. Raises UserError with one readable line. The decode
    settings a request gives (an API request: the keys it sends; the panel, which sends every box: the boxes
    changed from what it started with), and those the operator gave at launch, set every member; the others are
    each member's recipe."""
    defaults = defaults or Defaults()
    unknown = sorted(shown(k) for k in set(values) - set(SETTING_KEYS))
    if unknown:
        raise UserError(f"unknown setting {', '.join(map(repr, unknown[:3]))}; known: {', '.join(SETTING_KEYS)}")
    start = defaults.values()
    sent = {k: val for k, val in values.items() if val is not None or k in EMPTY_IS_A_VALUE}
    v = start | sent
    asked = {k for k, val in sent.items() if not panel or val != start[k]}
    launched = defaults.decode.given
    given = None if launched is None else launched | {"answer_length" if k == "free" else k for k in asked
                                                      if k in RECIPE_KEYS or k == "free"}
    load = replace(defaults.load, models=chosen_members(v["models"], defaults))
    for key, launched in (("quant", defaults.load.quant), ("backend", defaults.load.backend)):
        if v[key] != launched:
            raise UserError(f"this server runs its members with {key} '{launched}', set when it started; "
                            f"it cannot be changed from the chat")
    steps = v["steps"]
    steps = None if steps in (None, "", 0, 0.0) else _whole("steps", steps, 1)
    free = v["free"]
    if not isinstance(free, bool):
        raise UserError("free must be true or false")
    decode = DecodeSettings(
        gen_length=_whole("gen_length", v["gen_length"], 1),
        block_size=_whole("block_size", v["block_size"], 1),
        steps=steps,
        temperature=_number("temperature", v["temperature"]),
        unmask=str(v["unmask"]),
        threshold=_number("threshold", v["threshold"]),
        topk=_whole("topk", v["topk"]),
        seed=_whole("seed", v["seed"]),
        answer_length=None if free else _whole("answer_length", v["answer_length"], 1),
        schedule=str(v["schedule"]),
        eps=_number("eps", v["eps"]),
        cache=str(v["cache"]),
        edit_threshold=_edit_threshold(v["edit_threshold"]),
        edit_steps=_whole("edit_steps", v["edit_steps"]),
        given=given,
        member_options=defaults.decode.member_options,
    )
    decode.validate()
    select = str(v["select"])
    tie = TieSettings(
        interval=_whole("interval", v["interval"], 1),
        score=str(v["score"]) if len(load.models) > 1 else "tcc",  # one member: plain decoding, nothing to score
        select=select,
        select_model=(v["select_model"] or None) if select == "best-model" else None,
    )
    if tie.score == "oracle" or tie.select == "oracle":
        raise UserError("oracle scoring needs the gold solution of an eval task; it is not available in the chat")
    tie.validate(defaults.names_of(load.models))
    return load, decode, tie


def chosen_members(requested: Any, defaults: Defaults) -> tuple[str, ...]:
    """A client's choice of members -> the operator's specs for them. Only the names of members the operator
    launched are accepted: a path, a hub id or any other text is refused before anything looks at it, so no
    client can make the server load (or run the remote code of) a model it was not started with, nor learn
    anything about its files from the answer."""
    names = defaults.member_names
    if isinstance(requested, str):
        requested = requested.split(",")
    if not isinstance(requested, (list, tuple)):
        raise UserError("members must be a list of member names")
    chosen = [str(m).strip() for m in requested if str(m).strip()]
    if not chosen:
        raise UserError("choose at least one member")
    unknown = [m for m in chosen if m not in names]
    if unknown:
        raise UserError(f"unknown member '{shown(unknown[0])}'; this server runs {', '.join(names)}")
    if len(set(chosen)) != len(chosen):
        raise UserError("each member can be chosen once")
    return tuple(defaults.load.models[names.index(m)] for m in chosen)


def member_indices(launched: LoadSettings, load: LoadSettings) -> list[int]:
    """Positions in the launched ensemble of the members a request chose (repeated specs taken in turn)."""
    out: list[int] = []
    for spec in load.models:
        out.append(next(i for i, s in enumerate(launched.models) if s == spec and i not in out))
    return out


def describe(decode: DecodeSettings, tie: TieSettings, members: int) -> str:
    """One line saying what the settings will do (shown under the panel when they are valid)."""
    block = decode.layout_block_size
    blocks = decode.gen_length // block
    per_round = max(1, math.ceil(tie.interval / decode.steps_per_block))
    rounds = math.ceil(blocks / per_round)
    relay = f"relay every {per_round} block{'s' * (per_round > 1)} (≤ {rounds} round{'s' * (rounds > 1)})"
    if members == 1:
        relay = "one member: plain decoding"
    editing = (f"; token editing above {decode.edit_threshold:g}, at most {decode.edit_steps} more passes a block"
               if decode.edit_threshold is not None else "")
    return (f"✓ {decode.gen_length} positions in {blocks} block{'s' * (blocks > 1)} of {block}, "
            f"{decode.steps_per_block} steps a block{editing}; {relay}; score {tie.score}, final {tie.select}")


def own_recipes(members: list, decode: DecodeSettings) -> str:
    """Said after `describe` for the loaded members that decode otherwise, on their own recipes (engine/recipe.py)."""
    words = []
    for m in members:
        try:
            own = settings_for(m, decode)
        except UserError as exc:
            return f" — ⚠ {exc}"
        if getattr(m, "denoising", None) is not None:
            words.append(f"{m.name}: its own sampler, {own.gen_length} positions")
        elif (own.gen_length, own.layout_block_size, own.unmask, own.schedule, own.edit_threshold) != (
                decode.gen_length, decode.layout_block_size, decode.unmask, decode.schedule, decode.edit_threshold):
            edits = f", editing above {own.edit_threshold:g}" if own.edit_threshold is not None else ""
            words.append(f"{m.name}: {own.gen_length} positions in blocks of {own.layout_block_size}, "
                         f"{own.unmask}{edits}")
    return f" — on their own recipes: {'; '.join(words)}" if words else ""


def history_messages(history: Any, message: str | None = None) -> list[dict]:
    """Chat history (Gradio messages, plain dicts or [user, bot] pairs) -> engine messages.

    Turns cut short (an assistant reply starting with STOPPED) are left out with their question.
    """
    out: list[dict] = []
    if history is not None and not isinstance(history, (list, tuple)):
        raise UserError("history must be a list of {'role': ..., 'content': ...} messages or [user, bot] pairs")
    for item in history or []:
        if isinstance(item, (list, tuple)) and len(item) == 2:
            pairs = [("user", item[0]), ("assistant", item[1])]
        elif isinstance(item, dict):
            pairs = [(item.get("role"), item.get("content"))]
        else:
            raise UserError("history must be a list of {'role': ..., 'content': ...} messages or [user, bot] pairs")
        for role, content in pairs:
            text = message_text(content)
            if role not in ("user", "assistant") or text is None or not text.strip():
                continue
            check_text(text, "a message in the history")
            if role == "assistant" and text.startswith(STOPPED):
                if out and out[-1]["role"] == "user":
                    out.pop()
                continue
            out.append({"role": role, "content": text})
    if message is not None:
        out.append({"role": "user", "content": message})
    return out


def message_text(content: Any, depth: int = 0) -> str | None:
    if content is None:
        return None
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        text = content.get("text") if content.get("type", "text") == "text" else None
        return text if isinstance(text, str) else None
    if isinstance(content, (list, tuple)):
        if depth > 8:
            raise UserError("a message's content is nested too deeply; send text, or a list of text parts")
        parts = [message_text(c, depth + 1) for c in content]
        parts = [p for p in parts if p]
        return "\n".join(parts) if parts else None
    return None


# --- engine side: models loaded once, one generation at a time, events -> snapshots -----------------




# --- what the shipped members can answer ------------------------------------------------------------------

ARITHMETIC_ONLY = (
    "The members running here are tie-lite's tiny shipped models, and they only do arithmetic: sums and products "
    "of numbers below 100, (a+b)*c and a*b+c*d, worked out step by step. Ask e.g. “What is (23+41)*7?”, “what's 37 "
    "plus 85” or “12 times 4 plus 7 times 3”. For anything else run real models, e.g. --model GSAI-ML/LLaDA-8B-Instruct "
    "--model Dream-org/Dream-v0-Instruct-7B (`tie-lite models` lists them; about 16 GB each, or --quant 4bit)."
)


def arithmetic_only(load: LoadSettings) -> bool:
    """Whether every member is one of the project's own tiny models (tie-tiny), trained on the arithmetic tasks only."""

    for spec in load.models:
        name, source = resolve(spec)
        if not Path(source).is_dir():  # a hub id: not one of the project's own models (and never fetched here)
            return False
        try:
            if read_config(source, name).get("model_type") != "tie-tiny":
                return False
        except UserError:
            return False
    return True


def off_task_reply(load: LoadSettings, message: str) -> str | None:
    """The plain answer for a message the members cannot answer (a greeting, prose, no arithmetic expression in
    it), instead of presenting arithmetic garbage as a reply; None when the members should answer it."""
    if find_expression(message) is None and arithmetic_only(load):
        return ARITHMETIC_ONLY
    return None


# --- who may connect ----------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def check_binding(host: str, api_key: str | None, open_to_network: bool, what: str = "--api-key KEY (or set "
                  "TIE_LITE_API_KEY)") -> None:
    """Serving beyond this machine needs a key (or the chat's login), unless the operator says it is meant to be open."""
    if not is_loopback(host) and not api_key and not open_to_network:
        raise UserError(f"--host {host} opens the server to other machines; give {what} so that only your "
                        f"clients can use it, or pass --open-to-network if it is meant to be open")
