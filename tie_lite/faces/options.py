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


class Given(argparse.Action):
    """Stores a decode flag's value and notes that the user gave it: the flags not given are each member's recipe."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.decode_given = set(getattr(namespace, "decode_given", None) or ()) | {self.dest}


class GivenSwitch(Given):
    def __init__(self, option_strings, dest, default=False, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=default, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, True, option_string)


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
    g = p.add_argument_group("decoding", "each member decodes with its recipe (`tie-lite models`: its authors' "
                                         "settings) where these flags are not given; a flag given sets every member")
    g.add_argument("--gen-length", action=Given, type=whole, default=DEFAULTS["gen_length"], metavar="N")
    g.add_argument("--block-size", action=Given, type=whole, default=DEFAULTS["block_size"], metavar="N")
    g.add_argument("--steps", action=Given, type=whole, default=None, metavar="N", help="default: gen-length (one token a step)")
    g.add_argument("--temperature", action=Given, type=number, default=0.0, metavar="T", help="0 = greedy")
    g.add_argument("--unmask", action=Given, default="low_confidence",
                   help="low_confidence | threshold | topk | margin | entropy | random, Dream's names "
                        "maskgit_plus | topk_margin | entropy, llada2 (LLaDA2's threshold decoding: every "
                        "position above --threshold, at least the step's share of the block) and fast_dllm_v2 "
                        "(a block's first position alone, then its sub-blocks left to right, every position above "
                        "--threshold and at least one a step)")
    g.add_argument("--schedule", action=Given, default="blocks",
                   help="blocks: LLaDA's semi-autoregressive blocks (default); dream: Dream's diffusion_generate "
                        "schedule (linspace(1, eps) transfer counts over the whole generation, no blocks; a TIE "
                        "round then spans the whole generation)")
    g.add_argument("--eps", action=Given, type=number, default=1e-3, metavar="EPS", help="last timestep of --schedule dream")
    g.add_argument("--cache", action=Given, default=DEFAULTS["cache"],
                   help="block KV cache: dual (default: the committed prefix's and the masked suffix's keys and values "
                        "reused within a block) | prefix (the prefix's only) | none (exact, as the reference "
                        "samplers compute); refreshed at every block boundary, where relays land")
    g.add_argument("--threshold", action=Given, type=number, default=0.9, metavar="TAU", help="confidence for --unmask threshold")
    g.add_argument("--topk", action=Given, type=whole, default=2, metavar="K", help="tokens a step for --unmask topk")
    g.add_argument("--edit-threshold", action=Given, type=number, default=None, metavar="E",
                   help="LLaDA2.1's token editing: a committed token of the current block is replaced by a different "
                        "top-1 token more probable than E (a LLaDA2.1 member's recipe: 0.9; off for the others)")
    g.add_argument("--edit-steps", action=Given, type=whole, default=16, metavar="N",
                   help="with --edit-threshold: at most N more passes over a block once it has no masks (16)")
    g.add_argument("--sub-block", action=Given, type=whole, default=8, metavar="N",
                   help="with --unmask fast_dllm_v2: a block's sub-blocks of N positions are decoded left to right (8)")
    g.add_argument("--seed", dest="decode_seed", type=whole, default=0, metavar="S",
                   help="sampling seed (temperature > 0); the same meaning in every command")
    g.add_argument("--answer-length", action=Given, type=whole, default=DEFAULTS["answer_length"], metavar="A",
                   help="answer positions after the 'Answer:' marker")
    g.add_argument("--free", action=GivenSwitch, help="free-form layout: no answer marker in the canvas (the hub "
                                                      "families' own layout)")
    g.add_argument("--member-option", action="append", default=[], metavar="NAME:KEY=VALUE",
                   help="a decode setting for one member, over its recipe and the flags above, e.g. "
                        "--member-option dream-7b-instruct:steps=128 (KEY: any flag of this group, - or _)")


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


def recipe_field(dest: str) -> str | None:
    """The DecodeSettings field a decode flag's destination sets where a recipe may set it (--free: the layout's
    answer_length); None for the others."""
    from tie_lite.engine.sampler import RECIPE_KEYS  # deferred: the sampler loads torch

    field = "answer_length" if dest == "free" else dest
    return field if field in RECIPE_KEYS else None


def given_fields(args) -> frozenset[str]:
    """The DecodeSettings fields the user's flags set (the others are each member's recipe)."""
    return frozenset(filter(None, map(recipe_field, getattr(args, "decode_given", None) or ())))


def member_options(args) -> tuple:
    """--member-option NAME:KEY=VALUE, each value read as its flag reads it: ((name, ((field, value), ...)), ...)."""
    specs = getattr(args, "member_option", None) or []
    if not specs:
        return ()
    from tie_lite.runtime.registry import member_names  # deferred (torch), as every settings builder here

    probe = Parser(prog="--member-option")
    add_decode_args(probe)
    actions = {a.dest: a for a in probe._actions if recipe_field(a.dest)}
    names = member_names(args.model or []) if args.model else member_names(default_models())
    options: dict[str, dict] = {}
    for spec in specs:
        name, sep, setting = str(spec).rpartition(":")
        key, eq, value = setting.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not eq or not name:
            raise UserError(f"--member-option '{shown(spec)}' is not NAME:KEY=VALUE; e.g. --member-option "
                            f"{names[0]}:steps=32")
        if name not in names:
            raise UserError(f"--member-option names '{shown(name)}', which is not a member; the members are "
                            f"{', '.join(names)}")
        if key not in actions:
            raise UserError(f"--member-option {shown(name)}: unknown setting '{shown(key)}'; use one of "
                            f"{', '.join(sorted(actions))}")
        action = actions[key]
        if key == "free":
            if value.strip().lower() not in ("true", "1", "false", "0"):
                raise UserError(f"--member-option {shown(name)}:free takes true or false")
            options.setdefault(name, {})["answer_length"] = (None if value.strip().lower() in ("true", "1")
                                                             else DEFAULTS["answer_length"])
            continue
        text = value.strip()
        if key == "edit_threshold" and text.lower() in ("none", "off", ""):
            parsed = None
        else:
            try:
                parsed = action.type(text) if action.type is not None else text
            except argparse.ArgumentTypeError as exc:
                raise UserError(f"--member-option {shown(name)}:{key}: {exc}") from None
        options.setdefault(name, {})[recipe_field(key)] = parsed
    return tuple((name, tuple(values.items())) for name, values in options.items())


def default_models() -> tuple[str, ...]:
    from tie_lite.runtime.registry import DEFAULT_ENSEMBLE  # deferred (torch), as every settings builder here

    return DEFAULT_ENSEMBLE


def decode_settings(args):
    from tie_lite.engine.sampler import DecodeSettings  # deferred: the sampler loads torch

    block_size = args.block_size
    given = given_fields(args)
    if "block_size" not in given and args.model and all(map(uniform_noise, args.model)):
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
        sub_block=args.sub_block,
        given=given,
        member_options=member_options(args),
    )
    settings.validate()
    return settings


def decode_report(decode) -> dict:
    """The request's decode settings for --json: the values, which of them the user gave (the others are each
    member's recipe: `member_settings` says what ran) and the options given per member."""
    values = {k: v for k, v in vars(decode).items() if k not in ("given", "member_options")}
    return values | {"steps": decode.total_steps, "given": sorted(decode.given or ()),
                     "member_options": {name: dict(options) for name, options in decode.member_options}}


HUB_BIDIRECTIONAL = ("llada", "dream", "llada-moe")  # families whose default block cache is an approximation


def settings_notes(members, decode) -> list[str]:
    """What the flags did not do, said once on stderr after a run (never before an error's one line): settings
    given for every member (`decode.given`) that some member's sampler does not read (they apply to the others; a
    uniform-noise member, DiffusionGemma, runs its checkpoint's own sampler), and a default cache that is
    approximate for a hub family. --json and the API's trace report per member what ran (`member_settings`)."""
    from tie_lite.engine.recipe import settings_for, unused, why_unused  # deferred: the engine loads torch

    given = sorted(set(decode.given or ()) - {"gen_length", "answer_length"})  # every member reads these
    idle: dict[str, list[str]] = {}  # flag -> "member (why)" for each member that does not read it
    approximate = []  # hub members on an approximate cache they did not ask for
    for m in members:
        settings = settings_for(m, decode)
        for key in unused(m, settings, given):
            idle.setdefault(key, []).append(f"{m.name} ({why_unused(m, settings, key)})")
        if (getattr(m, "caches", False) and not getattr(m, "block_causal", False) and settings.cache != "none"
                and getattr(getattr(m, "family", None), "name", "") in HUB_BIDIRECTIONAL):
            approximate.append(m.name)
    notes = [f"tie-lite: note: --{key.replace('_', '-')} does not apply to {'; '.join(who)}" for key, who in idle.items()]
    # the default cache where it is not exact, for a hub family (the shipped members were measured with it)
    if approximate and "cache" not in given:
        notes.append(f"tie-lite: note: the default --cache {decode.cache} is approximate for {', '.join(approximate)} "
                     f"(keys and values reused within a block, as Fast-dLLM does); --cache none decodes as the "
                     f"authors' code does")
    return notes


def say_notes(members, decode) -> None:
    for note in settings_notes(members, decode):
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
