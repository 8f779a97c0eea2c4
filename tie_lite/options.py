"""The options every face shares (generate, eval, plan, chat) and the one place user input is checked.

Each check runs before anything heavy (no model loads, no evaluation starts) and fails with a
`UserError`: one line saying what was wrong and what to do. The CLI prints it and exits 2; the chat
shows it. Nothing here imports a face, so cli.py, eval.py, plan.py and ui/ import this module only.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import warnings
from pathlib import Path

from .errors import UserError

DEFAULTS = dict(gen_length=64, block_size=16, answer_length=8, interval=16, score="verify", select="lowest-tcc",
                cache="dual")  # cache: as accurate as none on the validation seed, 2.5-3x faster there
QUANTS = ("none", "8bit", "4bit")
BACKENDS = ("bitsandbytes", "quanto")
DEVICES = ("cpu", "cuda", "cuda:N", "auto")
DTYPES = ("auto", "float32", "bfloat16", "float16")
SEED_LIMIT = 2**64  # torch generators take seeds in [0, 2**64)
MAX_LENGTH = 1 << 20  # positions: far past any context, small enough that arithmetic on sizes stays finite
PLOT_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")
TRACE_FORMATS = ("jsonl", "json")


class Parser(argparse.ArgumentParser):
    """argparse that reports bad input on one line, exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see `{self.prog} --help`)\n")


def one_line(text: str) -> str:
    return " ".join(str(text).split())


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


def shown(text) -> str:
    """User text as it can be printed in one line (no lone surrogates, no control characters, bounded)."""
    text = str(text).encode("utf-8", "replace").decode("utf-8")
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= 40 else text[:37] + "..."


def check_text(text, what: str = "the prompt") -> str:
    """A prompt or chat message: a string of valid Unicode (no lone surrogates, e.g. from invalid UTF-8 on
    the command line), not empty."""
    if not isinstance(text, str):
        raise UserError(f"{what} must be text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"{what} is not valid UTF-8 text; re-type it or save it as UTF-8") from None
    if "\x00" in text:
        raise UserError(f"{what} contains a NUL character; remove it")
    if not text.strip():
        raise UserError(f"{what} is empty; pass some text, e.g. \"What is (23+41)*7?\"")
    return text


def check_seed(seed: int, flag: str = "--seed") -> int:
    if not 0 <= seed < SEED_LIMIT:
        raise UserError(f"{flag} {seed} is outside 0..2**64-1; pass a smaller non-negative whole number")
    return seed


def check_lengths(lengths: dict[str, int | None]) -> None:
    """{flag: positions}: none of them past MAX_LENGTH (None: not given)."""
    for flag, value in lengths.items():
        if value is not None and value > MAX_LENGTH:
            raise UserError(f"{flag} {value} is far beyond any model's context; use at most {MAX_LENGTH}")


def check_choice(value, choices, flag: str) -> str:
    if value not in choices:
        raise UserError(f"unknown {flag} '{shown(value)}'; use one of {', '.join(choices)}")
    return value


def check_select(select) -> list[str]:
    """--select as [RULE] or [best-model, NAME]; anything after that is an error, not ignored."""
    from .tie import SELECTIONS

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


def check_output(path: str | None, formats: tuple[str, ...], flag: str) -> None:
    """A file the run will write at the end: its folder must exist and be writable and its extension known,
    checked before the run so that no result is lost at the end."""
    if path is None:
        return
    p = Path(path).expanduser()
    ext = p.suffix.lower().lstrip(".")
    if ext not in formats:
        raise UserError(f"{flag} '{shown(path)}' has an unknown extension; end it with "
                        f"{' or '.join('.' + f for f in formats)}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"{flag} '{shown(path)}': the folder {shown(parent)} does not exist; create it first")
    if p.is_dir() or not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UserError(f"{flag} '{shown(path)}' cannot be written; choose another file")


def check_load_args(args) -> None:
    """The load options, checked before anything loads."""
    from .scheduler import parse_size

    check_choice(args.quant, QUANTS, "--quant")
    check_choice(args.quant_backend, BACKENDS, "--quant-backend")
    member_devices(args)
    check_choice(args.dtype, DTYPES, "--dtype")
    parse_size(args.max_memory)
    for spec in args.model or ():
        check_text(spec, "--model")


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


def add_decode_args(p: argparse.ArgumentParser, seed_flag: str = "--seed") -> None:
    g = p.add_argument_group("decoding")
    g.add_argument("--gen-length", type=whole, default=DEFAULTS["gen_length"], metavar="N")
    g.add_argument("--block-size", type=whole, default=DEFAULTS["block_size"], metavar="N")
    g.add_argument("--steps", type=whole, default=None, metavar="N", help="default: gen-length (one token a step)")
    g.add_argument("--temperature", type=number, default=0.0, metavar="T", help="0 = greedy")
    g.add_argument("--unmask", default="low_confidence",
                   help="low_confidence | threshold | topk | margin | entropy | random, and Dream's names "
                        "maskgit_plus | topk_margin | entropy")
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
    g.add_argument(seed_flag, dest="decode_seed", type=whole, default=0, metavar="S", help="sampling seed (temperature > 0)")
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


def check_device(device: str) -> str:
    if not re.fullmatch(r"cpu|cuda(:\d+)?|auto", device):
        raise UserError(f"unknown --device '{shown(device)}'; use one of {', '.join(DEVICES)}")
    return device


def member_devices(args) -> list[str]:
    """--device: one for every member, or one per --model in order."""
    devices = [check_device(d) for d in args.device or ["cpu"]]
    from .registry import DEFAULT_ENSEMBLE

    models = len(args.model or DEFAULT_ENSEMBLE)
    if len(devices) not in (1, models):
        raise UserError(f"--device was given {len(devices)} times for {models} models; give it once for all "
                        "members or once per --model, in the same order")
    return devices


def load_settings(args):
    from .registry import DEFAULT_ENSEMBLE
    from .session import LoadSettings

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
    )


def decode_settings(args):
    from .sampler import DecodeSettings

    settings = DecodeSettings(
        gen_length=args.gen_length,
        block_size=args.block_size,
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
    )
    settings.validate()
    return settings


def default_score(members: int) -> str:
    """verify with two or more members (best on the validation seed); one member is plain decoding."""
    return DEFAULTS["score"] if members > 1 else "tcc"


def tie_settings(args):
    from .scoring import check_score
    from .tie import TieSettings

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
    from .scoring import needs_cross_model

    members = len(args.model or [0, 0])
    score = args.score or default_score(members)
    return (64 + args.gen_length) * (members if needs_cross_model(score, members, check_select(args.select)[0]) else 1)


def quiet_libraries() -> None:
    """Library chatter (weight-loading bars, bitsandbytes casts, accelerate's placement notes, hub retries)
    would bury our own output: one line per problem is ours to print."""
    import logging

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    for name in ("bitsandbytes", "accelerate", "huggingface_hub", "httpx", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass
