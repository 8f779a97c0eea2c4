"""`tie-lite eval --data FILE`: the flags that say how to read a data file (fields, checker, benchmark preset),
and the task and answer layout built from them. eval.py runs the task as it runs a generated one."""

from __future__ import annotations

from tie_lite.checks import check_choice
from tie_lite.engine.answer import PAPER_ANSWER_MARKER
from tie_lite.errors import UserError
from tie_lite.faces.options import DEFAULTS, number, whole
from tie_lite.tasks.benchmarks import BENCHMARKS, get_benchmark
from tie_lite.tasks.checkers import CHECKERS
from tie_lite.tasks.data import FORMATS, DataTask, Fields, load_task


def add_data_args(e) -> None:
    g = e.add_argument_group("questions from a data file (instead of --task)")
    g.add_argument("--data", metavar="FILE", help="a local JSONL (.jsonl, .jsonl.gz), JSON, CSV or parquet file, one "
                                                  "question a record; --n takes the first N (default: all)")
    g.add_argument("--benchmark", help=f"read --data in a benchmark's published format, with its answer layout and "
                                       f"checker: {', '.join(BENCHMARKS)}")
    g.add_argument("--data-format", help=f"{' | '.join(FORMATS)} (default: from the file's suffix)")
    g.add_argument("--question-field", default="question", metavar="NAME", help="field holding the question (question)")
    g.add_argument("--answer-field", default="answer", metavar="NAME", help="field holding the gold answer (answer)")
    g.add_argument("--choices-field", metavar="NAME", help="field holding a list of choices (or {text, label}), listed "
                                                           "under the question as A. B. C. ...")
    g.add_argument("--test-field", default="test", metavar="NAME", help="code: field with the test code (test)")
    g.add_argument("--entry-point-field", default="entry_point", metavar="NAME",
                   help="code: field naming the function the tests call (entry_point)")
    g.add_argument("--checker", default="exact",
                   help="number (last number) | choice (a choice's label) | exact (default) | regex (the gold is a "
                        "pattern the whole answer must match) | math (\\boxed{} or the answer, by math-verify) | code")
    g.add_argument("--answer-marker", metavar="TEXT",
                   help=f"text between the reasoning and the answer in the canvas (default '{PAPER_ANSWER_MARKER}', a "
                        "benchmark's own layout with --benchmark); --free: none, the whole response is checked")
    g.add_argument("--run-code", action="store_true",
                   help="allow the code checker to run the models' code (a subprocess: time, memory and file-size "
                        "limits, no network)")
    g.add_argument("--code-timeout", type=number, default=10.0, metavar="S", help="seconds each code check may run")
    g.add_argument("--code-memory", type=whole, default=1024, metavar="MB", help="memory each code check may use")


def data_task(args) -> DataTask:
    """The task --data names, and args.answer_length / args.answer_marker set to its layout (a benchmark's
    unless given). Call before decode_settings."""
    if args.task:
        raise UserError("give either --task (generated problems) or --data FILE, not both")
    if args.benchmark is not None:
        bench = get_benchmark(args.benchmark)
        checker, marker = bench.checker, bench.marker
        if args.answer_length is None:
            args.answer_length = bench.answer_tokens(args.gen_length)
        make_item, name = bench.read, bench.name
    else:
        checker = check_choice(args.checker, CHECKERS, "--checker")
        marker, make_item, name = PAPER_ANSWER_MARKER, None, None
    if args.answer_length is None:
        args.answer_length = DEFAULTS["answer_length"]
    marker = args.answer_marker or marker
    args.answer_marker = None if args.free else marker
    if args.code_timeout <= 0 or args.code_memory < 64:
        raise UserError("--code-timeout must be positive and --code-memory at least 64 (MB)")
    fields = Fields(question=args.question_field, answer=args.answer_field, choices=args.choices_field,
                    test=args.test_field, entry_point=args.entry_point_field)
    task = load_task(args.data, fields=fields, checker=checker, marker=args.answer_marker, fmt=args.data_format,
                     make_item=make_item, name=name, run_code=args.run_code)
    task.code_time_limit, task.code_memory_limit = args.code_timeout, args.code_memory << 20
    return task
