"""tie-lite command line: generate | eval | plan | models | chat | serve."""

from __future__ import annotations

import argparse
import json
import os
import sys

from tqdm import tqdm

from tie_lite.checks import check_text, one_line
from tie_lite.engine.events import RoundScores, StepFrame
from tie_lite.errors import UserError
from tie_lite.faces.chat.command import add_chat_parser
from tie_lite.faces.eval import add_eval_parser
from tie_lite.faces.options import (
    Parser,
    add_decode_args,
    add_model_args,
    add_tie_args,
    decode_settings,
    load_settings,
    plan_tokens,
    quiet_libraries,
    tie_settings,
)
from tie_lite.faces.plan import add_plan_parser
from tie_lite.families import FAMILIES
from tie_lite.faces.serve import add_serve_parser
from tie_lite.runtime.registry import DEFAULT_ENSEMBLE, ENTRIES, resolve
from tie_lite.runtime.session import Ensemble
from tie_lite.tasks import TASKS


def cmd_generate(args) -> int:
    check_text(args.prompt)
    decode, tie = decode_settings(args), tie_settings(args)
    load = load_settings(args)
    loading = tqdm(total=len(args.model or [0, 0]), desc="loading", unit="model", file=sys.stderr, leave=False,
                   disable=not sys.stderr.isatty())
    ensemble = Ensemble(load, on_load=lambda spec: (loading.set_postfix_str(spec), loading.update(0)),
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
    for entry in ENTRIES.values():
        flag = " (default)" if entry.name in DEFAULT_ENSEMBLE else ""
        print(f"{entry.name:24} {resolve(entry.name)[1]}  -- {entry.about}{flag}")
    print("\nfamilies and their authors' decoding settings (pass them as flags; an ensemble shares one setting):")
    for family in FAMILIES:
        settings = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in family.defaults) or "tie-lite's own defaults"
        settings += f" ({family.defaults_note})" if family.defaults_note else ""
        print(f"  {family.name:8} model_type {', '.join(family.model_types):20} {settings}")
    return 0


def build_parser() -> Parser:
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

    add_eval_parser(sub)
    add_plan_parser(sub)
    add_chat_parser(sub)
    add_serve_parser(sub)
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
        print(f"tie-lite: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tie-lite: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug of ours: still one line, the traceback only on request
        if os.environ.get("TIE_LITE_DEBUG"):
            raise
        print(f"tie-lite: internal error ({type(exc).__name__}: {one_line(exc)[:200]}); set TIE_LITE_DEBUG=1 for "
              f"the traceback and please report it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
