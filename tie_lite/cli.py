"""tie-lite command line: generate | eval | plan | models | chat."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from .errors import UserError

DEFAULTS = dict(gen_length=64, block_size=16, answer_length=8, interval=16, score="verify", select="lowest-tcc")


class Parser(argparse.ArgumentParser):
    """argparse that reports bad input on one line, exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models")
    g.add_argument("--model", action="append", metavar="ID_OR_PATH",
                   help="a shipped name (tiny-sp, tiny-bpe), a registry name, a folder or a hub id; repeat for "
                        "an ensemble (default: the shipped pair)")
    g.add_argument("--quant", default="none", help="none | 8bit | 4bit (default none)")
    g.add_argument("--quant-backend", default="bitsandbytes", help="bitsandbytes | quanto (quanto: pip install 'tie-lite[quanto]')")
    g.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    g.add_argument("--max-memory", metavar="SIZE", help="device memory budget, e.g. 10GiB or 600MB")
    g.add_argument("--trust-remote-code", action="store_true", help="allow LLaDA/Dream checkpoints to run their own code")
    g.add_argument("--allow-pickle", action="store_true", help="allow pickle .bin weights (can run arbitrary code)")


def add_decode_args(p: argparse.ArgumentParser, seed_flag: str = "--seed") -> None:
    g = p.add_argument_group("decoding")
    g.add_argument("--gen-length", type=_int, default=DEFAULTS["gen_length"], metavar="N")
    g.add_argument("--block-size", type=_int, default=DEFAULTS["block_size"], metavar="N")
    g.add_argument("--steps", type=_int, default=None, metavar="N", help="default: gen-length (one token a step)")
    g.add_argument("--temperature", type=_number, default=0.0, metavar="T", help="0 = greedy")
    g.add_argument("--unmask", default="low_confidence",
                   help="low_confidence | threshold | topk | margin | entropy | random")
    g.add_argument("--threshold", type=_number, default=0.9, metavar="TAU", help="confidence for --unmask threshold")
    g.add_argument("--topk", type=_int, default=2, metavar="K", help="tokens a step for --unmask topk")
    g.add_argument(seed_flag, dest="decode_seed", type=_int, default=0, metavar="S", help="sampling seed (temperature > 0)")
    g.add_argument("--answer-length", type=_int, default=DEFAULTS["answer_length"], metavar="A",
                   help="answer positions after the 'Answer:' marker")
    g.add_argument("--free", action="store_true", help="free-form layout: no answer marker in the canvas")


def add_tie_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ensemble (TIE)")
    g.add_argument("--interval", type=_int, default=DEFAULTS["interval"], metavar="N",
                   help="steps per round before scoring and relay (rounded up to whole blocks)")
    g.add_argument("--score", default=None,
                   help="tcc | top1 | entropy | margin | verify (default: verify with two or more members, "
                        "which measured best on the validation seed; a single member needs no score)")
    g.add_argument("--select", default=DEFAULTS["select"], nargs="+", metavar="RULE",
                   help="final selection: lowest-tcc | verify | most-selected | best-model NAME")


def load_settings(args):
    from .registry import DEFAULT_ENSEMBLE
    from .session import LoadSettings

    return LoadSettings(
        models=tuple(args.model or DEFAULT_ENSEMBLE),
        quant=args.quant,
        backend=args.quant_backend,
        device=args.device,
        trust_remote_code=args.trust_remote_code,
        allow_pickle=args.allow_pickle,
        max_memory=args.max_memory,
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
    )
    settings.validate()
    return settings


def _select(args) -> list[str]:
    """--select as [RULE] or [RULE, NAME] (best-model takes a member name)."""
    return args.select if isinstance(args.select, list) else [args.select]


def tie_settings(args):
    from .tie import TieSettings

    if args.score is None:  # one member is plain decoding: no round score to compute
        args.score = DEFAULTS["score"] if len(args.model or [0, 0]) > 1 else "tcc"
    select = _select(args)
    if args.interval == 0:
        raise UserError("--interval must be at least 1 step")
    return TieSettings(interval=args.interval, score=args.score, select=select[0],
                       select_model=select[1] if len(select) > 1 else None)


def plan_tokens(args) -> int:
    """Positions one forward computes, for the load-time memory plan (cross-model scores stack M canvases)."""
    members = len(args.model or [0, 0])
    score = args.score or (DEFAULTS["score"] if members > 1 else "tcc")
    from .scoring import needs_cross_model

    return (64 + args.gen_length) * (members if needs_cross_model(score, members, _select(args)[0]) else 1)


def quiet_libraries() -> None:
    """Library chatter (weight-loading bars, bitsandbytes casts) would bury our own output."""
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    transformers.utils.logging.disable_progress_bar()


def cmd_generate(args) -> int:
    from tqdm import tqdm

    from .events import RoundScores, StepFrame
    from .session import Ensemble

    decode, tie = decode_settings(args), tie_settings(args)
    if not args.prompt.strip():
        raise UserError("the prompt is empty; pass some text, e.g. tie-lite generate \"What is (23+41)*7?\"")
    loading = tqdm(total=len(args.model or [0, 0]), desc="loading", unit="model", file=sys.stderr, leave=False,
                   disable=not sys.stderr.isatty())
    ensemble = Ensemble(load_settings(args), on_load=lambda spec: (loading.set_postfix_str(spec), loading.update(0)),
                        plan_tokens=plan_tokens(args))
    loading.update(loading.total - loading.n)
    loading.close()
    bar = tqdm(desc="decoding", unit="step", file=sys.stderr, leave=False, disable=not sys.stderr.isatty())

    def on_event(event):
        if isinstance(event, StepFrame):
            bar.update(1)
        elif isinstance(event, RoundScores):
            bar.set_postfix_str(f"round {event.round + 1} leader {event.leader}")

    result = ensemble.run([{"role": "user", "content": args.prompt}], decode, tie, on_event)
    bar.close()
    total = ensemble.load_seconds + result.seconds
    if args.json:
        out = {
            "text": result.text,
            "answer": result.answer,
            "members": result.members,
            "final_member": result.final_member,
            "steps": result.steps,
            "rounds": result.rounds,
            "leader_changes": result.leader_changes,
            "responses": result.responses,
            "settings": {"decode": vars(decode) | {"steps": decode.total_steps}, "tie": vars(tie)},
            "timings": {"total_s": round(total, 4), "load_s": round(ensemble.load_seconds, 4),
                        "decode_s": round(result.seconds, 4)},
            "memory": result.memory,
        }
        print(json.dumps(out, indent=2))
    else:
        print(result.text)
        who = f"{len(result.members)} members, final from {result.final_member}" if len(result.members) > 1 else result.members[0]
        print(f"-- {who}; {result.steps} forward passes; decode {result.seconds:.2f}s, load "
              f"{ensemble.load_seconds:.2f}s; peak memory {result.memory['peak_bytes'] / 2**20:.0f} MiB", file=sys.stderr)
    return 0


def cmd_models(args) -> int:
    from .registry import DEFAULT_ENSEMBLE, ENTRIES, resolve

    for entry in ENTRIES.values():
        flag = " (default)" if entry.name in DEFAULT_ENSEMBLE else ""
        print(f"{entry.name:24} {resolve(entry.name)[1]}  -- {entry.about}{flag}")
    return 0


def build_parser() -> Parser:
    from .tasks import TASKS

    examples = "\n".join(f"  tie-lite generate \"{ex}\"" for t in TASKS.values() for ex in t.examples)
    parser = Parser(prog="tie-lite", description="Ensembles of masked diffusion language models with TIE.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    g = sub.add_parser("generate", help="answer one prompt", formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example prompts for the shipped models:\n" + examples)
    g.add_argument("prompt")
    g.add_argument("--json", action="store_true", help="print one JSON object and nothing else on stdout")
    add_model_args(g)
    add_decode_args(g)
    add_tie_args(g)
    g.set_defaults(func=cmd_generate)

    from ui.cli import add_chat_parser

    from .eval import add_eval_parser
    from .plan import add_plan_parser

    add_eval_parser(sub)
    add_plan_parser(sub)
    add_chat_parser(sub)
    m = sub.add_parser("models", help="list known models")
    m.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_libraries()
    try:
        return args.func(args)
    except UserError as exc:
        print(f"tie-lite: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tie-lite: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
