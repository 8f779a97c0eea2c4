"""The flags every face shares (generate, eval, plan, chat, serve) and the settings built from them.

Each check runs before anything heavy (no model loads, no evaluation starts) and fails with a
`UserError`: one line saying what was wrong and what to do. The CLI prints it and exits 2; the chat
shows it. The value checks themselves live in tie_lite/checks.py, where every layer can reach them.

Building the flags imports nothing heavy (`tie-lite --help` and argument errors answer without torch);
the settings builders import the engine and runtime when they run.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import warnings

from tie_lite.checks import (
    BACKENDS,
    DTYPES,
    QUANTS,
    SEED_LIMIT,
    check_choice,
    check_device,
    check_text,
    one_line,
    parse_size,
    shown,
)
from tie_lite.errors import UserError

DEFAULTS = dict(gen_length=64, block_size=16, answer_length=8, interval=16, score="verify", select="lowest-tcc",
                cache="dual")  # cache: as accurate as none on the validation seed, 2.5-3x faster there
THREADS_VARIABLE = "TIE_LITE_THREADS"
AFFINITY_SOURCE = "the CPUs this process may use"  # the default thread count's source
PLOT_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")
TRACE_FORMATS = ("jsonl", "json")


class Parser(argparse.ArgumentParser):
    """argparse that reports bad input on one line, exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see `{self.prog} --help`)\n")


# --- values -------------------------------------------------------------------------------------------


def whole(text: str) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{shown(text)}' is not a whole number") from None
    if abs(value) >= SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"{shown(text)} is too large")
    return value


def number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{shown(text)}' is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"'{shown(text)}' is not a finite number")
    return value


def check_select(select) -> list[str]:
    """--select as [RULE] or [best-model, NAME]; anything after that is an error, not ignored."""
    from tie_lite.engine.tie import SELECTIONS  # deferred: the engine loads torch; parsing flags must not

    select = select if isinstance(select, list) else [select]
    public = [s for s in SELECTIONS if s != "oracle"]
    rule = check_choice(select[0], SELECTIONS, "--select") if select else "lowest-tcc"
    if rule == "best-model":
        if len(select) != 2:
            raise UserError("--select best-model takes exactly one member name, e.g. --select best-model tiny-sp")
    elif len(select) > 1:
        raise UserError(f"--select {rule} takes no further arguments (got '{shown(' '.join(select[1:]))}'); "
                        f"use one of {', '.join(public)}")
    return select


def check_load_args(args) -> None:
    """The load options, checked before anything loads."""
    check_choice(args.quant, QUANTS, "--quant")
    check_choice(args.quant_backend, BACKENDS, "--quant-backend")
    member_devices(args)
    check_choice(args.dtype, DTYPES, "--dtype")
    parse_size(args.max_memory)
    thread_count(args)
    for spec in args.model or ():
        check_text(spec, "--model")


def thread_count(args) -> tuple[int, str]:
    """(torch CPU threads, where the figure came from): --threads, else $TIE_LITE_THREADS, else
    $OMP_NUM_THREADS, else the CPUs this process may run on (its affinity, not the machine's core count:
    on a shared or containerised machine torch's own default oversubscribes and runs many times slower)."""
    given = getattr(args, "threads", None)
    for value, source in ((given, "--threads"), (os.environ.get(THREADS_VARIABLE), THREADS_VARIABLE),
                          (os.environ.get("OMP_NUM_THREADS"), "OMP_NUM_THREADS")):
        if value is None or (source != "--threads" and not str(value).strip()):
            continue
        try:
            threads = int(str(value).strip())
        except ValueError:
            raise UserError(f"{source} '{shown(value)}' is not a whole number; give the CPU threads, e.g. 1") from None
        if threads < 1:
            raise UserError(f"{source} must be at least 1 thread (got {threads})")
        return threads, source
    return len(os.sched_getaffinity(0)), AFFINITY_SOURCE


def explicit_threads(args) -> int | None:
    """The thread count the user set (--threads or an environment variable), else None: Ray member actors
    take it as theirs, and without it their share of the cluster's CPUs."""
    threads, source = thread_count(args)
    return None if source == AFFINITY_SOURCE else threads


def apply_threads(args) -> int:
    """Set torch's CPU thread count from thread_count(args); returns it."""
    import torch  # deferred: only a command that computes needs torch

    threads, _ = thread_count(args)
    torch.set_num_threads(threads)
    return threads


# --- flags --------------------------------------------------------------------------------------------


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models")
    g.add_argument("--model", action="append", metavar="ID_OR_PATH",
                   help="a shipped name (tiny-sp, tiny-bpe), a registry name, a folder or a hub id; repeat for "
                        "an ensemble (default: the shipped pair)")
    g.add_argument("--quant", default="none", help="none | 8bit | 4bit (default none)")
    g.add_argument("--quant-backend", default="bitsandbytes", help="bitsandbytes | quanto (quanto: pip install 'tie-lite[quanto]')")
    g.add_argument("--device", action="append", metavar="DEVICE",
                   help="cpu | cuda | cuda:N | auto (default cpu); one per --model places each member on its own "
                        "device, and members on different devices decode their rounds side by side")
    g.add_argument("--max-memory", metavar="SIZE", help="device memory budget, e.g. 10GiB or 600MB")
    g.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run every member as a Ray actor (pip install 'tie-lite[ray]'): alone, on a local cluster "
                        "started here; with an address (e.g. 10.0.0.5:6379 or auto), on that cluster; each member "
                        "computes where its weights are and the members decode side by side")
    g.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16 (auto: bfloat16 on CUDA, "
                                                   "the checkpoint's own dtype on the CPU)")
    g.add_argument("--trust-remote-code", action="store_true",
                   help="allow checkpoints of architectures tie-lite does not implement to run their own code")
    g.add_argument("--allow-pickle", action="store_true", help="allow pickle .bin weights (can run arbitrary code)")
    g.add_argument("--threads", type=whole, default=None, metavar="N",
                   help=f"torch CPU threads (default ${THREADS_VARIABLE}, else $OMP_NUM_THREADS, else the CPUs this "
                        "process may use)")


def add_decode_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("decoding")
    g.add_argument("--gen-length", type=whole, default=DEFAULTS["gen_length"], metavar="N")
    g.add_argument("--block-size", type=whole, default=DEFAULTS["block_size"], metavar="N")
    g.add_argument("--steps", type=whole, default=None, metavar="N", help="default: gen-length (one token a step)")
    g.add_argument("--temperature", type=number, default=0.0, metavar="T", help="0 = greedy")
    g.add_argument("--unmask", default="low_confidence",
                   help="low_confidence | threshold | topk | margin | entropy | random, Dream's names "
                        "maskgit_plus | topk_margin | entropy, and llada2 (LLaDA2's threshold decoding: every "
                        "position above --threshold, at least the step's share of the block)")
    g.add_argument("--schedule", default="blocks",
                   help="blocks: LLaDA's semi-autoregressive blocks (default); dream: Dream's diffusion_generate "
                        "schedule (linspace(1, eps) transfer counts over the whole generation, no blocks; a TIE "
                        "round then spans the whole generation)")
    g.add_argument("--eps", type=number, default=1e-3, metavar="EPS", help="last timestep of --schedule dream")
    g.add_argument("--cache", default=DEFAULTS["cache"],
                   help="block KV cache: dual (default: the committed prefix's and the masked suffix's keys and values "
                        "reused within a block) | prefix (the prefix's only) | none (exact, as the reference "
                        "samplers compute); refreshed at every block boundary, where relays land")
    g.add_argument("--threshold", type=number, default=0.9, metavar="TAU", help="confidence for --unmask threshold")
    g.add_argument("--topk", type=whole, default=2, metavar="K", help="tokens a step for --unmask topk")
    g.add_argument("--edit-threshold", type=number, default=None, metavar="E",
                   help="LLaDA2.1's token editing: a committed token of the current block is replaced by a different "
                        "top-1 token more probable than E (off by default; the authors' 2.1 setting is 0.9)")
    g.add_argument("--edit-steps", type=whole, default=16, metavar="N",
                   help="with --edit-threshold: at most N more passes over a block once it has no masks (16)")
    g.add_argument("--seed", dest="decode_seed", type=whole, default=0, metavar="S",
                   help="sampling seed (temperature > 0); the same meaning in every command")
    g.add_argument("--answer-length", type=whole, default=DEFAULTS["answer_length"], metavar="A",
                   help="answer positions after the 'Answer:' marker")
    g.add_argument("--free", action="store_true", help="free-form layout: no answer marker in the canvas")


def add_tie_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ensemble (TIE)")
    g.add_argument("--interval", type=whole, default=DEFAULTS["interval"], metavar="N",
                   help="steps per round before scoring and relay (rounded up to whole blocks)")
    g.add_argument("--score", default=None,
                   help="tcc | top1 | entropy | margin | verify (default: verify with two or more members, "
                        "which measured best on the validation seed; a single member needs no score)")
    g.add_argument("--select", default=DEFAULTS["select"], nargs="+", metavar="RULE",
                   help="final selection: lowest-tcc | verify | most-selected | best-model NAME")


# --- settings from flags ------------------------------------------------------------------------------


def member_devices(args) -> list[str]:
    """--device: one for every member, or one per --model in order."""
    devices = [check_device(d) for d in args.device or ["cpu"]]
    models = len(args.model or [0, 0])  # the shipped pair by default
    if len(devices) not in (1, models):
        raise UserError(f"--device was given {len(devices)} times for {models} models; give it once for all "
                        "members or once per --model, in the same order")
    return devices


def load_settings(args):
    from tie_lite.runtime.registry import DEFAULT_ENSEMBLE  # deferred (torch), as every settings builder here
    from tie_lite.runtime.session import LoadSettings  # deferred: loads torch

    check_load_args(args)
    devices = member_devices(args)
    return LoadSettings(
        models=tuple(args.model or DEFAULT_ENSEMBLE),
        quant=args.quant,
        backend=args.quant_backend,
        device=devices[0],
        placement=tuple(devices) if len(devices) > 1 else (),
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        allow_pickle=args.allow_pickle,
        max_memory=args.max_memory,
        ray=getattr(args, "ray", None),
        threads=explicit_threads(args),
    )


def uniform_noise(spec: str) -> bool:
    """A uniform-noise member (DiffusionGemma): its canvas starts from random tokens, so its output depends on the
    seed at any temperature, and it has canvases, not blocks. Read from its config.json; a member that cannot be
    read is checked when it loads."""
    from tie_lite.families import family_for  # deferred: the families load torch
    from tie_lite.runtime.checkpoint import read_config  # deferred with them (torch)
    from tie_lite.runtime.registry import resolve  # deferred with them (torch)

    try:
        name, source = resolve(spec)
        config = read_config(source, name)
    except UserError:
        return False
    return bool(getattr(family_for(config.get("model_type"), source=name, config=config), "uniform_noise", False))


def decode_settings(args):
    from tie_lite.engine.sampler import DecodeSettings  # deferred: the sampler loads torch

    block_size = args.block_size
    if block_size == DEFAULTS["block_size"] and args.model and all(map(uniform_noise, args.model)):
        block_size = args.gen_length  # canvases, not blocks: any --gen-length (the members' canvases round it up)
    settings = DecodeSettings(
        gen_length=args.gen_length,
        block_size=block_size,
        steps=args.steps,
        temperature=args.temperature,
        unmask=args.unmask,
        threshold=args.threshold,
        topk=args.topk,
        seed=args.decode_seed,
        answer_length=None if args.free else args.answer_length,
        schedule=args.schedule,
        eps=args.eps,
        cache=args.cache,
        edit_threshold=args.edit_threshold,
        edit_steps=args.edit_steps,
    )
    settings.validate()
    return settings


HUB_BIDIRECTIONAL = ("llada", "dream", "llada-moe")  # families whose default block cache is an approximation


def settings_notes(args, members) -> list[str]:
    """What the flags did not do, said once on stderr after a run (never before an error's one line): flags given
    for every member that a member's own sampler does not read (a uniform-noise member, DiffusionGemma, runs its
    checkpoint's sampler; they apply to the others), and a default cache that is approximate for a hub family.
    --json and the API's trace report per member what ran (`member_settings`)."""
    from tie_lite.engine.uniform import NOT_READ  # deferred: the engine loads torch

    probe = argparse.ArgumentParser()
    add_decode_args(probe)
    defaults = vars(probe.parse_args([]))
    notes = []
    given = [k for k in NOT_READ if getattr(args, k, defaults[k]) != defaults[k]]
    own = [m.name for m in members if getattr(m, "denoising", None) is not None]
    if given and own:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        one = len(own) == 1
        notes.append(f"tie-lite: note: {', '.join(own)} run{'s' * one} {'its' if one else 'their'} checkpoint's own "
                     f"sampler (generation_config.json): {flags} {'does' if len(given) == 1 else 'do'} not apply to "
                     f"{'it' if one else 'them'}")
    # the default cache where it is not exact, for a hub family (the shipped members were measured with it)
    approximate = [m.name for m in members if getattr(m, "caches", False) and not getattr(m, "block_causal", False)
                   and getattr(getattr(m, "family", None), "name", "") in HUB_BIDIRECTIONAL]
    if approximate and args.cache == defaults["cache"] != "none":
        notes.append(f"tie-lite: note: the default --cache {args.cache} is approximate for {', '.join(approximate)} "
                     f"(keys and values reused within a block, as Fast-dLLM does); --cache none decodes as the "
                     f"authors' code does")
    return notes


def say_notes(args, members) -> None:
    for note in settings_notes(args, members):
        print(note, file=sys.stderr)


def default_score(members: int) -> str:
    """verify with two or more members (best on the validation seed); one member is plain decoding."""
    return DEFAULTS["score"] if members > 1 else "tcc"


def tie_settings(args):
    from tie_lite.engine.scoring import check_score  # deferred: the engine loads torch
    from tie_lite.engine.tie import TieSettings  # deferred: the engine loads torch

    members = len(args.model or [0, 0])
    if args.score is None:
        args.score = default_score(members)
    check_score(args.score, members)
    if args.score == "oracle":
        raise UserError("--score oracle needs an eval task's gold solution; use tie-lite eval --methods oracle-relay")
    select = check_select(args.select)
    if args.interval < 1:
        raise UserError("--interval must be at least 1 step")
    return TieSettings(interval=args.interval, score=args.score, select=select[0],
                       select_model=select[1] if len(select) > 1 else None)


def plan_tokens(args) -> int:
    """Positions one forward computes, for the load-time memory plan (cross-model scores stack M canvases)."""
    from tie_lite.engine.scoring import needs_cross_model  # deferred: the engine loads torch

    members = len(args.model or [0, 0])
    score = args.score or default_score(members)
    return (64 + args.gen_length) * (members if needs_cross_model(score, members, check_select(args.select)[0]) else 1)


def quiet_libraries() -> None:
    """Library chatter (weight-loading bars, bitsandbytes casts, accelerate's placement notes, hub retries)
    would bury our own output: one line per problem is ours to print."""
    import transformers  # deferred: seconds to import; only commands that load models call this
    from huggingface_hub.utils import disable_progress_bars  # deferred along with transformers

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    # CRITICAL, not ERROR: transformers logs a config it cannot apply as a whole JSON dump before raising, and
    # the raise becomes our one-line error
    transformers.utils.logging.set_verbosity(logging.CRITICAL)
    transformers.utils.logging.disable_progress_bar()
    for name in ("bitsandbytes", "accelerate", "huggingface_hub", "httpx", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)
    disable_progress_bars()
