#!/usr/bin/env python
"""Wall time and peak memory of an ensemble kept resident, swapped whole members, and layer-offloaded.

Each configuration runs in a fresh process (so one run's memory cannot hide in another's peak): it loads the
ensemble under a budget, runs one warm-up request, then times `--requests` requests and reports the largest
per-request peak (process resident memory on the CPU, allocated device memory on CUDA), the resident memory
before any member loaded, and the swaps and bytes the scheduler moved. Budgets are derived from the members'
estimated sizes: swap = the largest member alone + working memory; offload = the largest layer + working
memory. Not a test: figures depend on the machine and on what else runs on it.

    python scripts/bench_memory.py                          # the shipped pair on the CPU
    python scripts/bench_memory.py --synthetic 512 --members 3   # three random ~26 MB members: memory shows
    python scripts/bench_memory.py --device cuda --quant 4bit
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPTS = ["What is (23+41)*7?", "What is (15+62)*3?", "What is 12*4+31*2?", "What is (8+77)*5?",
           "What is 23*4+17*5?", "What is (40+9)*6?"]


def child(cfg: dict) -> dict:
    import torch

    from tie_lite.engine.sampler import DecodeSettings
    from tie_lite.engine.tie import TieSettings
    from tie_lite.runtime.session import Ensemble, LoadSettings

    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    decode, tie = DecodeSettings(gen_length=cfg["gen_length"]), TieSettings(score=cfg["score"])
    start = time.perf_counter()
    ensemble = Ensemble(LoadSettings(models=tuple(cfg["models"]), quant=cfg["quant"], device=cfg["device"],
                                     max_memory=cfg["budget"]), plan_tokens=cfg["tokens"])
    load_s = time.perf_counter() - start
    messages = lambda k: [{"role": "user", "content": PROMPTS[k % len(PROMPTS)]}]  # noqa: E731
    ensemble.run(messages(0), decode, tie)  # warm-up: library code pages, allocator pools
    runs = []
    for k in range(cfg["requests"]):
        start = time.perf_counter()
        result = ensemble.run(messages(k), decode, tie)
        runs.append((time.perf_counter() - start, result))
    mem = [r.memory for _, r in runs]
    return {
        "strategy": mem[0]["strategy"],
        "load_s": load_s,
        "request_s": statistics.median(s for s, _ in runs),
        "rounds": statistics.mean(len(r.rounds) for _, r in runs),
        "peak_bytes": max(m["peak_bytes"] for m in mem),
        "baseline_bytes": mem[0]["baseline_bytes"],
        "swaps": statistics.mean(m["swaps"] for m in mem),
        "bytes_moved": statistics.mean(m["bytes_moved"] for m in mem),
        "swap_s": statistics.mean(m["swap_seconds"] for m in mem),
        "texts": [r.text for _, r in runs],
    }


def synthetic_members(root: Path, hidden: int, count: int) -> list[str]:
    """Random tie-tiny checkpoints (3 layers of width `hidden`) with the shipped tiny-sp tokenizer."""
    import torch

    from tie_lite.models.tiny import TieTinyConfig, TieTinyForMaskedLM
    from tie_lite.runtime.registry import resolve

    src = Path(resolve("tiny-sp")[1])
    base = json.loads((src / "config.json").read_text())
    out = []
    for k in range(count):
        path = root / f"random-{hidden}-{k}"
        torch.manual_seed(k)
        cfg = TieTinyConfig(vocab_size=base["vocab_size"], hidden_size=hidden, num_hidden_layers=3,
                            num_attention_heads=4, intermediate_size=2 * hidden, max_position_embeddings=256,
                            mask_token_id=base["mask_token_id"], eos_token_id=base["eos_token_id"],
                            pad_token_id=base.get("pad_token_id"))
        TieTinyForMaskedLM(cfg).save_pretrained(path)
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            shutil.copy(src / name, path)
        out.append(str(path))
    return out


def budgets(models, quant, device, tokens) -> dict:
    from tie_lite.runtime.sizes import estimate_member

    est = [estimate_member(m, quant=quant, device=device) for m in models]
    working = max(e.working_bytes(tokens) for e in est)
    out = {"resident": None, "swap": working + max(e.weight_bytes for e in est) + 64 * 1024}
    if quant == "none" or device == "cuda":
        out["offload"] = working + max(e.layer_bytes for e in est) + 64 * 1024
    return out


def mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", help="members (default: the shipped pair)")
    ap.add_argument("--synthetic", type=int, metavar="HIDDEN", help="use random members of this width instead")
    ap.add_argument("--members", type=int, default=3, help="how many synthetic members (default 3)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quant", default="none")
    ap.add_argument("--gen-length", type=int, default=48)
    ap.add_argument("--score", default="tcc")
    ap.add_argument("--requests", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--only", help="comma-separated subset of resident,swap,offload")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        models = synthetic_members(tmp, args.synthetic, args.members) if args.synthetic else (args.model or ["tiny-sp", "tiny-bpe"])
        tokens = 40 + args.gen_length  # the prompts are ~20-40 tokens under the chat template
        plans = budgets(models, args.quant, args.device, tokens)
        if args.only:
            plans = {k: v for k, v in plans.items() if k in args.only.split(",")}
        rows = {}
        for name, budget in plans.items():
            cfg = dict(models=models, quant=args.quant, device=args.device, budget=budget, tokens=tokens,
                       gen_length=args.gen_length, score=args.score, requests=args.requests, threads=args.threads)
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)], capture_output=True,
                                  text=True, cwd=ROOT)
            if proc.returncode != 0:
                rows[name] = {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
                continue
            rows[name] = json.loads(proc.stdout.strip().splitlines()[-1]) | {"budget": budget}
        reference = rows.get("resident", {}).get("texts")
        for row in rows.values():
            if "texts" in row:
                row["same_text_as_resident"] = reference is None or row.pop("texts") == reference
        if args.json:
            print(json.dumps({"models": models, "device": args.device, "quant": args.quant, "rows": rows}, indent=2))
            return 0
        unit = "device MiB" if args.device == "cuda" else "RSS MiB"
        print(f"members: {', '.join(Path(m).name for m in models)}; device {args.device}; quant {args.quant}; "
              f"gen-length {args.gen_length}; {args.requests} timed requests after one warm-up")
        print(f"{'config':9} {'budget MiB':>10} {'strategy':>9} {'load s':>7} {'request s':>9} {'peak ' + unit:>13} "
              f"{'over base':>9} {'swaps/req':>9} {'MiB moved':>9} {'swap s':>7} same-text")
        for name, r in rows.items():
            if "error" in r:
                print(f"{name:9} error: {r['error']}")
                continue
            budget = "-" if r["budget"] is None else mib(r["budget"])
            print(f"{name:9} {budget:>10} {r['strategy']:>9} {r['load_s']:7.2f} {r['request_s']:9.3f} "
                  f"{mib(r['peak_bytes']):>13} {mib(r['peak_bytes'] - r['baseline_bytes']):>9} {r['swaps']:9.1f} "
                  f"{mib(r['bytes_moved']):>9} {r['swap_s']:7.3f} {r['same_text_as_resident']}")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
