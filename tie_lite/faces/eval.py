"""`tie-lite eval`: accuracy tables for single members, the post-generation ensemble, TIE and the oracle
bounds, on generated problems with exact checkers or on the questions of a data file (data_eval.py)."""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from tie_lite.checks import check_choice, check_output, check_seed, shown, shown_path
from tie_lite.errors import UserError
from tie_lite.faces.data_eval import add_data_args, data_task
from tie_lite.faces.options import (
    DEFAULTS,
    PLOT_FORMATS,
    TRACE_FORMATS,
    add_decode_args,
    add_model_args,
    add_tie_args,
    decode_settings,
    default_score,
    load_settings,
    plan_tokens,
    say_notes,
    tie_settings,
    uniform_noise,
    whole,
)
from tie_lite.faces.progress import Progress
from tie_lite.faces.report import report_lines, summarise

MAX_PROBLEMS = 100_000
BOUNDS = ("oracle-relay", "oracle-pick")  # diagnostics, labelled as bounds
POSTGEN_INTERVAL = 10**9  # one round covering the whole generation


def method_settings(method: str, names: list[str], tie):
    """(member indices, TieSettings) for a method name: a member alone is TIE with M = 1."""
    if method in names:
        return [names.index(method)], replace(tie, score="tcc", select="lowest-tcc")
    everyone = list(range(len(names)))
    if len(names) < 2 and (method in ("postgen", "tie") + BOUNDS or method.startswith("tie:")):
        raise UserError(f"method '{method}' ensembles members; give at least two --model")
    if method == "tie":
        return everyone, tie
    if method.startswith("tie:"):  # TIE with another round score, e.g. tie:verify
        return everyone, replace(tie, score=method[4:])
    if method == "postgen":
        return everyone, replace(tie, interval=POSTGEN_INTERVAL)
    if method == "oracle-relay":
        return everyone, replace(tie, score="oracle", select="oracle")
    if method == "oracle-pick":
        return everyone, replace(tie, interval=POSTGEN_INTERVAL, score="tcc", select="oracle")
    raise UserError(f"unknown method '{method}'; use member names ({', '.join(names)}), postgen, tie, tie:SCORE, "
                    f"{', '.join(BOUNDS)}")


def evaluate(ensemble, task, n: int, seed: int, methods: list[str], decode, tie, out=None, progress=None,
             phrasing: str = "templates", done: dict | None = None, run_id: str | None = None):
    """Accuracy per method on n problems of `task` asked in the `phrasing` set's templates (the same problems
    for every set: only the wording differs). Each problem's record is written to `out` (and flushed) as soon
    as it is decided; `done` ({(method, index): record}, from an earlier run's --out) is not decoded again,
    and the figures come from the records, so a resumed run reports what an uninterrupted one would."""
    from tie_lite.engine.layout import TextState  # deferred: the engine loads torch (see options.py)
    from tie_lite.engine.tie import tie_process  # deferred: the engine loads torch
    from tie_lite.runtime.drive import run_many  # deferred: the runtime loads torch

    names = [m.name for m in ensemble.members]
    plans = {method: method_settings(method, names, tie) for method in methods}
    problems = task.generate(n, seed, phrasing=phrasing)
    done = done or {}
    results, traces = {}, {}
    for method, (indices, settings) in plans.items():
        records = {k: r for (m, k), r in done.items() if m == method}
        todo = [k for k in range(n) if k not in records]
        if todo:
            ensemble.scheduler.select(indices)
            longest = max((problems[k] for k in todo), key=lambda p: len(p.prompt))
            batch = ensemble.batch_limit([{"role": "user", "content": longest.prompt}], decode, settings)
            processes = [
                tie_process(ensemble.scheduler, [{"role": "user", "content": problems[k].prompt}], decode, settings,
                            gold=TextState(problems[k].reasoning, True, problems[k].answer, True))
                for k in todo
            ]
            last = [time.perf_counter()]

            def finished(j, res, method=method, todo=todo, records=records, last=last):
                k, p = todo[j], problems[todo[j]]
                now = time.perf_counter()
                check = task.check(p, res.text)
                if method == "oracle-pick" and not check.correct:  # the checker may accept what text matching did not
                    check = next((c for c in (task.check(p, r) for r in res.responses.values()) if c.correct), check)
                records[k] = {"method": method, "index": k, "prompt": p.prompt, "output": res.text,
                              "answer": check.answer, "gold": p.answer, "correct": check.correct,
                              "stages": check.stages, "final_member": res.final_member, "rounds": res.rounds,
                              "steps": res.steps, "leader_changes": res.leader_changes,
                              "seconds": round(now - last[0], 6), "run": run_id}
                last[0] = now  # problems finish in batches: the wall time between finishes sums to the method's
                if out is not None:
                    out.write(json.dumps(records[k]) + "\n")
                    out.flush()
                if progress is not None:
                    progress(method)

            try:
                run_many(processes, ensemble.scheduler, on_done=finished, max_batch=batch)
            finally:
                ensemble.scheduler.select(None)
        results[method], traces[method] = figures([records[k] for k in range(n)], method in BOUNDS)
    return results, traces


def figures(records: list[dict], bound: bool) -> tuple[dict, dict]:
    """One method's row of the table and its leader-change trace, from its per-problem records."""
    n = len(records)
    stage_hits, stage_seen, change_at = defaultdict(int), defaultdict(int), defaultdict(int)
    relays = 0
    for r in records:
        for stage, ok in r["stages"].items():
            stage_seen[stage] += 1
            stage_hits[stage] += ok
        leaders = [x["leader"] for x in r["rounds"]]
        relays += max(0, len(leaders) - 1)
        for k in range(1, len(leaders)):
            change_at[k] += leaders[k] != leaders[k - 1]
    changes = sum(r["leader_changes"] for r in records)
    row = {
        "accuracy": round(100.0 * sum(bool(r["correct"]) for r in records) / n, 2),
        "stages": {s: round(100.0 * stage_hits[s] / stage_seen[s], 2) for s in sorted(stage_seen)},
        "mean_steps": round(sum(r["steps"] for r in records) / n, 2),
        "seconds": round(sum(r["seconds"] for r in records) / n, 4),
        "change_rate": round(100.0 * changes / relays, 2) if relays else None,
        "bound": bound,
        "items": [bool(r["correct"]) for r in records],  # item by item: intervals and head-to-head (report.py)
    }
    return row, {k: change_at[k] / n for k in sorted(change_at)}


def run_fingerprint(task: str, seed: int, phrasing: str, members: list[str], decode, tie) -> str:
    """What makes two runs' records interchangeable: the problems, the members and every setting."""
    settings = {k: sorted(v) if isinstance(v, frozenset) else v for k, v in vars(decode).items()}  # in a fixed order
    text = json.dumps([task, seed, phrasing, members, repr(sorted(settings.items())), repr(tie)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_done(path: str, run_id: str, methods: list[str], n: int, prompts: list[str]) -> dict:
    """{(method, index): record} of what an earlier run with the same settings wrote to `path`. A last line cut
    short (the run was killed mid-write) is dropped from the file; anything else that does not fit is an error."""
    file = Path(path).expanduser()
    if not file.exists():
        return {}
    data = file.read_bytes()
    if data and not data.endswith(b"\n"):  # a line cut short by a kill: drop it and decode that problem again
        keep = data.rfind(b"\n") + 1
        with open(file, "r+b") as f:
            f.truncate(keep)
        data = data[:keep]
    done = {}
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        where = f"--resume: {shown_path(path)} line {number}"
        try:
            record = json.loads(line)
            key = (record["method"], record["index"])
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{where} is not a record of tie-lite eval; give the --out file of the run to "
                            f"resume, or drop --resume to start over") from None
        if record.get("run") != run_id:
            raise UserError(f"{where} comes from a run with another task, seed, phrasing, members or settings; "
                            f"resume with the same flags, or write to another --out")
        if key[0] not in methods or not isinstance(key[1], int) or not 0 <= key[1] < n \
                or record.get("prompt") != prompts[key[1]]:
            raise UserError(f"{where} holds method '{shown(key[0])}' problem {shown(key[1])}, which this run "
                            f"(--methods, --n) does not ask; resume with the same flags")
        done[key] = record
    return done


def table(results: dict) -> str:
    lines = [f"{'method':22} {'accuracy':>8} {'95% interval':>12} {'steps':>7} {'s/problem':>9} {'change%':>8}  stages"]
    for method, r in results.items():
        label = method + (" (bound)" if r["bound"] else "")
        rate = "-" if r["change_rate"] is None else f"{r['change_rate']:.1f}"
        stages = " ".join(f"{k}={v:.1f}" for k, v in r["stages"].items())
        interval = "{:.1f}-{:.1f}".format(*r["interval95"]) if "interval95" in r else "-"
        lines.append(f"{label:22} {r['accuracy']:8.1f} {interval:>12} {r['mean_steps']:7.1f} {r['seconds']:9.3f} {rate:>8}  {stages}".rstrip())
    return "\n".join(lines)


def plot(results: dict, traces: dict, path: str, title: str) -> None:
    import matplotlib  # only when a plot is asked for: pyplot's start-up is slow

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the Agg backend (no display)

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    methods = list(results)
    accuracy = [results[m]["accuracy"] for m in methods]
    bounds = [results[m].get("interval95", [a, a]) for m, a in zip(methods, accuracy)]  # the 95% interval as whiskers
    bars = ax.bar(range(len(methods)), accuracy, color=["#bbbbbb" if results[m]["bound"] else "#4477aa" for m in methods],
                  yerr=[[a - b[0] for a, b in zip(accuracy, bounds)], [b[1] - a for a, b in zip(accuracy, bounds)]],
                  capsize=3, error_kw={"elinewidth": 0.8})
    for bar, m in zip(bars, methods):
        if results[m]["bound"]:
            bar.set_hatch("//")
        ax.annotate(f"{results[m]['accuracy']:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(methods)), [m + ("\n(bound)" if results[m]["bound"] else "") for m in methods],
                  rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("accuracy %")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    for m, trace in traces.items():
        if trace and not results[m]["bound"]:
            ax2.plot([k + 1 for k in trace], [100 * v for v in trace.values()], marker="o", label=m)
    ax2.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax2.set_xlabel("round (relay after it)")
    ax2.set_ylabel("% problems whose leader changed")
    ax2.set_title("when leaders change over decoding")
    if ax2.lines:
        ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_eval_parser(sub) -> None:
    e = sub.add_parser("eval", help="accuracy of members, postgen, TIE and oracle bounds on a task")
    e.add_argument("--task", help="task name (see --list-tasks)")
    e.add_argument("--n", type=whole, default=None, help="problems per method (default 100; with --data every record)")
    e.add_argument("--problem-seed", type=whole, default=2, metavar="S",
                   help="which problems (1 = validation, 2 = evaluation; default 2)")
    e.add_argument("--methods", help="comma list: member names, postgen, tie, tie:SCORE (e.g. tie:verify), "
                                     "oracle-relay, oracle-pick (default: every member, postgen and tie)")
    e.add_argument("--json", action="store_true")
    e.add_argument("--out", help="write one JSON line per problem and method, each as soon as it is decided")
    e.add_argument("--resume", action="store_true",
                   help="keep what --out already holds from an interrupted run with the same flags and decode only "
                        "the rest; the figures are those of an uninterrupted run")
    e.add_argument("--plot", help="write a PNG: accuracy per method and when leaders change")
    e.add_argument("--phrasing", default="templates",
                   help="how the problems are asked (the same problems in each): templates (the six the shipped "
                        "members were trained on), varied (many templates, spaces, words for + and *, casing), "
                        "held-out (templates no training uses, written like varied)")
    e.add_argument("--list-tasks", action="store_true", help="print the task names and exit")
    add_model_args(e)
    add_decode_args(e)
    add_tie_args(e)
    add_data_args(e)
    e.set_defaults(func=cmd_eval, answer_length=None)  # None: the task's or benchmark's own answer length


def cmd_eval(args) -> int:
    from tie_lite.runtime.registry import member_names  # deferred: the runtime loads torch (see options.py)
    from tie_lite.runtime.session import Ensemble  # deferred: loads torch
    from tie_lite.tasks import TASKS, get_task  # deferred: the tasks use the engine's layout (torch)
    from tie_lite.tasks.phrasing import PHRASINGS  # deferred with the tasks

    if args.list_tasks:
        print("\n".join(TASKS))
        return 0
    if args.data:  # the file is read and checked before anything loads
        task = data_task(args)
        args.n = min(args.n or len(task.items), len(task.items))
    elif not args.task:
        raise UserError("give --task NAME (see `tie-lite eval --list-tasks`) or --data FILE")
    else:
        task = get_task(args.task)
        args.n = 100 if args.n is None else args.n
        args.answer_length = args.answer_length or DEFAULTS["answer_length"]
    # the task's checker reads an answer: its layout is every member's, whatever their recipes say
    args.decode_given = set(getattr(args, "decode_given", None) or ()) | {"answer_length"}
    check_choice(args.phrasing, tuple(PHRASINGS), "--phrasing")
    if not 1 <= args.n <= MAX_PROBLEMS:
        raise UserError(f"--n must be between 1 and {MAX_PROBLEMS}")
    check_seed(args.problem_seed, "--problem-seed")
    if args.resume and not args.out:
        raise UserError("--resume continues the run recorded in --out; give --out FILE.jsonl")
    check_output(args.out, TRACE_FORMATS, "--out")
    check_output(args.plot, PLOT_FORMATS, "--plot")
    tokens = plan_tokens(args)
    if args.score is None:
        args.score = default_score(len(args.model or [0, 0]))
    scores = [s.strip() for s in args.score.split(",") if s.strip()] or [args.score]
    args.score = scores[0]  # --score a,b compares round scores: `tie` becomes tie:a, tie:b
    decode, tie = decode_settings(args), tie_settings(args)
    if args.data and args.answer_marker is not None:
        decode = replace(decode, answer_marker=args.answer_marker)
    for score in scores[1:]:  # each compared score must be one tie-lite knows, before anything loads
        tie_settings(argparse.Namespace(**(vars(args) | {"score": score})))
    load = load_settings(args)
    if args.decode_seed and args.temperature == 0 and not any(map(uniform_noise, load.models)):
        raise UserError("--seed is the sampling seed (as in generate) and does nothing at temperature 0 for these "
                        "members; the problems' seed is --problem-seed (1 = validation, 2 = evaluation)")
    names = member_names(load.models)
    methods = args.methods.split(",") if args.methods else names + (["postgen", "tie"] if len(names) > 1 else [])
    if len(scores) > 1:
        methods = [x for m in methods for x in ([f"tie:{s}" for s in scores] if m == "tie" else [m])]
    if args.data and "oracle-relay" in methods:
        raise UserError("oracle-relay compares trajectories with a gold worked solution, which a data file does not "
                        "have in the members' words; leave it out of --methods (oracle-pick works)")
    for method in methods:  # before anything loads: a typo in --methods costs nothing
        method_settings(method, names, tie)[1].validate(names if method not in names else [method])
    run_id = run_fingerprint(task.name, args.problem_seed, args.phrasing, list(load.models), decode, tie)
    done = {}
    if args.resume:
        prompts = [p.prompt for p in task.generate(args.n, args.problem_seed, phrasing=args.phrasing)]
        done = read_done(args.out, run_id, methods, args.n, prompts)
    ensemble = Ensemble(load, plan_tokens=tokens)
    if args.data:  # every question within every member's context before any decodes (a generated task's are short)
        for item in task.items[: args.n]:
            try:
                ensemble.check_prompt([{"role": "user", "content": item.prompt}], decode)
            except UserError as exc:
                raise UserError(f"{shown_path(args.data)} {item.where}: {exc}") from None
    progress = Progress(args.n * len(methods), "eval", "problem")
    progress.skip(len(done))
    out = open(args.out, "a" if args.resume else "w") if args.out else None
    try:
        results, traces = evaluate(ensemble, task, args.n, args.problem_seed, methods, decode, tie, out,
                                   progress=progress.update, phrasing=args.phrasing, done=done, run_id=run_id)
    except KeyboardInterrupt:
        if out is not None:
            out.close()
            out = None
            raise Interrupted(f"interrupted; what was decided is in {shown_path(args.out)}: add --resume to the same "
                              f"command to continue") from None
        raise
    finally:
        progress.close()
        if out is not None:
            out.close()
    items = {method: r.pop("items") for method, r in results.items()}
    summary = summarise(results, items, names, traces)
    about = (f"{task.name} ({args.phrasing} phrasings)" if not args.data
             else f"{args.benchmark} ({args.data})" if args.benchmark else args.data)
    if args.plot:
        plot(results, traces, args.plot, f"{about}, n={args.n}"
             + ("" if args.data else f", problem seed {args.problem_seed}") + f", score {tie.score}")
    if args.json:
        print(json.dumps({"task": task.name, "n": args.n, "problem_seed": args.problem_seed,
                          "phrasing": args.phrasing,
                          "settings": {"score": tie.score, "select": tie.select, "interval": tie.interval,
                                       "cache": decode.cache, "rounds": rounds(ensemble.members, decode, tie)},
                          "results": results} | summary, indent=2))
    else:
        print(f"{about}: n={args.n}" + ("" if args.data else f", problem seed {args.problem_seed}")
              + f", score {','.join(scores)}, select {tie.select}, cache {decode.cache}")
        print(table(results))
        print("\n".join(report_lines(results, summary)))
        print("a TIE round: " + ", ".join(f"{name} {r['blocks']} block{'s' * (r['blocks'] > 1)} of {r['block_size']} "
                                          f"({r['steps']} steps)" for name, r in rounds(ensemble.members, decode,
                                                                                      tie).items()))
    say_notes(ensemble.members, decode)
    return 0


def rounds(members, decode, tie) -> dict:
    """What one TIE round covers for each member: --interval of its own steps, rounded up to whole blocks of its own
    (each decodes with its own recipe)."""
    from tie_lite.engine.recipe import settings_for  # deferred: the engine loads torch
    from tie_lite.engine.tie import round_blocks, unique_names  # deferred: the engine loads torch

    out = {}
    for name, m in zip(unique_names([m.name for m in members]), members):
        d = settings_for(m, decode)
        blocks = round_blocks(tie, d)
        out[name] = {"blocks": blocks, "block_size": d.layout_block_size, "steps": blocks * d.steps_per_block}
    return out


class Interrupted(KeyboardInterrupt):
    """Ctrl+C or SIGTERM during an eval whose records are safe in --out: the CLI prints this message."""
