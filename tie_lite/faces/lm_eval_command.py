"""`tie-lite lm-eval ARGS...`: lm-evaluation-harness's own command line with the `tie-lite` model registered and
`--model tie-lite` as its default; every lm-eval flag passes through (--tasks, --include_path, --limit,
--output_path, --model_args, ...). lm-eval discovers no third-party models by itself, so this is how its command
reaches tie-lite (the Fast-dLLM and dllm evaluation scripts call cli_evaluate() the same way)."""

from __future__ import annotations

import sys

from tie_lite.errors import UserError

SUBCOMMANDS = ("run", "ls", "validate")  # lm-eval's own; anything else is `run`'s flags


def lm_eval_argv(args: list[str]) -> list[str]:
    """lm-eval's arguments: `run` when no subcommand is named, and `--model tie-lite` unless a model is named."""
    args = list(args)
    if not args or args[0] not in SUBCOMMANDS + ("-h", "--help"):
        args.insert(0, "run")
    if args[0] == "run" and not any(a == "--model" or a.startswith("--model=") for a in args):
        args[1:1] = ["--model", "tie-lite"]
    return args


def run_lm_eval(args: list[str]) -> int:
    try:
        from lm_eval.__main__ import cli_evaluate  # deferred: lm-eval is an optional extra, heavy to import
    except ImportError:
        raise UserError("lm-eval is not installed; pip install 'tie-lite[lm-eval]'") from None
    import tie_lite.faces.lm_eval_model  # noqa: F401  deferred with lm-eval: importing it registers `tie-lite`

    saved = sys.argv
    sys.argv = ["tie-lite lm-eval", *lm_eval_argv(args)]
    try:
        cli_evaluate()
    except SystemExit as exc:  # lm-eval's argparse and its own exits
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    finally:
        sys.argv = saved
    return 0


def add_lm_eval_parser(sub) -> None:
    # Listed for `tie-lite --help`; main() hands `tie-lite lm-eval ...` to run_lm_eval before parsing, so that
    # lm-eval's flags (and its --help) reach lm-eval untouched.
    sub.add_parser("lm-eval", help="run lm-evaluation-harness on tie-lite (--model tie-lite by default; "
                                   "pip install 'tie-lite[lm-eval]')", add_help=False)
