"""`tie-lite lm-eval ARGS...`: lm-evaluation-harness's own command line with the `tie-lite` model registered and
`--model tie-lite` as its default; every lm-eval flag passes through (--tasks, --include_path, --limit,
--output_path, --model_args, ...). lm-eval discovers no third-party models by itself, so this is how its command
reaches tie-lite (the Fast-dLLM and dllm evaluation scripts call cli_evaluate() the same way)."""

from __future__ import annotations

import glob
import sys
from pathlib import Path

from tie_lite.checks import one_line, shown, shown_path
from tie_lite.errors import UserError

SUBCOMMANDS = ("run", "ls", "validate")  # lm-eval's own; anything else is `run`'s flags
LISTINGS = {"list": "tasks", "list_groups": "groups", "list_subtasks": "subtasks", "list_tags": "tags"}


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
        from lm_eval._cli import HarnessCLI  # deferred: lm-eval is an optional extra, heavy to import
        from lm_eval.utils import setup_logging  # deferred along with lm-eval
    except ImportError:
        raise UserError("lm-eval is not installed; pip install 'tie-lite[lm-eval]'") from None
    import tie_lite.faces.lm_eval_model  # noqa: F401  deferred with lm-eval: importing it registers `tie-lite`

    saved = sys.argv
    sys.argv = ["tie-lite lm-eval", *lm_eval_argv(args)]
    try:  # lm-eval's cli_evaluate(), with tie-lite's checks between reading the flags and running them
        setup_logging()
        cli = HarnessCLI()
        parsed = cli.parse_args()
        if getattr(parsed, "command", None) == "run":
            check_run(parsed)
        try:
            cli.execute(parsed)
        except ValueError as exc:  # a task name that only lm-eval's index could judge (a pattern, say)
            if str(exc).startswith("Tasks not found:"):
                raise UserError(unknown_tasks_line(str(exc).partition(":")[2].strip().split(", "))) from None
            raise
    except SystemExit as exc:  # lm-eval's argparse and its own exits
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    finally:
        sys.argv = saved
    return 0


def check_run(parsed) -> None:
    """`lm-eval run`'s tasks and tie-lite's model arguments, checked before lm-eval indexes its tasks (half a
    minute and more) and logs a line: an unknown task or a bad model argument is one line, exit 2."""
    from lm_eval.config.evaluate_config import EvaluatorConfig  # deferred with lm-eval (an optional extra)
    from lm_eval.utils import simple_parse_args_string  # deferred with lm-eval

    from tie_lite.faces.lm_eval_model import check_model_arguments  # deferred: imports lm-eval and torch

    config: dict = {}
    if getattr(parsed, "config", None):
        try:
            config = EvaluatorConfig.load_yaml_config(parsed.config)
        except Exception as exc:  # missing, unreadable, not YAML, not a mapping
            raise UserError(f"--config {shown_path(parsed.config)} cannot be used ({one_line(exc)[:200]}); give a "
                            f"YAML file of lm-eval settings") from None
    tasks = parsed.tasks or config.get("tasks")
    if not tasks:
        raise UserError("name the tasks to run with --tasks, e.g. --tasks gsm8k; list them with "
                        "`tie-lite lm-eval ls tasks`")
    names = tasks.split(",") if isinstance(tasks, str) else [str(t) for task in tasks for t in str(task).split(",")]
    listing = [n for n in names if n.strip() in LISTINGS]
    if listing and not (parsed.include_path or config.get("include_path")):
        raise UserError(f"this lm-eval lists its tasks with `tie-lite lm-eval ls {LISTINGS[listing[0].strip()]}` "
                        f"(--tasks {shown(listing[0].strip())} was older lm-eval's spelling)")
    files = [n.strip() for n in names if n.strip().endswith(".yaml") and not glob.glob(n.strip())]
    if files:
        raise UserError(f"--tasks {shown_path(files[0])}: no such task file; give the path of a task YAML file, "
                        f"or a task's name (list them with `tie-lite lm-eval ls tasks`)")
    unknown = unknown_tasks(names, parsed.include_path or config.get("include_path"))
    if unknown:
        raise UserError(unknown_tasks_line(unknown))
    if (parsed.model or config.get("model")) != "tie-lite":
        return
    given = config.get("model_args") or {}
    given = simple_parse_args_string(given) if isinstance(given, str) else dict(given)
    given |= parsed.model_args or {}
    if getattr(parsed, "trust_remote_code", False):  # lm-eval adds it to the model arguments itself
        given["trust_remote_code"] = True
    extra = {k: getattr(parsed, k, None) for k in ("batch_size", "max_batch_size", "device")}
    check_model_arguments(given | {k: v for k, v in extra.items() if v is not None})


def unknown_tasks(names: list[str], include_path) -> list[str]:
    """The task names that no task file holds. lm-eval names a task, group or tag only in its task files (task:,
    group:, tag:, in .yaml files and the extensionless files they include), so a name that is not a word of their
    text is unknown without building lm-eval's index (reading the files takes a second; the index, half a minute
    and more). A pattern (`mmlu_*`), a folder, a task file (.yaml) or a name found in the text is left to lm-eval
    to judge."""
    import lm_eval  # deferred with lm-eval: only its location is wanted here

    roots = [Path(lm_eval.__file__).parent / "tasks"]
    if include_path:
        roots += [Path(p) for p in (include_path if isinstance(include_path, (list, tuple)) else [include_path])]
    unknown, text = [], None
    for name in dict.fromkeys(n.strip() for n in names if n.strip()):
        if name.endswith(".yaml") or any(c in name for c in "*?[") or Path(name).is_dir():
            continue
        if text is None:
            text = b"\n".join(_read(path) for root in roots if root.is_dir() for path in sorted(root.rglob("*"))
                              if path.suffix in ("", ".yaml", ".yml") or path.name.endswith("yaml"))
        if not _mentions(text, name.encode("utf-8", "surrogateescape")):
            unknown.append(name)
    return unknown


WORD = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-") | frozenset(range(128, 256))


def _mentions(text: bytes, name: bytes) -> bool:
    """Whether `name` is a whole word of `text` (not a part of a longer name)."""
    start = text.find(name)
    while start != -1:
        end = start + len(name)
        if (start == 0 or text[start - 1] not in WORD) and (end == len(text) or text[end] not in WORD):
            return True
        start = text.find(name, start + 1)
    return False


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes() if path.is_file() and path.stat().st_size <= 1 << 20 else b""
    except OSError:  # unreadable: lm-eval skips it too
        return b""


def unknown_tasks_line(names: list[str]) -> str:
    return (f"unknown lm-eval task{'s' if len(names) > 1 else ''} {', '.join(repr(shown(n)) for n in names)}; list "
            f"the tasks with `tie-lite lm-eval ls tasks` (with --include_path DIR for a folder of your own task files)")


def add_lm_eval_parser(sub) -> None:
    # Listed for `tie-lite --help`; main() hands `tie-lite lm-eval ...` to run_lm_eval before parsing, so that
    # lm-eval's flags (and its --help) reach lm-eval untouched.
    sub.add_parser("lm-eval", help="run lm-evaluation-harness on tie-lite (--model tie-lite by default; "
                                   "pip install 'tie-lite[lm-eval]')", add_help=False)
