"""The tie-lite chat: a Gradio app on the same engine and event stream as `tie-lite generate`.

    demo = build_app(Ensemble(LoadSettings()))        # or build_app() to load the defaults lazily
    launch_app(demo, host="127.0.0.1", port=7860)

The chat streams the denoising canvas (still-masked positions shown as ░) step by step, then the
final answer; beside it the ensemble view (leader and scores per round, final member, swaps, memory);
below it the settings. Generations of several users run together on one batched engine (tie_lite/batching.py:
their forwards are stacked step by step), the operator's members load once, and Stop ends the caller's
generation at the next step.

API (gradio_client):  /chat(message, history=None, settings=None) streams the canvas and returns the
response text; /stop() stops the caller's running generation.
"""

from __future__ import annotations

import html
import logging
import queue
import re
import sys
import threading
import time
import traceback
from contextlib import closing
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

import gradio as gr
from matplotlib.figure import Figure  # no pyplot: figures are built in worker threads

from tie_lite.checks import check_text
from tie_lite.engine.events import Cancelled, Final, Relay, RoundScores, StepFrame, Swap
from tie_lite.engine.sampler import CACHES, MAX_EDIT_STEPS, SCHEDULES, UNMASK_POLICIES, DecodeSettings
from tie_lite.engine.tie import Result, TieSettings
from tie_lite.errors import UserError
from tie_lite.faces.client_settings import (
    PUBLIC_SCORES,
    PUBLIC_SELECTIONS,
    SETTING_KEYS,
    STOPPED,
    Defaults,
    describe,
    history_messages,
    member_indices,
    message_text,
    off_task_reply,
    own_recipes,
    parse_settings,
)
from tie_lite.runtime.batching import BatchEngine, QueueFull
from tie_lite.runtime.registry import member_names
from tie_lite.runtime.session import Ensemble, LoadSettings
from tie_lite.tasks import TASKS

log = logging.getLogger("tie_lite.chat")

MASK_SYMBOL = "░"


GENERATION = "generation"  # the concurrency group of the chat and the API: as many as the engine batches
MAX_BATCH, MAX_QUEUE = 8, 32  # generations decoded together; waiting beyond them

class ModelCache:
    """The operator's ensemble, loaded once (at launch, or with the first message); requests run any subset
    of its members without loading anything."""

    def __init__(self, settings: LoadSettings, ensemble: Ensemble | None = None):
        self.settings = settings
        self.ensemble = ensemble
        self.loads = 0
        self._engine: BatchEngine | None = None
        self._lock = threading.Lock()

    def get(self, on_load: Callable[[str], None] | None = None) -> Ensemble:
        with self._lock:
            if self.ensemble is None:
                self.ensemble = Ensemble(self.settings, on_load=on_load)
                self.loads += 1
            return self.ensemble

    def engine(self) -> BatchEngine:
        """The batched engine over the loaded ensemble (one worker: one generation step at a time)."""
        with self._lock:
            if self._engine is None:
                self._engine = BatchEngine(self.ensemble, max_batch=MAX_BATCH, max_queue=MAX_QUEUE)
            return self._engine


@dataclass
class Progress:
    """What the views show, rebuilt from the event stream (one snapshot per yield)."""

    phase: str = "starting"  # loading | decoding | done | stopped | error
    message: str = ""
    canvas: str = ""
    member: str = ""
    round: int = 0
    forwards: int = 0
    members: list[str] = field(default_factory=list)
    rounds: list[dict] = field(default_factory=list)
    relays: int = 0
    canvases: dict[str, list] = field(default_factory=dict)  # member -> its canvas as (text, committer) pieces
    swaps: int = 0
    swap_bytes: int = 0
    result: Result | None = None
    started: float = field(default_factory=time.perf_counter)

    @property
    def finished(self) -> bool:
        return self.phase in ("done", "stopped", "error")


class Runner:
    """Runs each generation on the cache's batched engine from a worker thread, streaming Progress snapshots."""

    def __init__(self, cache: ModelCache, min_interval: float = 0.05):
        self.cache = cache
        self.min_interval = min_interval  # coalesce step frames closer together than this
        self._running = 0  # generations in flight (they run together on the batched engine)
        self._count_lock = threading.Lock()
        self._stops: dict[str, set[threading.Event]] = {}
        self._stops_lock = threading.Lock()
        self.last_phase: str | None = None
        self.last_forwards = 0

    def stop(self, session: str | None) -> bool:
        """Ask the generation of `session` to stop; True when one was running."""
        with self._stops_lock:
            events = list(self._stops.get(session or "", ()))
        for e in events:
            e.set()
        return bool(events)

    def stream(self, messages: list[dict], load: LoadSettings, decode: DecodeSettings, tie: TieSettings,
               session: str | None = None) -> Iterator[Progress]:
        stop = threading.Event()
        with self._stops_lock:
            self._stops.setdefault(session or "", set()).add(stop)
        events: queue.Queue = queue.Queue()
        worker = threading.Thread(target=self._work, args=(messages, load, decode, tie, stop, events),
                                  name="tie-lite-generation", daemon=True)
        progress = Progress(members=member_names(load.models))
        worker.start()
        try:
            last_yield = 0.0
            while True:
                item = events.get()
                pending_frame = False
                while True:  # fold everything already waiting into the snapshot
                    pending_frame = self._apply(progress, item) or pending_frame
                    if progress.finished:
                        break
                    try:
                        item = events.get_nowait()
                    except queue.Empty:
                        break
                now = time.perf_counter()
                if progress.finished or not pending_frame or now - last_yield >= self.min_interval:
                    last_yield = now
                    yield replace(progress, rounds=list(progress.rounds))
                if progress.finished:
                    return
        finally:  # the consumer went away (Stop, a cancelled client job): end the engine run too
            stop.set()
            worker.join()
            with self._stops_lock:
                self._stops.get(session or "", set()).discard(stop)
                if not self._stops.get(session or "", True):
                    del self._stops[session or ""]

    def _work(self, messages, load, decode, tie, stop: threading.Event, events: queue.Queue) -> None:
        """One chat request on the shared batched engine: concurrent users share forwards instead of waiting."""
        with self._count_lock:
            self._running += 1
        try:
            self.cache.get(on_load=lambda spec: events.put(("loading", member_names([spec])[0])))

            def on_event(event):  # in the engine's worker: render now, the trajectory keeps changing
                if isinstance(event, StepFrame):
                    traj = event.trajectory
                    pieces = traj.pieces() if hasattr(traj, "pieces") else [(traj.render(MASK_SYMBOL), -1)]  # Ray
                    events.put(("frame", (event.round, event.member, event.forwards, traj.render(MASK_SYMBOL),
                                          pieces)))
                elif not isinstance(event, Final):
                    events.put(("event", event))

            job = self.cache.engine().submit(messages, decode, tie, member_indices(self.cache.settings, load),
                                             on_event=on_event)
            events.put(("decoding", None))
            while True:
                if stop.is_set():  # Stop, or the consumer went away: the engine drops it at the next step
                    job.cancel()
                try:
                    kind, value = job.events.get(timeout=0.05)
                except queue.Empty:
                    continue
                if kind == "done":
                    events.put(("done", value))
                    return
                elif kind == "cancelled":
                    events.put(("stopped", Cancelled().message))
                    return
                elif kind == "error":
                    events.put(("error", value))
                    return
        except QueueFull:
            events.put(("error", "the chat is busy with other users' questions; try again in a moment"))
        except UserError as exc:
            events.put(("error", str(exc)))
        except Exception as exc:  # never a traceback in the UI: one line there, the rest in the log
            log.error("generation failed:\n%s", traceback.format_exc())
            first = (str(exc).strip().splitlines() or [""])[0]
            events.put(("error", f"internal error ({type(exc).__name__}): {first}".rstrip(": ")))
        finally:
            with self._count_lock:
                self._running -= 1

    @property
    def running(self) -> bool:
        return self._running > 0

    def _apply(self, p: Progress, item) -> bool:
        kind, data = item
        if kind == "loading":
            p.phase, p.message = "loading", f"loading {data}…"
        elif kind == "decoding":
            p.phase, p.message = "decoding", "decoding…"
        elif kind == "frame":
            p.round, p.member, p.forwards, p.canvas, pieces = data
            p.canvases = {**p.canvases, p.member: pieces}
            self.last_forwards = p.forwards
            return True
        elif kind == "event":
            if isinstance(data, RoundScores):
                p.rounds.append({"round": data.round + 1, "leader": data.leader, "scores": dict(data.scores)})
            elif isinstance(data, Relay):
                p.relays += 1
            elif isinstance(data, Swap):
                p.swaps += 1
                p.swap_bytes += data.bytes
        elif kind == "done":
            p.phase, p.result, p.message = "done", data, ""
            p.members = list(data.members)
            self.last_phase = "done"
        elif kind in ("stopped", "error"):
            p.phase, p.message = kind, data
            self.last_phase = kind
        return False


# --- views ------------------------------------------------------------------------------------------


def _mib(n: int | float) -> str:
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


def canvasmessage_text(p: Progress) -> str:
    """The streaming chat message: who is decoding, then the canvas (plain text: no markdown surprises)."""
    return f"[{p.member or '…'} · round {p.round + 1} · step {p.forwards}]\n{p.canvas or MASK_SYMBOL}"


def status_markdown(p: Progress) -> str:
    if p.phase == "error":
        return f"⚠ {p.message}"
    if p.phase == "stopped":
        return f"{STOPPED} after {p.forwards} steps of member {p.member or '–'}"
    if p.phase == "done" and p.result is not None:
        r = p.result
        return f"✓ answered in {r.seconds:.1f} s ({r.steps} forward passes)"
    if p.phase == "decoding" and p.member:
        return f"◐ round {p.round + 1}: **{p.member}** decoding, step {p.forwards}"
    return f"◐ {p.message or 'waiting…'}"


def summary_markdown(p: Progress | None, cache: ModelCache | None = None) -> str:
    if p is None:
        ens = cache.ensemble if cache is not None else None
        if ens is None:
            return "**Ensemble** – models load with the first message."
        members = ", ".join(f"{m.name} ({_mib(m.footprint_bytes)}, {m.quant})" for m in ens.members)
        return f"**Ensemble** {members}  \nloaded in {ens.load_seconds:.1f} s · {ens.scheduler.strategy}"
    lines = [f"**Ensemble** {' + '.join(p.members)}"]
    if p.rounds:
        last = p.rounds[-1]
        changes = sum(a["leader"] != b["leader"] for a, b in zip(p.rounds, p.rounds[1:]))
        lines.append(f"round {last['round']} led by **{last['leader']}** · {changes} leader change"
                     f"{'s' * (changes != 1)} · {p.relays} relay{'s' * (p.relays != 1)}")
    r = p.result
    if r is not None:
        answer = f" · answer **{r.answer}**" if r.answer is not None else ""
        lines.append(f"final member **{r.final_member}**{answer}")
        mem = r.memory or {}
        lines.append(f"swaps {mem.get('swaps', p.swaps)} ({_mib(mem.get('bytes_moved', p.swap_bytes))} moved, "
                     f"{mem.get('swap_seconds', 0.0):.2f} s) · plan {mem.get('strategy', '–')}")
        weights = sum((mem.get("footprint_bytes") or {}).values())
        peak = mem.get("peak_bytes")
        if peak is not None:
            lines.append(f"peak memory {_mib(peak)} · weights {_mib(weights)}")
        lines.append(f"{r.steps} forward passes · {r.seconds:.2f} s")
    else:
        lines.append(f"swaps {p.swaps} ({_mib(p.swap_bytes)} moved)")
    return "  \n".join(lines)


# The panel's labels for the settings that errors name (by CLI flag or by API key): the chat speaks its own words.
PANEL_LABELS = {
    "gen-length": "generation length", "block-size": "block size", "steps": "steps", "answer-length": "answer length",
    "unmask": "unmasking policy", "threshold": "threshold", "topk": "top-k", "temperature": "temperature",
    "seed": "seed", "schedule": "step schedule", "eps": "eps", "cache": "KV cache", "interval": "interval",
    "score": "score", "select": "final selection", "select-model": "best model", "model": "members",
    "free": "free layout", "edit-threshold": "edit threshold", "edit-steps": "edit steps",
}
_SETTING_NAME = re.compile(r"(--)?\b(" + "|".join(sorted({k for k in PANEL_LABELS} | {k.replace("-", "_") for k in
                                                                                       PANEL_LABELS}, key=len,
                                                                                      reverse=True)) + r")\b")


def in_panel_words(message: str) -> str:
    """An error as the chat says it: '--gen-length' and 'gen_length' become the panel's 'generation length'."""
    def label(m):  # a flag (--name) or an API key (name_with_underscores); plain words stay as they are
        flag, name = m.groups()
        return PANEL_LABELS[name.replace("_", "-")] if flag or "_" in name else m.group(0)

    return _SETTING_NAME.sub(label, message)


def chosen_members(cache: ModelCache, load: LoadSettings) -> list:
    """The loaded members a request runs (empty while the ensemble has not loaded yet)."""
    if cache.ensemble is None:
        return []
    return [cache.ensemble.members[i] for i in member_indices(cache.settings, load)]


def context_room(cache: ModelCache, load: LoadSettings, decode: DecodeSettings, message: str | None) -> int | None:
    """The largest generation length the members' contexts leave after this question's prompt (whole blocks);
    None when nothing bounds it or the members have not loaded yet."""
    question = (message or "").strip() or "What is (23+41)*7?"
    rooms = []
    for m in chosen_members(cache, load):
        if getattr(m, "max_length", None) is None or not hasattr(m, "prompt_ids"):  # a Ray member: it checks itself
            continue
        rooms.append(m.max_length - len(m.prompt_ids([{"role": "user", "content": question}])))
    if not rooms:
        return None
    room, block = min(rooms), decode.layout_block_size if not decode.dream else 1
    return max(0, room // block * block)


def single_turn_note(cache: ModelCache, load: LoadSettings, messages: list[dict]) -> str:
    """Said quietly when earlier turns exist but some members read the last question alone (families.base)."""
    if sum(m.get("role") == "user" for m in messages) < 2:
        return ""
    single = [m.name for m in chosen_members(cache, load) if getattr(getattr(m, "family", None), "single_turn", False)]
    if not single:
        return ""
    return (f"<small>{', '.join(single)} answer{'s' * (len(single) == 1)} each question on its own (trained on single "
            f"questions): earlier turns are not sent to {'it' if len(single) == 1 else 'them'}</small>")


# matplotlib's default cycle, so a member has one colour in the canvases and in the scores plot
MEMBER_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def canvases_html(p: Progress | None, names: list[str]) -> str:
    """Every member's canvas side by side, each token on the colour of the member that committed it (a relay
    carries that along), the current round's leader marked ★."""
    if p is None or not p.canvases:
        return ""
    leads = {}
    for r in p.rounds:
        leads.setdefault(r["leader"], []).append(str(r["round"]))
    leader = p.rounds[-1]["leader"] if p.rounds else None
    cards = []
    for k, name in enumerate(names):
        spans = []
        for text, owner in p.canvases.get(name, []):
            if owner is None and text:  # uniform noise (DiffusionGemma): a position not accepted yet, its token now
                spans.append(f'<span class="tie-noise" title="not accepted yet: re-noised each step">'
                             f'{html.escape(text)}</span>')
            elif owner is None:
                spans.append(f'<span class="tie-mask">{MASK_SYMBOL}</span>')
            elif owner < 0 or owner >= len(names):
                spans.append(html.escape(text))
            else:
                colour = MEMBER_COLOURS[owner % len(MEMBER_COLOURS)]
                spans.append(f'<span class="tie-token" data-member="{html.escape(names[owner])}" '
                             f'style="background:{colour}33;border-bottom:2px solid {colour}">{html.escape(text)}</span>')
        mark = " ★ leads" if name == leader else ""
        if p.result is not None and name == p.result.final_member:
            mark += " ✓ final answer"
        led = f' · led round{"s" * (len(leads.get(name, [])) > 1)} {", ".join(leads[name])}' if name in leads else ""
        colour = MEMBER_COLOURS[k % len(MEMBER_COLOURS)]
        cards.append(
            f'<div class="tie-card{" tie-leader" if name == leader else ""}" data-member="{html.escape(name)}">'
            f'<div class="tie-card-head"><span class="tie-swatch" style="background:{colour}"></span>'
            f"<b>{html.escape(name)}</b>{mark}<small>{led}</small></div>"
            f'<pre class="tie-canvas">{"".join(spans) or MASK_SYMBOL}</pre></div>')
    legend = ("each token on the colour of the member that committed it; ★ the leader of the latest round, "
              "whose trajectory every member continues from; ✓ the response chosen as the answer")
    if any(owner is None and text for pieces in p.canvases.values() for text, owner in pieces):
        legend += "; grey struck-through: a uniform-noise canvas's positions not accepted yet (random, re-noised)"
    return f'<div class="tie-canvases">{"".join(cards)}</div><div class="tie-legend">{legend}</div>'


def leaders_markdown(p: Progress | None) -> str:
    if p is None or not p.rounds:
        return ""
    names = list(p.rounds[0]["scores"])
    head = "| round | leader | " + " | ".join(names) + " |\n|---|---|" + "---|" * len(names) + "\n"
    rows = "".join(
        f"| {r['round']} | {r['leader']} | " + " | ".join(f"{r['scores'][n] + 0.0:.3f}" for n in names) + " |\n"
        for r in p.rounds
    )
    return head + rows


def scores_figure(p: Progress | None):
    """Members' scores per round, the round's leader starred (a matplotlib Figure; None before round 1)."""
    if p is None or not p.rounds:
        return None

    fig = Figure(figsize=(5.6, 2.9), dpi=100, layout="constrained")
    ax = fig.subplots()
    rounds = [r["round"] for r in p.rounds]
    for k, name in enumerate(p.rounds[0]["scores"]):
        color = f"C{k}"
        values = [r["scores"][name] + 0.0 for r in p.rounds]
        ax.plot(rounds, values, marker="o", color=color, label=name, linewidth=2)
        led = [(x, y) for x, y, r in zip(rounds, values, p.rounds) if r["leader"] == name]
        if led:
            ax.scatter(*zip(*led), marker="*", s=220, color=color, edgecolors="black", linewidths=0.6, zorder=3)
    ax.set_xticks(rounds)
    ax.set_xlim(min(rounds) - 0.3, max(rounds) + 0.3)
    ax.set_xlabel("round  (★ leader, relayed to all)")
    ax.set_ylabel("score (higher leads)")
    ax.grid(alpha=0.3)
    ax.set_title("members' scores per round", fontsize=10)
    fig.legend(loc="outside right upper", fontsize=8, frameon=False)
    return fig


# --- the app ----------------------------------------------------------------------------------------

CSS = """
#tie-chat .message-content span.md { white-space: pre-wrap; }
#tie-chat .bot .message-content span.md { font-family: var(--font-mono); letter-spacing: 0.02em; }
#tie-status { min-height: 1.6em; }
.tie-canvases { display: flex; flex-wrap: wrap; gap: 8px; }
.tie-card { flex: 1 1 260px; min-width: 0; border: 1px solid var(--border-color-primary); border-radius: 6px;
            padding: 6px 8px; }
.tie-card.tie-leader { border: 2px solid var(--color-accent); }
.tie-card-head small { color: var(--body-text-color-subdued); }
.tie-swatch { display: inline-block; width: 0.8em; height: 0.8em; border-radius: 2px; margin-right: 4px; }
.tie-canvas { white-space: pre-wrap; word-break: break-all; font-family: var(--font-mono); margin: 4px 0 0 0;
              background: none; border: none; padding: 0; }
.tie-mask { color: var(--body-text-color-subdued); }
.tie-noise { color: var(--body-text-color-subdued); text-decoration: line-through; opacity: 0.7; }
.tie-legend { font-size: 0.8em; color: var(--body-text-color-subdued); margin-top: 4px; }
"""


def build_app(ensemble: Ensemble | None = None, defaults: Defaults | None = None, *, gpu: Callable | None = None,
              title: str = "tie-lite chat"):
    """The Blocks app. `ensemble`: already loaded members to start with (else they load on the first
    message); `defaults`: the panel's starting values and the launch-time load options; `gpu`: a
    decorator for the generation handlers (`spaces.GPU` on Hugging Face Spaces)."""
    defaults = defaults or Defaults(load=ensemble.settings if ensemble is not None else LoadSettings())
    if ensemble is not None and ensemble.settings != defaults.load:
        raise ValueError("build_app: the ensemble was loaded with other settings than defaults.load")
    cache = ModelCache(defaults.load, ensemble)
    runner = Runner(cache)
    wrap = gpu or (lambda fn: fn)
    start = defaults.values()

    def session_of(request) -> str:
        return getattr(request, "session_hash", None) or ""

    def chat(message: str, history: list | None = None, settings: dict | None = None,
             request: gr.Request = None) -> str:
        if settings is not None and not isinstance(settings, dict):
            raise gr.Error("settings must be a dict, e.g. {'gen_length': 48, 'score': 'verify'}", print_exception=False)
        try:
            check_text(message, "the message")
            load, decode, tie = parse_settings(settings or {}, defaults)
            messages = history_messages(history, message)
        except UserError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        plain = off_task_reply(load, message)
        if plain is not None:
            yield plain
            return
        with closing(runner.stream(messages, load, decode, tie, session_of(request))) as stream:
            for p in stream:
                if p.phase == "decoding" and p.canvas:
                    yield p.canvas
                elif p.phase == "done":
                    yield p.result.text
                elif p.phase in ("error", "stopped"):
                    why = p.message if p.phase == "error" else f"{STOPPED}: {p.message}"
                    raise gr.Error(why, print_exception=False)

    chat.__doc__ = ("Answer `message` (after `history`, a list of role/content messages) with the ensemble. Streams "
                    "the canvas (still-masked positions as ░) and ends with the response text. `settings`: an "
                    "optional dict with any of: " + ", ".join(SETTING_KEYS) + ".")

    def stop(request: gr.Request = None) -> None:
        runner.stop(session_of(request))

    def settings_dict(values) -> dict:
        return dict(zip(SETTING_KEYS, values))

    def check(*values) -> str:
        *values, message = values
        try:
            load, decode, tie = parse_settings(settings_dict(values), defaults, panel=True)
            room = context_room(cache, load, decode, message)
        except UserError as exc:
            return f"⚠ {in_panel_words(str(exc))}"
        if room is not None and decode.gen_length > room:
            return (f"⚠ generation length {decode.gen_length} does not fit: with this question the members' context "
                    f"leaves room for at most {room}; lower generation length")
        return describe(decode, tie, len(load.models)) + own_recipes(chosen_members(cache, load), decode)

    def add_user(message, history):
        if not (message or "").strip():
            return gr.skip(), gr.skip()
        return "", (history or []) + [{"role": "user", "content": message}]

    def respond(request: gr.Request, history, *values):
        """The chat's generation handler: streams into the chat and the ensemble views."""
        history = list(history or [])
        skip = gr.skip()
        busy = (gr.update(interactive=False), gr.update(interactive=True))
        idle = (gr.update(interactive=True), gr.update(interactive=False))
        if not history or history[-1].get("role") != "user":
            yield (skip,) * 8 + idle
            return
        question = message_text(history[-1].get("content")) or ""
        try:
            check_text(question, "the message")
            load, decode, tie = parse_settings(settings_dict(values), defaults, panel=True)
            messages = history_messages(history[:-1], question)
        except UserError as exc:  # back to the textbox, the message in the status line
            why = f"⚠ {in_panel_words(str(exc))}"
            yield (history[:-1], question, why, skip, skip, skip, why, skip) + idle
            return
        plain = off_task_reply(load, question)
        if plain is not None:  # said plainly, without decoding
            yield (history + [{"role": "assistant", "content": plain}], skip, "not an arithmetic question", skip, skip,
                   skip, skip, skip) + idle
            return
        note = single_turn_note(cache, load, messages)
        names = member_names(load.models)
        shown_rounds = -1
        with closing(runner.stream(messages, load, decode, tie, session_of(request))) as stream:
            for p in stream:
                plot = leaders = skip
                if len(p.rounds) != shown_rounds or p.finished:
                    shown_rounds = len(p.rounds)
                    plot, leaders = scores_figure(p), leaders_markdown(p)
                if p.phase == "done":
                    chat_value = history + [{"role": "assistant", "content": p.result.text}]
                elif p.phase == "stopped":
                    partial = canvasmessage_text(p) if p.canvas else ""
                    chat_value = history + [{"role": "assistant", "content": f"{STOPPED}\n{partial}".strip()}]
                elif p.phase == "error":
                    why = replace(p, message=in_panel_words(p.message))
                    yield (history[:-1], question, status_markdown(why), summary_markdown(p), plot, leaders, skip,
                           skip) + idle
                    return
                elif p.canvas:
                    chat_value = history + [{"role": "assistant", "content": canvasmessage_text(p)}]
                else:
                    chat_value = skip
                status_line = status_markdown(p) + (f"  \n{note}" if note else "")
                yield ((chat_value, skip, status_line, summary_markdown(p), plot, leaders, skip,
                        canvases_html(p, names)) + (idle if p.finished else busy))

    with gr.Blocks(title=title, fill_width=True) as demo:
        gr.Markdown(
            "## tie-lite · an ensemble of masked diffusion LMs (TIE)\n"
            "Each member denoises its own canvas (░ = still masked); every round the trajectory that scores best "
            "is relayed to all members. Try an arithmetic question for the shipped tiny models."
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="chat", elem_id="tie-chat", height=430, buttons=["copy"],
                                     render_markdown=False,  # plain text: '*' in arithmetic is not emphasis
                                     feedback_options=None, placeholder="Ask e.g. What is (23+41)\\*7?")
                with gr.Row():
                    box = gr.Textbox(placeholder="What is (23+41)*7?", show_label=False, scale=5, lines=1,
                                     max_lines=4, submit_btn=False, elem_id="tie-message")
                    send = gr.Button("Send", variant="primary", scale=1, min_width=80, elem_id="tie-send")
                    stop_btn = gr.Button("Stop", variant="stop", scale=1, min_width=80, interactive=False,
                                         elem_id="tie-stop")
                status = gr.Markdown("", elem_id="tie-status")
                canvases = gr.HTML("", elem_id="tie-canvases", label="every member's canvas")
                gr.Examples([[ex] for t in TASKS.values() for ex in t.examples[:2]], inputs=[box], label="examples")
            with gr.Column(scale=2):
                summary = gr.Markdown(summary_markdown(None, cache), elem_id="tie-summary")
                plot = gr.Plot(scores_figure(None), label="scores per round", show_label=False,
                               elem_id="tie-scores", format="png")
                leaders = gr.Markdown("", elem_id="tie-leaders")
        with gr.Accordion("Settings", open=False, elem_id="tie-settings"):
            with gr.Row():  # members and quantization are the operator's (tie-lite chat --model/--quant)
                models = gr.Dropdown(defaults.member_names, value=start["models"], multiselect=True,
                                     allow_custom_value=False, label="members", scale=3,
                                     info="any of the members this server was started with")
                quant = gr.Dropdown([start["quant"]], value=start["quant"], label="quantization", interactive=False)
                backend = gr.Dropdown([start["backend"]], value=start["backend"], label="quantization backend",
                                      interactive=False)
            with gr.Row():
                gen_length = gr.Number(start["gen_length"], label="generation length", precision=0)
                block_size = gr.Number(start["block_size"], label="block size", precision=0)
                steps = gr.Number(start["steps"], label="steps", info="0 = one token a step", precision=0)
                answer_length = gr.Number(start["answer_length"], label="answer length", precision=0)
                free = gr.Checkbox(start["free"], label="free layout (no answer marker)")
            with gr.Row():
                unmask = gr.Dropdown(list(UNMASK_POLICIES), value=start["unmask"], label="unmasking policy")
                threshold = gr.Number(start["threshold"], label="threshold", info="for threshold unmasking")
                topk = gr.Number(start["topk"], label="top-k", info="for top-k unmasking", precision=0)
                temperature = gr.Number(start["temperature"], label="temperature", info="0 = greedy")
                seed = gr.Number(start["seed"], label="seed", precision=0)
            with gr.Row():
                schedule = gr.Dropdown(list(SCHEDULES), value=start["schedule"], label="step schedule",
                                       info="blocks: LLaDA's; dream: Dream's diffusion_generate (no blocks)")
                eps = gr.Number(start["eps"], label="eps", info="last timestep of the dream schedule")
                kv_cache = gr.Dropdown(list(CACHES), value=start["cache"], label="KV cache",
                                    info="refreshed at each block; dual is fastest")
            with gr.Row():  # LLaDA2.1's token editing (the CLI's --edit-threshold, --edit-steps)
                edit_threshold = gr.Number(start["edit_threshold"], label="edit threshold",
                                           elem_id="tie-edit-threshold",
                                           info="replace a committed token whose top-1 differs above this; empty = "
                                                "no editing (LLaDA2.1: 0.9)")
                edit_steps = gr.Number(start["edit_steps"], label="edit steps", precision=0,
                                       info=f"passes over a full block while it edits, at most (0-{MAX_EDIT_STEPS})")
            with gr.Row():
                interval = gr.Number(start["interval"], label="interval", info="steps per round", precision=0)
                score = gr.Dropdown(list(PUBLIC_SCORES), value=start["score"], label="score",
                                    info="tcc: the paper's; verify: members re-check each round")
                select = gr.Dropdown(list(PUBLIC_SELECTIONS), value=start["select"], label="final selection")
                select_model = gr.Dropdown(start["models"], value=start["select_model"],
                                           allow_custom_value=True, label="best model", info="for best-model")
            check_line = gr.Markdown(check(*[start[k] for k in SETTING_KEYS], ""), elem_id="tie-check")

        controls = [models, quant, backend, gen_length, block_size, steps, unmask, threshold, topk, answer_length,
                    free, interval, score, select, select_model, temperature, seed, schedule, eps, kv_cache,
                    edit_threshold, edit_steps]
        assert len(controls) == len(SETTING_KEYS)
        for c in controls + [box]:  # the question counts too: the prompt and the context bound the length
            c.change(check, controls + [box], check_line, queue=False, show_progress="hidden",
                     api_visibility="private")
        models.change(lambda m: gr.update(choices=list(m or [])), models, select_model, queue=False,
                      api_visibility="private")

        outputs = [chatbot, box, status, summary, plot, leaders, check_line, canvases, send, stop_btn]
        generations = [
            trigger(add_user, [box, chatbot], [box, chatbot], queue=False, api_visibility="private").then(
                wrap(respond), [chatbot] + controls, outputs, concurrency_limit=MAX_BATCH, concurrency_id=GENERATION,
                show_progress="hidden", api_visibility="private")
            for trigger in (send.click, box.submit)
        ]
        # Stop sets the run's should_stop flag, so the chat ends with the partial canvas marked stopped. Under
        # a `gpu` decorator (ZeroGPU runs handlers in another process, out of the flag's reach) it also cancels
        # the handler, whose closing stops the engine.
        stop_btn.click(stop, None, None, api_name="stop", concurrency_limit=None, show_progress="hidden",
                       cancels=generations if gpu is not None else None)
        gr.api(wrap(chat), api_name="chat", concurrency_limit=MAX_BATCH, concurrency_id=GENERATION)

    demo.tie_runner = runner  # for tests and embedding: the generation runner and its model cache
    demo.tie_cache = cache
    demo.tie_defaults = defaults
    return demo


def serve(demo, host: str | None = "127.0.0.1", port: int | None = None, share: bool = False,
          auth: tuple[str, str] | None = None) -> None:
    """Launch and block until Ctrl+C, saying where the chat is in our own words (`tie-lite chat`); `auth`: the
    login Gradio asks for."""
    _, local_url, share_url = launch_app(demo, host=host, port=port, share=share, prevent_thread_lock=True,
                                         quiet=True, auth=auth)
    print(f"tie-lite chat: open {local_url} in a browser (Ctrl+C stops the server)", file=sys.stderr, flush=True)
    if share:
        print(f"tie-lite chat: public link {share_url or '(could not be created)'}", file=sys.stderr, flush=True)
    elif host not in ("127.0.0.1", "localhost", "::1"):
        print(f"tie-lite chat: listening on {host}, reachable from other machines", file=sys.stderr, flush=True)
    demo.block_thread()


def launch_app(demo, host: str | None = "127.0.0.1", port: int | None = None, share: bool = False,
               prevent_thread_lock: bool = False, quiet: bool = False, **kwargs):
    """Queue (up to MAX_BATCH generations together, a bounded waiting line) and launch. host None: Gradio's own default
    ($GRADIO_SERVER_NAME, else 127.0.0.1) — what Spaces needs."""
    demo.queue(max_size=kwargs.pop("max_size", 32), default_concurrency_limit=1)
    kwargs.setdefault("ssr_mode", False)
    return demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=prevent_thread_lock,
                       quiet=quiet, theme=gr.themes.Soft(), css=CSS, footer_links=["api"], **kwargs)
