#!/usr/bin/env python
"""Speed, memory and accuracy figures for tie-lite on the shipped members.

    python scripts/bench.py                      # full run (several minutes on 2 cores)
    python scripts/bench.py --quick              # CI smoke: the same figures at small sizes (< 3 min)
    python scripts/bench.py --json bench.json --plot docs/bench-growth.png --doc docs/BENCHMARKS.md
    python scripts/bench.py --from-json bench.json --doc docs/BENCHMARKS.md   # rewrite the doc only

Every figure is a ratio of two things measured in the same process, interleaved (A B, B A, ...), so
machine noise cancels as far as it can; the headline ratio is the median of the per-prompt ratios.

1. engine overhead: tie-lite's single-member decode (`Ensemble.run`, and the bare `Trajectory` loop)
   against `reference_decode` below, a minimal loop that applies LLaDA's sampler rules to the same
   model (full forward each step, family logit shift, greedy low-confidence remasking, the same blocks
   and steps, free layout). Outputs must match token for token.
2. ensemble overhead: TIE(tcc) against the sum of the members' single decodes of the same prompts,
   and the cross-model scores (top1, verify) against tcc.
3. acceleration: forward passes, time and accuracy (eval seed 2) for low_confidence vs threshold
   (tau 0.9) vs topk (k 2), for each member and for TIE.
4. memory: peak memory and wall time under the resident, swap and offload strategies (--max-memory).
5. growth: time per generated token as the generation grows (64..512) and as members grow (1..4).

Nothing here asserts on time; the goals are reported beside the figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from tie_lite.engine.sampler import DecodeSettings, Trajectory  # noqa: E402
from tie_lite.engine.tie import TieSettings  # noqa: E402
from tie_lite.runtime.session import Ensemble, LoadSettings  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("tiny-sp", "tiny-bpe")
GOALS = {
    "engine_overhead_ratio": ("<=", 1.05, "engine vs reference loop (identical output)"),
    "tie_overhead_ratio": ("<=", 1.10, "TIE(tcc) vs sum of single decodes"),
    "threshold_forward_reduction": (">=", 2.0, "threshold: fewer forward passes (TIE)"),
    "threshold_accuracy_delta": (">=", -1.0, "threshold: accuracy change, points (TIE)"),
    "swap_vs_resident_ratio": ("<=", 1.5, "swap vs resident wall time at ~60% budget"),
}

# Sizes: full run, and --quick (CI smoke, < 3 min on 2 quiet cores).
FULL = dict(prompts=8, repeats=5, eval_n=300, memory_requests=3, memory_repeats=3, memory_synthetic=512,
            growth_lengths=(64, 128, 256, 512), growth_members=(1, 2, 3, 4), growth_repeats=3)
QUICK = dict(prompts=3, repeats=3, eval_n=40, memory_requests=3, memory_repeats=2, memory_synthetic=None,
             growth_lengths=(64, 128, 256, 512), growth_members=(1, 2, 3, 4), growth_repeats=1)


# --- measuring --------------------------------------------------------------------------------------------


def now() -> float:
    return time.perf_counter()


def sync(device: torch.device | str = "cpu") -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter


def set_clock(name: str) -> None:
    """wall: elapsed time (what users feel; use it on a quiet machine). cpu: this process's CPU time, which
    other jobs' load inflates much less (with --threads 1 it counts the compute alone)."""
    global _clock
    _clock = CLOCKS[name]


def timed(fn, device="cpu"):
    sync(device)
    start = _clock()
    value = fn()
    sync(device)
    return _clock() - start, value


def interleaved(fns: dict, repeats: int, units: int = 1, device="cpu") -> dict[str, list[list[float]]]:
    """Time `fn(unit)` for every variant, unit (prompt) and repeat, rotating the order of the variants at
    every step so drifts in machine load hit every variant alike. Returns seconds[variant][repeat][unit]."""
    names = list(fns)
    times = {n: [[0.0] * units for _ in range(repeats)] for n in names}
    step = 0
    for r in range(repeats):
        for u in range(units):
            k = step % len(names)
            order = names[k:] + names[:k]
            if (step // len(names)) % 2:
                order = order[::-1]
            step += 1
            for n in order:
                times[n][r][u], _ = timed(lambda: fns[n](u), device)
    return times


def ratio_stats(num, den) -> dict:
    """num, den: seconds[repeat][unit]. The headline is the median of the per-(repeat, unit) ratios; also the
    ratio of the summed times and of the fastest repeats, and the spread of the pair ratios."""
    pairs = [a / b for ra, rb in zip(num, den) for a, b in zip(ra, rb) if b > 0]
    tot_n = [sum(r) for r in num]
    tot_d = [sum(r) for r in den]
    q = statistics.quantiles(pairs, n=4) if len(pairs) > 1 else [pairs[0]] * 3
    return {
        "ratio": round(statistics.median(pairs), 4),
        "ratio_of_totals": round(sum(tot_n) / sum(tot_d), 4),
        "ratio_of_min": round(min(tot_n) / min(tot_d), 4),
        "ratio_iqr": [round(q[0], 4), round(q[2], 4)],
        "pairs": len(pairs),
    }


def total(times) -> float:
    return sum(sum(r) for r in times)


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    import transformers

    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    try:
        import psutil

        info["ram_bytes"] = int(psutil.virtual_memory().total)
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_bytes"] = int(torch.cuda.get_device_properties(device).total_memory)
    return info


# --- prompts ----------------------------------------------------------------------------------------------


def task_prompts(task_name: str, n: int, seed: int = 2) -> list[list[dict]]:
    from tie_lite.tasks import get_task

    return [[{"role": "user", "content": p.prompt}] for p in get_task(task_name).generate(n, seed)]


# --- 1. the reference loop --------------------------------------------------------------------------------


@torch.no_grad()
def reference_decode(member, messages, gen_length: int, block_size: int, steps: int | None = None):
    """LLaDA's `generate` (greedy, low-confidence remasking), applied directly to the member's model.

    Canvas = prompt + gen_length masks; per block, steps // blocks steps; each step runs the full model
    on the whole canvas, reads position i's prediction at i (i - 1 for shifted families, as the family
    adapter says), and commits the most confident masked positions of the current block, the block's
    masks split evenly over its steps (remainder to the first steps). Differences from Fast-dLLM's
    `generate`, none of which change the output at temperature 0: the float64 softmax runs on the current
    block only (Fast-dLLM: over the whole canvas), and no Gumbel noise is drawn at temperature 0.
    Returns (token ids of the whole canvas, response text, forward passes)."""
    tok = member.tokenizer
    model = member.model
    mask_id = member.mask_id
    prompt = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                        add_special_tokens=False)
    steps = gen_length if steps is None else steps
    x = torch.full((1, len(prompt) + gen_length), mask_id, dtype=torch.long, device=member.device)
    x[0, : len(prompt)] = torch.tensor(prompt)
    blocks = gen_length // block_size
    per_block = steps // blocks
    forwards = 0
    for b in range(blocks):
        lo = len(prompt) + b * block_size
        hi = lo + block_size
        n = int((x[0, lo:hi] == mask_id).sum())
        counts = [n // per_block + (1 if i < n % per_block else 0) for i in range(per_block)]
        for count in counts:
            logits = model(input_ids=x).logits
            forwards += 1
            if member.shifted:  # Dream convention: position i's prediction sits at i - 1
                logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
            if count == 0:
                continue
            block_logits = logits[0, lo:hi]
            pred = block_logits.argmax(-1)
            conf = torch.softmax(block_logits.double(), dim=-1).gather(-1, pred[:, None])[:, 0]
            conf = torch.where(x[0, lo:hi] == mask_id, conf, torch.tensor(-math.inf, device=conf.device))
            chosen = torch.topk(conf, count).indices
            x[0, lo + chosen] = pred[chosen]
    eos = set(member.eos_ids)
    out = [t for t in x[0, len(prompt):].tolist() if t not in eos]
    return x[0].cpu(), tok.decode(out, skip_special_tokens=True).strip(), forwards


def engine_ids(ensemble, index: int, messages, decode: DecodeSettings):
    """tie-lite's single-member decode, returning its final canvas (read from the event stream)."""
    from tie_lite.engine.events import StepFrame

    last = {}

    def on_event(ev):
        if isinstance(ev, StepFrame):
            last["t"] = ev.trajectory

    result = ensemble.run(messages, decode, TieSettings(), on_event=on_event, members=[index])
    return last["t"].ids.clone(), result


def engine_overhead(ensemble, prompts, decode: DecodeSettings, repeats: int, log=print) -> dict:
    """Section 1: identical output first (every member, every prompt), then interleaved timings."""
    decode = replace(decode, answer_length=None, unmask="low_confidence", temperature=0.0, steps=None)
    device = ensemble.device
    per_member = {}
    all_identical = True
    for i, member in enumerate(ensemble.scheduler.loaded):
        mismatches = []
        for k, messages in enumerate(prompts):
            ids, result = engine_ids(ensemble, i, messages, decode)
            ref_ids, ref_text, ref_forwards = reference_decode(member, messages, decode.gen_length, decode.block_size)
            same = torch.equal(ids, ref_ids) and result.text == ref_text and result.steps == ref_forwards
            if not same:
                mismatches.append({"prompt": k, "engine": result.text, "reference": ref_text,
                                   "engine_forwards": result.steps, "reference_forwards": ref_forwards})
        all_identical &= not mismatches

        def run_engine(u, i=i):
            ensemble.run(prompts[u], decode, TieSettings(), members=[i])

        def run_trajectory(u, member=member):
            Trajectory.start(member, prompts[u], decode).run_blocks(decode, 10**9)

        def run_reference(u, member=member):
            reference_decode(member, prompts[u], decode.gen_length, decode.block_size)

        run_engine(0), run_reference(0)  # warm-up
        times = interleaved({"engine": run_engine, "trajectory": run_trajectory, "reference": run_reference},
                            repeats, len(prompts), device)
        forwards = repeats * len(prompts) * decode.total_steps
        per_member[member.name] = {
            "identical": not mismatches,
            "mismatches": mismatches[:3],
            "engine": ratio_stats(times["engine"], times["reference"]),
            "trajectory": ratio_stats(times["trajectory"], times["reference"]),
            "ms_per_forward": {k: round(1000 * total(v) / forwards, 3) for k, v in times.items()},
            "seconds": {k: [round(sum(r), 4) for r in v] for k, v in times.items()},
        }
        log(f"  engine overhead {member.name}: {per_member[member.name]['engine']['ratio']:.3f}x "
            f"(identical: {not mismatches})")
    ratios = [m["engine"]["ratio"] for m in per_member.values()]
    return {
        "ratio": round(max(ratios), 4),  # the worse member is the headline
        "identical": all_identical,
        "members": per_member,
        "settings": {"prompts": len(prompts), "repeats": repeats, "decode": asdict(decode)},
    }


# --- 2. ensemble overhead ---------------------------------------------------------------------------------


def tie_overhead(ensemble, prompts, decode: DecodeSettings, repeats: int, scores=("tcc", "top1", "verify"),
                 log=print) -> dict:
    """Section 2: TIE with each score vs the members' single decodes of the same prompts."""
    device = ensemble.device
    m = len(ensemble.scheduler.loaded)
    steps = {}

    def single(i):
        return lambda u: ensemble.run(prompts[u], decode, TieSettings(), members=[i])

    def tie(score):
        return lambda u: ensemble.run(prompts[u], decode, TieSettings(score=score))

    fns = {f"single:{mem.name}#{i}": single(i) for i, mem in enumerate(ensemble.scheduler.loaded)}
    fns.update({f"tie:{s}": tie(s) for s in scores})
    for name, fn in fns.items():  # warm-up, and forward counts (deterministic at temperature 0)
        results = [fn(u) for u in range(len(prompts))]
        steps[name] = sum(r.steps for r in results) / len(prompts)
        if name.startswith("tie:"):
            steps[name + ":rounds"] = sum(len(r.rounds) for r in results) / len(prompts)
    times = interleaved(fns, repeats, len(prompts), device)
    singles = [times[k] for k in fns if k.startswith("single:")]
    sum_singles = [[sum(per) for per in zip(*rows)] for rows in zip(*singles)]
    out = {
        "members": m,
        "tie_vs_singles": ratio_stats(times["tie:tcc"], sum_singles),
        "forwards_per_prompt": {k: round(v, 2) for k, v in steps.items()},
        "ms_per_forward": {k: round(1000 * total(times[k]) / (steps[k] * len(prompts) * repeats), 3) for k in fns},
        "seconds": {k: [round(sum(r), 4) for r in v] for k, v in times.items()},
        "settings": {"prompts": len(prompts), "repeats": repeats, "decode": asdict(decode), "interval": TieSettings().interval},
    }
    single_forwards = sum(steps[k] for k in fns if k.startswith("single:"))
    out["tie_forwards_vs_singles"] = round(steps["tie:tcc"] / single_forwards, 4)
    # TIE can need fewer forwards than the members alone (a relayed trajectory finishes later blocks for
    # everyone); time per forward separates the engine's ensemble overhead from that saving.
    single_s = sum(total(times[k]) for k in fns if k.startswith("single:"))
    out["tie_per_forward_vs_singles"] = round((total(times["tie:tcc"]) / steps["tie:tcc"]) / (single_s / single_forwards), 4)
    for s in scores:
        if s != "tcc":
            out[f"{s}_vs_tcc"] = ratio_stats(times[f"tie:{s}"], times["tie:tcc"])
            out[f"{s}_forwards_vs_tcc"] = round(steps[f"tie:{s}"] / steps["tie:tcc"], 4)
    log(f"  TIE(tcc) vs sum of singles: {out['tie_vs_singles']['ratio']:.3f}x; "
        + ", ".join(f"{s} vs tcc {out[f'{s}_vs_tcc']['ratio']:.3f}x" for s in scores if s != "tcc"))
    return out


# --- 3. acceleration --------------------------------------------------------------------------------------

POLICIES = {"low_confidence": {}, "threshold": {"threshold": 0.9}, "topk": {"topk": 2}}


def acceleration(ensemble, task_name: str, n: int, decode: DecodeSettings, seed: int = 2, log=print) -> dict:
    """Section 3: tie-lite's own eval (batched over problems) under each unmasking policy."""
    from tie_lite.faces.eval import evaluate
    from tie_lite.faces.options import DEFAULTS
    from tie_lite.tasks import get_task

    task = get_task(task_name)
    names = [mem.name for mem in ensemble.scheduler.loaded]
    methods = names + (["tie"] if len(names) > 1 else [])
    tie = TieSettings(score=DEFAULTS["score"], select=DEFAULTS["select"])
    rows = {}
    for policy, extra in POLICIES.items():
        settings = replace(decode, unmask=policy, **extra)
        start = now()
        results, _ = evaluate(ensemble, task, n, seed, methods, settings, tie)
        rows[policy] = {
            method: {"accuracy": r["accuracy"], "forwards": r["mean_steps"], "seconds_per_problem": r["seconds"]}
            for method, r in results.items()
        }
        log(f"  {policy}: " + ", ".join(f"{k} {v['accuracy']:.1f}% {v['forwards']:.1f} fw" for k, v in rows[policy].items())
            + f" ({now() - start:.1f}s)")
    base = rows["low_confidence"]
    for policy in POLICIES:
        if policy == "low_confidence":
            continue
        for method, r in rows[policy].items():
            b = base[method]
            r["forward_reduction"] = round(b["forwards"] / r["forwards"], 3) if r["forwards"] else None
            r["speedup"] = round(b["seconds_per_problem"] / r["seconds_per_problem"], 3) if r["seconds_per_problem"] else None
            r["accuracy_delta"] = round(r["accuracy"] - b["accuracy"], 2)
    headline = "tie" if "tie" in methods else methods[0]
    se = 100 * math.sqrt(0.25 / n)  # the largest standard error of one accuracy at this n
    return {
        "task": task.name, "n": n, "seed": seed, "headline_method": headline,
        "tie": {"score": tie.score, "select": tie.select, "interval": tie.interval},
        "decode": asdict(decode), "policies": rows, "accuracy_standard_error_max": round(se, 2),
    }


# --- 4. memory --------------------------------------------------------------------------------------------


def _bench_memory():
    """scripts/bench_memory.py, the scheduler's own benchmark: each configuration in a fresh process."""
    import importlib.util

    path = Path(__file__).resolve().parent / "bench_memory.py"
    spec = importlib.util.spec_from_file_location("bench_memory", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, path


def memory_section(models, prompts, decode: DecodeSettings, repeats: int, requests: int, device="cpu",
                   quant="none", threads: int | None = None, synthetic: int | None = None, members: int = 3,
                   swap_fraction: float = 0.6, log=print) -> dict:
    """Section 4, measured by scripts/bench_memory.py's child process (load under a budget, one warm-up
    request, `requests` timed TIE(tcc) requests; per-request peak memory, swaps, bytes moved). Its budgets
    for resident and offload are used as they are; the swap budget is working memory + `swap_fraction` of the
    members' weights (at least the largest member alone). The strategies run `repeats` times in alternating
    order (R S O, O S R, ...) in fresh processes: peak memory, swaps and bytes moved come from there.
    The time ratios come from all three ensembles loaded side by side in this process and timed
    interleaved prompt by prompt (`interleaved`), which machine load disturbs far less than separate
    processes run one after another; the fresh-process ratios are kept as `vs_resident_fresh_process`.
    `synthetic`: random members of that width (bench_memory.synthetic_members), where memory figures are
    not drowned by the Python runtime as they are with the 1-2 MB shipped members."""
    import subprocess

    from tie_lite.runtime.sizes import estimate_member

    bm, script = _bench_memory()
    tmp = Path(tempfile.mkdtemp(prefix="tie-bench-memory-"))
    try:
        if synthetic:
            models = bm.synthetic_members(tmp, synthetic, members)
        tokens = 40 + decode.gen_length  # bench_memory's prompts are ~20-40 tokens under the chat template
        budgets = bm.budgets(list(models), quant, device, tokens)
        est = [estimate_member(m, quant=quant, device=device) for m in models]
        weights = sum(e.weight_bytes for e in est)
        working = max(e.working_bytes(tokens) for e in est)
        largest = max(e.weight_bytes for e in est)
        budgets["swap"] = working + max(int(swap_fraction * weights), largest + 64 * 1024)
        names = list(budgets)
        rows: dict[str, list[dict]] = {n: [] for n in names}
        errors = {}
        for r in range(repeats):
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                cfg = dict(models=list(models), quant=quant, device=device, budget=budgets[name], tokens=tokens,
                           gen_length=decode.gen_length, score="tcc", requests=requests, threads=threads or 0)
                proc = subprocess.run([sys.executable, str(script), "--child", json.dumps(cfg)], capture_output=True,
                                      text=True, cwd=ROOT)
                if proc.returncode != 0:
                    errors[name] = (proc.stderr.strip().splitlines() or ["failed"])[-1]
                    continue
                rows[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        out = {}
        for name in names:
            runs = rows[name]
            if not runs:
                out[name] = {"error": errors.get(name, "no run"), "budget_bytes": budgets[name]}
                continue
            out[name] = {
                "strategy": runs[0]["strategy"],
                "budget_bytes": budgets[name],
                "seconds_per_request": round(statistics.median(x["request_s"] for x in runs), 4),
                "load_seconds": round(statistics.median(x["load_s"] for x in runs), 3),
                "peak_bytes": max(x["peak_bytes"] for x in runs),
                "peak_above_baseline_bytes": max(x["peak_bytes"] - x["baseline_bytes"] for x in runs),
                "swaps_per_request": runs[0]["swaps"],
                "bytes_moved_per_request": int(runs[0]["bytes_moved"]),
                "swap_seconds_per_request": round(statistics.median(x["swap_s"] for x in runs), 4),
                "texts": runs[0]["texts"],
                "request_seconds": [round(x["request_s"], 4) for x in runs],
            }
        if "request_seconds" in out.get("resident", {}):
            base = out["resident"]
            for name in names:
                row = out[name]
                if name == "resident" or "request_seconds" not in row:
                    continue
                pairs = [a / b for a, b in zip(row["request_seconds"], base["request_seconds"])]
                row["vs_resident_fresh_process"] = round(statistics.median(pairs), 4)
                row["same_output_as_resident"] = row["texts"] == base["texts"]
        for row in out.values():
            row.pop("texts", None)
        # time ratios: the three strategies side by side in this process, interleaved prompt by prompt
        loaded = {}
        for name in names:
            if "error" in out[name]:
                continue
            budget = budgets[name]
            loaded[name] = Ensemble(LoadSettings(models=tuple(models), quant=quant, device=device,
                                                 max_memory=None if budget is None else str(budget)),
                                    plan_tokens=tokens)
        if "resident" in loaded:
            fns = {name: (lambda u, e=e: e.run(prompts[u], decode, TieSettings())) for name, e in loaded.items()}
            for fn in fns.values():
                fn(0)  # warm-up
            times = interleaved(fns, repeats, len(prompts), device)
            for name in loaded:
                out[name]["seconds_per_request_interleaved"] = round(total(times[name]) / (repeats * len(prompts)), 4)
                if name != "resident":
                    out[name]["interleaved"] = ratio_stats(times[name], times["resident"])
                    out[name]["vs_resident"] = out[name]["interleaved"]["ratio"]
        del loaded
        for name, row in out.items():
            if "error" in row:
                log(f"  {name}: error: {row['error']}")
            else:
                log(f"  {name}: {row['seconds_per_request']:.3f}s/request, peak {row['peak_bytes'] / 2**20:.0f} MiB "
                    f"(+{row['peak_above_baseline_bytes'] / 2**20:.1f} over the process before loading), "
                    f"{row['swaps_per_request']} swaps")
        return {
            "source": "scripts/bench_memory.py",
            "members": [Path(m).name for m in models],
            "synthetic_width": synthetic,
            "weights_bytes": weights,
            "working_bytes": working,
            "swap_fraction": swap_fraction,
            "strategies": out,
            "settings": {"repeats": repeats, "requests": requests, "gen_length": decode.gen_length, "quant": quant,
                         "device": device, "score": "tcc"},
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- 5. growth --------------------------------------------------------------------------------------------


def long_context_copy(spec: str, positions: int, folder: Path) -> str:
    """A copy of a member whose context limit (`max_position_embeddings`) covers `positions`, with any learned
    position table repeated to that length (the shipped members use rotary positions and have none): the
    same architecture and compute per forward, so time per token is the shipped member's; the text past
    the trained context is not meaningful, and the bench uses it for timing only. Returns `spec` itself
    when its context is long enough already."""
    from safetensors.torch import load_file, save_file

    from tie_lite.runtime.registry import resolve

    _, source = resolve(spec)
    config = json.loads((Path(source) / "config.json").read_text())
    if int(config.get("max_position_embeddings", 0)) >= positions:
        return spec
    out = folder / f"{Path(source).name}-{positions}"
    shutil.copytree(source, out, dirs_exist_ok=True)
    for f in out.glob("*.safetensors"):
        tensors = load_file(f)
        for key, t in tensors.items():
            if key.endswith("embed_positions.weight"):
                reps = math.ceil(positions / t.shape[0])
                tensors[key] = t.repeat(reps, 1)[:positions].contiguous()
        save_file(tensors, f, metadata={"format": "pt"})
    config["max_position_embeddings"] = positions
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return str(out)


def growth(models, lengths, member_counts, prompts, repeats: int, device="cpu", block_size: int = 16,
           base_length: int = 64, log=print) -> dict:
    """Section 5: seconds per generated token, (a) single member, free layout, vs generation length;
    (b) TIE(tcc) at `base_length` vs number of members (shipped members repeated)."""
    messages = prompts[0]
    out = {"lengths": {}, "members": {}, "settings": {"block_size": block_size, "base_length": base_length,
                                                     "repeats": repeats, "prompts": 1}}
    with tempfile.TemporaryDirectory(prefix="tie-bench-") as tmp:
        longest = max(lengths) + 128
        specs = [long_context_copy(m, longest, Path(tmp)) for m in models]
        ens = Ensemble(LoadSettings(models=tuple(specs), device=device))
        out["settings"]["context_extended"] = specs != list(models)
        for i, member in enumerate(ens.scheduler.loaded):
            row = {}
            for length in lengths:
                decode = DecodeSettings(gen_length=length, block_size=block_size, answer_length=None)
                if length == lengths[0]:
                    ens.run(messages, decode, TieSettings(), members=[i])  # warm-up
                times = [timed(lambda: ens.run(messages, decode, TieSettings(), members=[i]), device)[0]
                         for _ in range(repeats)]
                row[length] = round(1000 * statistics.median(times) / length, 4)
            out["lengths"][models[i]] = row
            log(f"  {models[i]} ms/token by length: {row}")
        del ens
    pool = [models[k % len(models)] for k in range(max(member_counts))]
    ens = Ensemble(LoadSettings(models=tuple(pool), device=device))
    decode = DecodeSettings(gen_length=base_length, block_size=block_size)
    for m in member_counts:
        idx = list(range(m))
        ens.run(messages, decode, TieSettings(), members=idx)
        runs = [timed(lambda: ens.run(messages, decode, TieSettings(), members=idx), device) for _ in range(repeats)]
        seconds = statistics.median(t for t, _ in runs)
        runs = [r for _, r in runs]
        out["members"][m] = {"ms_per_token": round(1000 * seconds / base_length, 4),
                             "forwards": runs[0].steps, "members": pool[:m]}
    base = out["members"][member_counts[0]]["ms_per_token"] / member_counts[0]
    for m, row in out["members"].items():
        row["vs_linear"] = round(row["ms_per_token"] / (base * m), 4)
    log("  ms/token by members: " + ", ".join(f"{m}: {r['ms_per_token']}" for m, r in out["members"].items()))
    return out


def plot_growth(g: dict, path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for name, row in g["lengths"].items():
        xs = sorted(int(k) for k in row)
        a.plot(xs, [row[k] if k in row else row[str(k)] for k in xs], marker="o", label=name)
    a.set_xscale("log", base=2)
    a.set_xlabel("generation length (tokens, 1 token per step)")
    a.set_ylabel("ms per generated token")
    a.set_title("single member vs generation length")
    a.legend(fontsize=8)
    ms = sorted(int(k) for k in g["members"])
    get = lambda m: g["members"][m] if m in g["members"] else g["members"][str(m)]  # noqa: E731
    b.plot(ms, [get(m)["ms_per_token"] for m in ms], marker="o", label="TIE (tcc)")
    first = get(ms[0])["ms_per_token"] / ms[0]
    b.plot(ms, [first * m for m in ms], linestyle="--", color="grey", label="M x one member")
    b.set_xticks(ms)
    b.set_xlabel("members (shipped members repeated)")
    b.set_ylabel("ms per generated token")
    b.set_title(f"TIE vs members (gen length {g['settings']['base_length']})")
    b.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the run ----------------------------------------------------------------------------------------------


def headline(results: dict) -> dict:
    """The top-level figures (ratios) from the sections."""
    out = {}
    if "engine" in results:
        out["engine_overhead_ratio"] = results["engine"]["ratio"]
        out["engine_identical_output"] = results["engine"]["identical"]
    if "tie" in results:
        t = results["tie"]
        out["tie_overhead_ratio"] = t["tie_vs_singles"]["ratio"]
        out["tie_per_forward_overhead_ratio"] = t.get("tie_per_forward_vs_singles")
        if "top1_vs_tcc" in t:
            out["crossmodel_overhead_ratio"] = t["top1_vs_tcc"]["ratio"]
        if "verify_vs_tcc" in t:
            out["verify_overhead_ratio"] = t["verify_vs_tcc"]["ratio"]
    if "acceleration" in results:
        acc = results["acceleration"]
        h = acc["policies"]["threshold"][acc["headline_method"]]
        out["threshold_forward_reduction"] = h["forward_reduction"]
        out["threshold_accuracy_delta"] = h["accuracy_delta"]
        k = acc["policies"]["topk"][acc["headline_method"]]
        out["topk_forward_reduction"] = k["forward_reduction"]
        out["topk_accuracy_delta"] = k["accuracy_delta"]
    if "memory" in results:
        s = results["memory"]["strategies"]
        out["swap_vs_resident_ratio"] = s.get("swap", {}).get("vs_resident")
        out["offload_vs_resident_ratio"] = s.get("offload", {}).get("vs_resident")
    if "memory_synthetic" in results:
        s = results["memory_synthetic"]["strategies"]
        out["synthetic_swap_vs_resident_ratio"] = s.get("swap", {}).get("vs_resident")
        out["synthetic_offload_vs_resident_ratio"] = s.get("offload", {}).get("vs_resident")
    return out


def goal_rows(figures: dict) -> list[tuple[str, str, str, str]]:
    rows = []
    for key, (op, target, what) in GOALS.items():
        value = figures.get(key)
        if value is None:
            rows.append((what, "-", f"{op} {target}", "not measured"))
            continue
        met = value <= target if op == "<=" else value >= target
        if key == "engine_overhead_ratio" and not figures.get("engine_identical_output", True):
            met = False
        rows.append((what, f"{value:g}", f"{op} {target:g}", "met" if met else "MISSED"))
    return rows


def run_bench(args, log=print) -> dict:
    sizes = dict(QUICK if args.quick else FULL)
    if args.threads:
        torch.set_num_threads(args.threads)
    set_clock(args.clock)
    device = torch.device(args.device)
    sections = set(args.sections.split(",")) if args.sections else {"engine", "tie", "acceleration", "memory", "growth"}
    models = tuple(args.model or SHIPPED)
    from tie_lite.faces.options import DEFAULTS

    decode = DecodeSettings(gen_length=args.gen_length or DEFAULTS["gen_length"], block_size=args.block_size)
    prompts = task_prompts(args.task, sizes["prompts"])
    machine = machine_info(device)
    started = now()
    results: dict = {}
    log(f"loading {', '.join(models)} on {device} ...")
    ensemble = Ensemble(LoadSettings(models=models, device=args.device))
    if "engine" in sections:
        log("1. engine overhead (tie-lite vs the reference loop, free layout)")
        results["engine"] = engine_overhead(ensemble, prompts, decode, sizes["repeats"], log)
    if "tie" in sections and len(models) > 1:
        log("2. ensemble overhead (TIE vs the sum of single decodes)")
        results["tie"] = tie_overhead(ensemble, prompts, decode, sizes["repeats"], log=log)
    if "acceleration" in sections:
        log(f"3. acceleration ({args.task}, n={sizes['eval_n']}, eval seed 2)")
        results["acceleration"] = acceleration(ensemble, args.task, sizes["eval_n"], decode, log=log)
    del ensemble
    if "memory" in sections:
        log("4. memory (resident vs swap vs offload)")
        results["memory"] = memory_section(models, prompts, decode, sizes["memory_repeats"],
                                           sizes["memory_requests"], args.device, args.quant, args.threads, log=log)
        if sizes["memory_synthetic"]:
            log(f"4b. memory with {3} random members of width {sizes['memory_synthetic']} (memory shows)")
            results["memory_synthetic"] = memory_section(models, prompts, decode, sizes["memory_repeats"],
                                                         sizes["memory_requests"], args.device, args.quant,
                                                         args.threads, synthetic=sizes["memory_synthetic"], log=log)
    if "growth" in sections:
        log("5. growth (time per token vs length and members)")
        results["growth"] = growth(models, sizes["growth_lengths"], sizes["growth_members"], prompts,
                                   sizes["growth_repeats"], args.device, log=log)
    machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    out = headline(results)
    out.update({
        "machine": machine,
        "settings": {"quick": bool(args.quick), "models": list(models), "task": args.task, "device": args.device,
                     "decode": asdict(decode), "clock": args.clock, "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()},
                     "command": args.command_line, "models_dir": os.environ.get("TIE_LITE_MODELS", "models/")},
        "sections": results,
        "seconds": round(now() - started, 1),
    })
    return out


# --- reports ----------------------------------------------------------------------------------------------


def fmt_bytes(n) -> str:
    from tie_lite.checks import format_size

    return "-" if n is None else format_size(n)


def table(data: dict) -> str:
    """The plain-text table printed at the end of a run."""
    lines = [f"{'figure':48} {'value':>10} {'goal':>8}  status"]
    for what, value, goal, status in goal_rows(data):
        lines.append(f"{what:48} {value:>10} {goal:>8}  {status}")
    for key in ("engine_identical_output", "tie_per_forward_overhead_ratio", "crossmodel_overhead_ratio",
                "verify_overhead_ratio",
                "topk_forward_reduction", "topk_accuracy_delta", "offload_vs_resident_ratio",
                "synthetic_swap_vs_resident_ratio", "synthetic_offload_vs_resident_ratio"):
        if key in data:
            lines.append(f"{key:48} {str(data[key]):>10}")
    m = data["machine"]
    lines.append(f"machine: {m['cpu']} ({m['usable_cores']} cores usable, {m['torch_threads']} torch threads), "
                 f"torch {m['torch']}, load {m['load_average']} -> {m.get('load_average_end')}; {data['seconds']}s")
    return "\n".join(lines)


def memory_markdown(mm: dict) -> list[str]:
    st = mm["settings"]
    who = (f"{len(mm['members'])} random members of width {mm['synthetic_width']}" if mm.get("synthetic_width")
           else ", ".join(mm["members"]))
    out = [f"**4. Memory** — {who}: weights {fmt_bytes(mm['weights_bytes'])}, working memory per forward "
           f"{fmt_bytes(mm['working_bytes'])}; TIE(tcc), gen length {st['gen_length']}, quant {st['quant']}; each "
           f"strategy in fresh processes ({mm['source']}), {st['repeats']} x (1 warm-up + {st['requests']} timed "
           f"requests), alternating order: peak memory, swaps, bytes moved, and s / request in those processes. "
           f"'vs resident' is the ratio with the three ensembles loaded side by side in one process and timed "
           f"interleaved prompt by prompt (median of the per-prompt ratios; the fresh-process ratio in brackets). "
           f"Swap budget: working memory + {100 * mm['swap_fraction']:.0f}% of the weights. Peak: the process's "
           f"resident-set high-water mark per request on the CPU (so Python, torch and tokenizers are in it; "
           f"'over base' subtracts the process before any member loaded), allocated memory on CUDA.", ""]
    out.append("| strategy | --max-memory | s / request | vs resident | peak | over base | swaps / request | "
               "moved / request | swap s / request | same output |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in mm["strategies"].items():
        if "error" in r:
            out.append(f"| {name} | {fmt_bytes(r['budget_bytes'])} | error: {r['error']} | | | | | | | |")
            continue
        vs = f"{r['vs_resident']:.3f}" if "vs_resident" in r else "1"
        if "vs_resident_fresh_process" in r:
            vs += f" ({r['vs_resident_fresh_process']:.2f})"
        same = "" if name == "resident" else ("yes" if r.get("same_output_as_resident") else "NO")
        label = r["strategy"] if r["strategy"] == name else f"{name} (plan: {r['strategy']})"
        out.append(f"| {label} | {fmt_bytes(r['budget_bytes'])} | {r['seconds_per_request']:.4f} | {vs} | "
                   f"{fmt_bytes(r['peak_bytes'])} | {fmt_bytes(r['peak_above_baseline_bytes'])} | "
                   f"{r['swaps_per_request']:g} | {fmt_bytes(r['bytes_moved_per_request'])} | "
                   f"{r['swap_seconds_per_request']:.4f} | {same} |")
    out.append("")
    return out


def markdown(data: dict, plot: str | None = None) -> str:
    """The figures as a markdown block (what --doc writes between its markers)."""
    m, s = data["machine"], data["settings"]
    sec = data["sections"]
    out = []
    out.append(f"Run {m['date']} on **{m['cpu']}** ({m['usable_cores']} usable cores, {m['torch_threads']} torch "
               f"threads{', ' + m['gpu'] if 'gpu' in m else ''}), Python {m['python']}, torch {m['torch']}, "
               f"transformers {m['transformers']}; load average {m['load_average']} at the start, "
               f"{m.get('load_average_end')} at the end; {data['seconds']} s in all.")
    out.append("")
    out.append(f"Command: `{s['command']}`" + (f" (members from `{s['models_dir']}`)" if s.get("models_dir") else ""))
    out.append("")
    out.append("| figure | value | goal | |")
    out.append("|---|---|---|---|")
    for what, value, goal, status in goal_rows(data):
        out.append(f"| {what} | {value} | {goal} | {status} |")
    for key, what in (("tie_per_forward_overhead_ratio", "TIE(tcc) vs single decodes, time per forward pass"),
                      ("crossmodel_overhead_ratio", "TIE(top1, cross-model) vs TIE(tcc)"),
                      ("verify_overhead_ratio", "TIE(verify) vs TIE(tcc)"),
                      ("topk_forward_reduction", "topk k=2: fewer forward passes (TIE)"),
                      ("topk_accuracy_delta", "topk k=2: accuracy change, points (TIE)"),
                      ("offload_vs_resident_ratio", "offload vs resident wall time"),
                      ("synthetic_swap_vs_resident_ratio", "swap vs resident, random members of width 512"),
                      ("synthetic_offload_vs_resident_ratio", "offload vs resident, random members of width 512")):
        if data.get(key) is not None:
            out.append(f"| {what} | {data[key]:g} | | |")
    out.append("")
    if "engine" in sec:
        e = sec["engine"]
        d = e["settings"]["decode"]
        out.append(f"**1. Engine overhead** — gen length {d['gen_length']}, block {d['block_size']}, one token per "
                   f"step, greedy, free layout; {e['settings']['prompts']} prompts x {e['settings']['repeats']} "
                   f"interleaved repeats. Ratio = median over prompts and repeats of (tie-lite time / reference time). "
                   f"Output identical token for token: **{'yes' if e['identical'] else 'NO'}**.")
        out.append("")
        out.append("| member | `Ensemble.run` / reference | bare `Trajectory` / reference | ms per forward: run, trajectory, reference |")
        out.append("|---|---|---|---|")
        for name, r in e["members"].items():
            ms = r["ms_per_forward"]
            out.append(f"| {name} | {r['engine']['ratio']:.3f} (IQR {r['engine']['ratio_iqr'][0]:.2f}-"
                       f"{r['engine']['ratio_iqr'][1]:.2f}) | {r['trajectory']['ratio']:.3f} | "
                       f"{ms['engine']:.2f}, {ms['trajectory']:.2f}, {ms['reference']:.2f} |")
        out.append("")
    if "tie" in sec:
        t = sec["tie"]
        out.append(f"**2. Ensemble overhead** — {t['members']} members, default answer layout, interval "
                   f"{t['settings']['interval']}; {t['settings']['prompts']} prompts x {t['settings']['repeats']} repeats. "
                   f"TIE(tcc) made {t['tie_forwards_vs_singles']:.2f}x the forward passes of the members alone"
                   + (f" and spent {t['tie_per_forward_vs_singles']:.3f}x their time per forward pass"
                      if "tie_per_forward_vs_singles" in t else "") + ".")
        out.append("")
        out.append("| run | forwards / prompt | ms / forward | time ratio |")
        out.append("|---|---|---|---|")
        for k, fw in t["forwards_per_prompt"].items():
            if k.endswith(":rounds"):
                continue
            ratio = ""
            if k == "tie:tcc":
                ratio = f"{t['tie_vs_singles']['ratio']:.3f} x sum of singles"
            elif k.startswith("tie:"):
                ratio = f"{t[k[4:] + '_vs_tcc']['ratio']:.3f} x tcc"
            out.append(f"| {k} | {fw:g} | {t['ms_per_forward'][k]:.2f} | {ratio} |")
        out.append("")
    if "acceleration" in sec:
        a = sec["acceleration"]
        out.append(f"**3. Acceleration** — task {a['task']}, n = {a['n']} problems (eval seed {a['seed']}; one "
                   f"accuracy's standard error is up to {a['accuracy_standard_error_max']} points), gen length "
                   f"{a['decode']['gen_length']}, block {a['decode']['block_size']}, TIE score {a['tie']['score']}, "
                   f"select {a['tie']['select']}; batched over problems (tie-lite eval).")
        out.append("")
        best = max(r["accuracy"] for r in a["policies"]["low_confidence"].values())
        if best < 10:
            out.append(f"*The members answer at most {best:.1f}% of these problems right, so the accuracy changes below "
                       f"are measured at the floor and say nothing yet about what the faster policies cost; the "
                       f"forward-pass figures stand.*")
            out.append("")
        out.append("| policy | method | accuracy % | forwards / problem | s / problem | fewer forwards | accuracy change |")
        out.append("|---|---|---|---|---|---|---|")
        for policy, rows in a["policies"].items():
            for method, r in rows.items():
                red = f"{r['forward_reduction']:.2f}x" if "forward_reduction" in r else ""
                delta = f"{r['accuracy_delta']:+.1f}" if "accuracy_delta" in r else ""
                out.append(f"| {policy} | {method} | {r['accuracy']:.1f} | {r['forwards']:.1f} | "
                           f"{r['seconds_per_problem']:.4f} | {red} | {delta} |")
        out.append("")
    for key in ("memory", "memory_synthetic"):
        if key in sec:
            out.extend(memory_markdown(sec[key]))
    if "growth" in sec:
        g = sec["growth"]
        lengths = sorted({int(k) for row in g["lengths"].values() for k in row})
        out.append("**5. Growth** — ms per generated token (one token per step, block "
                   f"{g['settings']['block_size']}, one prompt, free layout)" + (" — past the members' trained "
                   "context the bench times a copy whose context limit is raised (and any learned position table "
                   "repeated): the same compute per forward, text not meaningful" if g["settings"].get("context_extended")
                   else "") + ". Members: TIE(tcc) with the shipped members repeated; 'vs M x one member' < 1 where "
                   "relays let trajectories finish with fewer forwards.")
        out.append("")
        out.append("| member | " + " | ".join(f"gen {n}" for n in lengths) + " |")
        out.append("|---|" + "---|" * len(lengths))
        for name, row in g["lengths"].items():
            out.append(f"| {name} | " + " | ".join(f"{(row.get(n) or row.get(str(n))):.2f}" for n in lengths) + " |")
        out.append("")
        ms = sorted(int(k) for k in g["members"])
        get = lambda k: g["members"].get(k) or g["members"].get(str(k))  # noqa: E731
        out.append(f"| members (TIE tcc, gen {g['settings']['base_length']}) | " + " | ".join(str(k) for k in ms) + " |")
        out.append("|---|" + "---|" * len(ms))
        out.append("| ms / token | " + " | ".join(f"{get(k)['ms_per_token']:.2f}" for k in ms) + " |")
        out.append("| vs M x one member | " + " | ".join(f"{get(k)['vs_linear']:.2f}" for k in ms) + " |")
        out.append("")
        if plot:
            out.append(f"![growth]({plot})")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def write_doc(path: str, block: str, key: str) -> None:
    """Replace the block between `<!-- bench:KEY:begin -->` and `<!-- bench:KEY:end -->` in `path` (appended
    under a heading when the markers are missing); the rest of the page is left as written."""
    begin, end = f"<!-- bench:{key}:begin -->", f"<!-- bench:{key}:end -->"
    doc = Path(path)
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    new = f"{begin}\n{block}{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: new, text)
    else:
        text = text.rstrip() + f"\n\n## Figures ({key})\n\n{new}\n"
    doc.write_text(text)


def doc_key(data: dict) -> str:
    return ("quick" if data["settings"]["quick"] else "full") + ("-cuda" if data["machine"]["device"].startswith("cuda") else "-cpu")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--quick", action="store_true", help="small sizes (CI smoke; under 3 minutes on 2 quiet cores)")
    p.add_argument("--json", metavar="FILE", help="write every figure and the settings as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="write the growth plot (length and members panels)")
    p.add_argument("--doc", metavar="FILE.md", help="write the figures into this markdown page (between its "
                   "bench markers for this run's kind, e.g. docs/BENCHMARKS.md)")
    p.add_argument("--markdown", action="store_true", help="print the figures as a markdown block too")
    p.add_argument("--from-json", metavar="FILE", help="measure nothing: report (table, --doc, --markdown, --plot) from a saved JSON")
    p.add_argument("--sections", help="comma list of engine,tie,acceleration,memory,growth (default all)")
    p.add_argument("--model", action="append", help="members (default: the shipped pair)")
    p.add_argument("--task", default="sum-product")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--quant", default="none", help="none | 8bit | 4bit (the memory section; default none)")
    p.add_argument("--gen-length", type=int, default=None, help="default: tie-lite's (cli.DEFAULTS)")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--clock", choices=tuple(CLOCKS), default="wall", help="wall (default) or cpu: process CPU "
                   "time, much less disturbed by other jobs on a loaded machine (best with --threads 1)")
    args = p.parse_args(argv)
    args.command_line = "python scripts/bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    return args


def main(argv=None) -> int:
    import warnings

    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    args = parse_args(argv)
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
    else:
        data = run_bench(args, log=lambda s: print(s, file=sys.stderr, flush=True))
        if args.json:
            Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    if args.plot and "growth" in data["sections"]:
        plot_growth(data["sections"]["growth"], args.plot,
                    f"{data['machine']['cpu']}, torch {data['machine']['torch']}, {data['machine']['date']}")
    print(table(data))
    plot_ref = None
    if args.plot and args.doc:
        plot_ref = os.path.relpath(args.plot, Path(args.doc).parent)
    block = markdown(data, plot_ref)
    if args.markdown:
        print()
        print(block)
    if args.doc:
        write_doc(args.doc, block, doc_key(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
