"""tie-lite command line: generate | eval | plan | models | chat | serve | lm-eval.

Parsing imports nothing heavy: `tie-lite --help`, a command's --help and argument errors answer without
torch. Each command imports the engine and runtime when it runs.

Output is never lost quietly: a reader that goes away (`| head`) ends the command quietly, as other Unix
tools end, with the 128+SIGPIPE status; a write that fails (a full disk) or a closed standard output is a
one-line error with a non-zero status; SIGTERM stops a command as Ctrl+C does (eval keeps what it decided).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys

from tqdm import tqdm

from tie_lite.checks import check_text, one_line, shown, shown_path
from tie_lite.errors import UserError
from tie_lite.faces.chat.command import add_chat_parser
from tie_lite.faces.eval import add_eval_parser
from tie_lite.faces.lm_eval_command import add_lm_eval_parser, run_lm_eval
from tie_lite.faces.options import (
    DEFAULTS,
    HUB_BIDIRECTIONAL,
    Parser,
    add_decode_args,
    add_model_args,
    add_tie_args,
    apply_threads,
    decode_report,
    decode_settings,
    load_settings,
    plan_tokens,
    quiet_libraries,
    say_notes,
    tie_settings,
)
from tie_lite.faces.plan import add_plan_parser
from tie_lite.faces.progress import Progress

# The shipped members' example prompts (tie_lite/tasks' examples; tests/test_cli.py keeps the two equal): the
# tasks import the engine, which --help must not load.
EXAMPLES = ("What is (23+41)*7?", "Compute (23+41)*7 step by step.", "What is 37+85?", "What is 64*7?",
            "What is 23*4+17*5?", "Compute 23*4+17*5 step by step.", "What is 23*4?", "What is 92+85?")
SERVE_HELP = "an OpenAI-compatible API server (batched, streaming TIE)"
EXIT_SIGPIPE = 128 + signal.SIGPIPE  # what a shell shows for a tool ended by a closed pipe


# --- output -------------------------------------------------------------------------------------------


class OutputFailed(Exception):
    """Standard output could not be written (other than a reader that went away)."""


class GuardedOutput:
    """Standard output whose failed writes say which stream failed: `OutputFailed` instead of a bare OSError.
    A closed pipe stays a BrokenPipeError, which ends the command quietly."""

    def __init__(self, stream):
        self._stream = stream

    def _guard(self, call, *args):
        try:
            return call(*args)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputFailed(exc.strerror or str(exc)) from None

    def write(self, text):
        return self._guard(self._stream.write, text)

    def flush(self):
        return self._guard(self._stream.flush)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def discard_stdout() -> None:
    """After a failed write: point the stdout descriptor at /dev/null, so that the interpreter's last flush of
    what is still buffered fails no more (it would print a second error at exit)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.__stdout__.fileno())
    except (OSError, AttributeError, ValueError):  # not a real descriptor (e.g. captured in a test)
        pass


# --- generate -----------------------------------------------------------------------------------------


def read_prompt(arg: str) -> str:
    """PROMPT, or with `-` all of standard input (one prompt, its final newline dropped)."""
    if arg != "-":
        return check_text(arg)
    try:
        if sys.stdin.isatty():  # a person would wait for a prompt nobody asked for
            raise UserError("generate - reads the prompt from standard input; pipe it in, e.g. "
                            "echo \"What is (23+41)*7?\" | tie-lite generate -")
        text = sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError:
        raise UserError("the prompt on standard input is not valid UTF-8 text; save it as UTF-8") from None
    except (OSError, AttributeError, ValueError):  # closed, or not a real stream
        raise UserError("generate - reads the prompt from standard input, which cannot be read here; pass the "
                        "prompt as an argument") from None
    return check_text(text.rstrip("\r\n"), "the prompt on standard input")


def read_prompts(path: str) -> list[dict]:
    """--prompts FILE (or - for standard input): JSON Lines, one object with a "prompt" text per line; blank
    lines are skipped. Returns [{"line": N, "prompt": text, "id": ...}] or a UserError naming file and line."""
    where = "standard input" if path == "-" else shown_path(path)
    try:
        data = sys.stdin.buffer.read() if path == "-" else open(os.path.expanduser(path), "rb").read()
    except (OSError, AttributeError, ValueError) as exc:
        raise UserError(f"--prompts {where} cannot be read ({getattr(exc, 'strerror', None) or shown(exc)}); give a "
                        f"JSON Lines file with one {{\"prompt\": ...}} per line") from None
    prompts = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        at = f"--prompts {where} line {number}"
        try:
            item = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise UserError(f"{at} is not valid UTF-8 text; save the file as UTF-8") from None
        except json.JSONDecodeError as exc:
            raise UserError(f"{at} is not JSON ({exc.msg} at column {exc.colno}); write one object per line, e.g. "
                            f"{{\"prompt\": \"What is (23+41)*7?\"}}") from None
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
            raise UserError(f"{at} has no \"prompt\" text; write one object per line, e.g. "
                            f"{{\"prompt\": \"What is (23+41)*7?\"}}")
        try:
            check_text(item["prompt"])
        except UserError as exc:
            raise UserError(f"{at}: {exc}") from None
        prompts.append({"line": number, "prompt": item["prompt"]} | ({"id": item["id"]} if "id" in item else {}))
    if not prompts:
        raise UserError(f"--prompts {where} holds no prompt; write one {{\"prompt\": ...}} object per line")
    return prompts


def result_fields(result) -> dict:
    return {"text": result.text, "answer": result.answer, "members": result.members,
            "final_member": result.final_member, "steps": result.steps, "rounds": result.rounds,
            "leader_changes": result.leader_changes, "responses": result.responses, "token_ids": result.token_ids,
            "member_settings": result.member_settings}


def refuse_off_task(load, prompt: str) -> None:
    """The one rule every face applies (faces/client_settings.py): the shipped arithmetic members are not
    asked what they cannot answer."""
    from tie_lite.faces.client_settings import off_task_reply  # deferred: it reads the engine's settings (torch)

    reply = off_task_reply(load, prompt)
    if reply is not None:
        raise UserError(reply)


def cmd_generate(args) -> int:
    import torch  # deferred: only a command that computes loads torch (see options.py)

    from tie_lite.engine.events import RoundScores, StepFrame  # deferred: the engine loads torch (see options.py)
    from tie_lite.runtime.session import Ensemble  # deferred: loads torch

    if args.member_token_ids and not args.json and args.prompts is None:
        raise UserError("--member-token-ids adds to the --json object: give --json too")
    if (args.prompt is None) == (args.prompts is None):
        raise UserError("give one PROMPT, - to read it from standard input, or --prompts FILE.jsonl (not both)")
    if args.prompts is not None and args.prompt is None:
        return generate_many(args)
    prompt = read_prompt(args.prompt)
    decode, tie = decode_settings(args), tie_settings(args)
    load = load_settings(args)
    terminal = sys.stderr is not None and sys.stderr.isatty()  # a single prompt is short: bars on a terminal only
    loading = tqdm(total=len(load.models), desc="loading", unit="model", file=sys.stderr, leave=False,
                   disable=not terminal)
    ensemble = Ensemble(load, on_load=lambda spec: (loading.set_postfix_str(spec), loading.update(0)),
                        plan_tokens=plan_tokens(args))
    loading.update(loading.total - loading.n)
    loading.close()
    bar = tqdm(desc="decoding", unit="step", file=sys.stderr, leave=False, disable=not terminal)

    def on_event(event):
        if isinstance(event, StepFrame):
            bar.update(1)
        elif isinstance(event, RoundScores):
            bar.set_postfix_str(f"round {event.round + 1} leader {event.leader}")

    refuse_off_task(load, prompt)  # after every flag and model check, as the chat asks its loaded members
    result = ensemble.run([{"role": "user", "content": prompt}], decode, tie, on_event)
    bar.close()
    say_notes(ensemble.members, decode)
    total = ensemble.load_seconds + result.seconds
    if args.json:
        out = result_fields(result) | {
            **({"response_token_ids": result.response_token_ids} if args.member_token_ids else {}),
            "settings": {"decode": decode_report(decode), "tie": vars(tie),
                         "threads": torch.get_num_threads()},
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


def generate_many(args) -> int:
    """--prompts: every prompt checked before anything loads, then decoded in batches (the eval's driver: the
    canvases for one member stack into one forward), one JSON line out per prompt, in the file's order."""
    from tie_lite.engine.tie import tie_process  # deferred: the engine loads torch
    from tie_lite.runtime.drive import run_many  # deferred: the runtime loads torch
    from tie_lite.runtime.session import Ensemble  # deferred: loads torch

    prompts = read_prompts(args.prompts)
    where = "standard input" if args.prompts == "-" else shown_path(args.prompts)
    decode, tie = decode_settings(args), tie_settings(args)
    load = load_settings(args)
    ensemble = Ensemble(load, plan_tokens=plan_tokens(args))
    messages = [[{"role": "user", "content": item["prompt"]}] for item in prompts]
    for item, conversation in zip(prompts, messages):  # every line checked before any decodes
        try:
            ensemble.check_prompt(conversation, decode)
            refuse_off_task(load, item["prompt"])
        except UserError as exc:
            raise UserError(f"--prompts {where} line {item['line']}: {exc}") from None
    longest = max(messages, key=lambda m: len(m[0]["content"]))
    batch = ensemble.batch_limit(longest, decode, tie)
    progress = Progress(len(prompts), "generate", "prompt")
    try:
        for start in range(0, len(prompts), batch):  # written and flushed batch by batch, in the file's order
            chunk = range(start, min(start + batch, len(prompts)))
            processes = [tie_process(ensemble.scheduler, messages[k], decode, tie) for k in chunk]
            results = run_many(processes, ensemble.scheduler, on_done=lambda k, res: progress.update(),
                               max_batch=batch)
            for k, result in zip(chunk, results):
                extra = {"response_token_ids": result.response_token_ids} if args.member_token_ids else {}
                print(json.dumps(prompts[k] | result_fields(result) | extra))
            sys.stdout.flush()
    finally:
        progress.close()
    say_notes(ensemble.members, decode)
    return 0


def recipe_flags(recipe: dict) -> str:
    """A recipe as the flags that would set it (`--free` for no answer marker)."""
    words = []
    for key, value in recipe.items():
        if key == "answer_length":
            words.append("--free" if value is None else f"--answer-length {value}")
        elif key == "stop_at_eos":  # no flag of its own: the family's sampler stops so
            words += ["and stops after the block holding an end-of-text"] if value else []
        else:
            words.append(f"--{key.replace('_', '-')} {value:g}" if isinstance(value, float) else
                         f"--{key.replace('_', '-')} {value}")
    return " ".join(words)


def cache_words(family) -> str:
    """What the default --cache is for a family's members: exact for block diffusion, approximate otherwise."""
    if family.native_module is None or family.uniform_noise:
        return "no KV cache: --cache does not apply"
    if family.block_causal:
        return f"default --cache {DEFAULTS['cache']} is exact (finished blocks never see later ones)"
    if family.name in HUB_BIDIRECTIONAL:
        return f"default --cache {DEFAULTS['cache']} is approximate, as Fast-dLLM's; --cache none decodes as the authors do"
    return f"default --cache {DEFAULTS['cache']}, measured on the validation seed"


def cmd_models(args) -> int:
    from tie_lite.families import FAMILIES  # deferred: the families load torch
    from tie_lite.runtime.registry import DEFAULT_ENSEMBLE, ENTRIES, resolve  # deferred: the registry loads torch

    for entry in ENTRIES.values():
        flag = " (default)" if entry.name in DEFAULT_ENSEMBLE else ""
        print(f"{entry.name:24} {resolve(entry.name)[1]}  -- {entry.about}{flag}")
    print("\nfamilies and what their members decode with when no flag says otherwise (their authors' settings; a flag "
          "sets every member, --member-option NAME:KEY=VALUE one):")
    for family in FAMILIES:
        settings = recipe_flags(dict(family.recipe)) or "tie-lite's own defaults (what the shipped members were trained on)"
        print(f"  {family.name:16} model_type {', '.join(family.model_types):20} {settings}")
        about = family.recipe_source + ("; " if family.recipe_source else "") + cache_words(family)
        print(f"  {'':16} ({about})")
    return 0


# --- the parser ---------------------------------------------------------------------------------------


def add_serve(sub, command: str | None) -> None:
    """`serve`'s own flags only when it is the command: its module loads fastapi and torch."""
    if command != "serve":
        sub.add_parser("serve", help=SERVE_HELP, add_help=False)
        return
    from tie_lite.faces.serve import add_serve_parser  # deferred: fastapi, uvicorn and torch, for `serve` alone

    add_serve_parser(sub)


def build_parser(command: str | None = None) -> Parser:
    """The whole parser; `command` (the one on the command line, if known) is the one whose parser must be
    complete: every other one is too, but `serve`'s."""
    examples = "\n".join(f"  tie-lite generate \"{ex}\"" for ex in EXAMPLES)
    parser = Parser(prog="tie-lite", description="Ensembles of masked diffusion language models with TIE.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    g = sub.add_parser("generate", help="answer one prompt (or many: --prompts)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example prompts for the shipped models:\n" + examples +
                              "\n  echo \"What is 37+85?\" | tie-lite generate -\n"
                              "  tie-lite generate --prompts questions.jsonl > answers.jsonl")
    g.add_argument("prompt", nargs="?", metavar="PROMPT", help="the prompt; - reads it from standard input")
    g.add_argument("--prompts", metavar="FILE",
                   help="answer many prompts, batched: JSON Lines with one {\"prompt\": ...} object per line (- for "
                        "standard input); prints one JSON object per prompt, a line each, in the same order")
    g.add_argument("--json", action="store_true", help="print one JSON object and nothing else on stdout")
    g.add_argument("--member-token-ids", action="store_true",
                   help="with --json or --prompts: each member's generated token ids too (response_token_ids)")
    add_model_args(g)
    add_decode_args(g)
    add_tie_args(g)
    g.set_defaults(func=cmd_generate)

    add_eval_parser(sub)
    add_plan_parser(sub)
    add_chat_parser(sub)
    add_serve(sub, command)
    add_lm_eval_parser(sub)
    m = sub.add_parser("models", help="list known models")
    m.set_defaults(func=cmd_models)
    return parser


def command_in(argv: list[str]) -> str | None:
    """The command named on the command line (the first word that is not an option), before parsing."""
    return next((a for a in argv if not a.startswith("-")), None)


# --- signals ------------------------------------------------------------------------------------------

_received: list[int] = []


def on_terminate(signum, frame):
    """SIGTERM as Ctrl+C: the command stops where it is, with what it has written kept (eval's --out)."""
    _received.append(signum)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if sys.stdout is None:  # started with standard output closed (`>&-`): nothing it prints could be seen
        print("tie-lite: error: standard output is closed; redirect it to a file or a pipe (e.g. > out.txt)",
              file=sys.stderr or sys.__stderr__)
        return 1
    parser = build_parser(command_in(argv))
    lm_eval = bool(argv) and argv[0] == "lm-eval"  # lm-eval parses its own flags (lm_eval_command.py)
    args = None if lm_eval else parser.parse_args(argv)
    stdout = sys.stdout
    sys.stdout = GuardedOutput(stdout)
    terminate = None
    try:
        terminate = signal.signal(signal.SIGTERM, on_terminate)
    except ValueError:  # not the main thread (e.g. a test runner's worker): SIGTERM keeps its handler
        pass
    try:
        quiet_libraries()
        if hasattr(args, "threads"):
            apply_threads(args)
        code = run_lm_eval(argv[1:]) if lm_eval else args.func(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:  # the reader went away (`| head`): end quietly, as other tools do
        discard_stdout()
        return EXIT_SIGPIPE
    except OutputFailed as exc:
        discard_stdout()
        print(f"tie-lite: error: cannot write to standard output ({exc}); free space or choose another "
              f"destination", file=sys.stderr)
        return 1
    except UserError as exc:
        print(f"tie-lite: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        why = one_line(exc) or "interrupted"
        print(f"tie-lite: {why}", file=sys.stderr)
        return 128 + (_received[-1] if _received else signal.SIGINT)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG):  # a file we write, e.g. eval --out
            print(f"tie-lite: error: cannot write {shown_path(exc.filename or 'a file')} ({exc.strerror}); free space "
                  f"or choose another destination", file=sys.stderr)
            return 1
        return internal_error(exc)
    except Exception as exc:
        return internal_error(exc)
    finally:
        sys.stdout = stdout
        if terminate is not None:
            signal.signal(signal.SIGTERM, terminate)


def internal_error(exc: Exception) -> int:
    """A bug of ours: still one line, the traceback only on request."""
    if os.environ.get("TIE_LITE_DEBUG"):
        raise exc
    print(f"tie-lite: internal error ({type(exc).__name__}: {one_line(exc)[:200]}); set TIE_LITE_DEBUG=1 for "
          f"the traceback and please report it", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
