#!/usr/bin/env python
"""Benchmark: tie-lite beside NVlabs Fast-dLLM's own LLaDA samplers, on the same checkpoint, prompt and machine.

    bash scripts/reference/make_venv.sh /tmp/tie-lite-fastdllm-venv 4.49.0
    python scripts/bench_fast_dllm.py --fast-dllm-repo /work/.mirror/NVlabs+Fast-dLLM/repo [--doc docs/BENCHMARKS.md]

Builds the two bench members of scripts/bench_cache.py (LLaDA architecture, real vocabulary, 8 layers x 512,
random weights whose predictions vary by position), then decodes one prompt with Fast-dLLM (its generate.py and
modeling_llada.py, run by scripts/reference/fast_dllm.py --time in the scratch virtualenv, never imported here)
and with tie-lite, one row after the other on the same threads: no cache, dual cache, dual cache + threshold,
and TIE with two members (the default score, verify; dual cache + threshold) against one member decoded by
Fast-dLLM with dual cache + threshold. Prints the table: decode time as a ratio to Fast-dLLM's, and how many
generated ids are identical.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from bench_cache import PROMPT, build_member, member_statistics, write_doc  # noqa: E402

from tie_lite.engine.sampler import DecodeSettings  # noqa: E402
from tie_lite.engine.tie import TieSettings  # noqa: E402
from tie_lite.runtime.session import Ensemble, LoadSettings  # noqa: E402

RUNNER = ROOT / "scripts" / "reference" / "fast_dllm.py"
# (row, cache, threshold, members of the tie-lite run)
ROWS = [("no cache", "none", None, [0]), ("dual cache", "dual", None, [0]),
        ("dual cache + threshold", "dual", 0.9, [0]),
        ("TIE, 2 members, verify, dual + threshold", "dual", 0.9, [0, 1])]


def fast_dllm(args, checkpoint: str, prompt_ids: list[int], cache: str, threshold) -> dict:
    cmd = [args.venv_python, str(RUNNER), "--fast-dllm-repo", args.fast_dllm_repo, "--time", checkpoint,
           "--prompt-ids", ",".join(map(str, prompt_ids)), "--cache", cache, "--gen-length", str(args.gen_length),
           "--block-size", str(args.block_size), "--threads", str(args.threads)]
    if threshold is not None:
        cmd += ["--threshold", str(threshold)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def tie_lite(ensemble, args, cache: str, threshold, members: list[int]) -> dict:
    decode = DecodeSettings(gen_length=args.gen_length, block_size=args.block_size, answer_length=None, cache=cache,
                            **({"unmask": "threshold", "threshold": threshold} if threshold is not None else {}))
    tie = TieSettings(interval=args.block_size, score="verify" if len(members) > 1 else "tcc")
    start = time.perf_counter()
    result = ensemble.run(PROMPT, decode, tie, members=members)
    return {"seconds": time.perf_counter() - start, "forwards": result.steps, "ids": result.token_ids,
            "final_member": result.final_member}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fast-dllm-repo", default="/work/.mirror/NVlabs+Fast-dLLM/repo", help="git clone of Fast-dLLM")
    ap.add_argument("--venv-python", default="/tmp/tie-lite-fastdllm-venv/bin/python",
                    help="python of the scratch virtualenv (scripts/reference/make_venv.sh DIR 4.49.0)")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--head-scale", type=float, default=0.8)
    ap.add_argument("--qk-std", type=float, default=0.1)
    ap.add_argument("--gen-length", type=int, default=256)
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default="0,1,2,3", help="which rows to run (0: no cache, the slowest)")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--doc", help="write the table into this markdown file (between bench-fast-dllm markers)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="tie-lite-bench-fast-dllm-"))
    try:
        specs = tuple(build_member(root, seed, args.layers, args.width, args.head_scale, args.qk_std) for seed in (0, 1))
        ensemble = Ensemble(LoadSettings(models=specs, dtype="float32"))
        member = ensemble.members[0]
        prompt_ids = member.prompt_ids(PROMPT)
        stats = member_statistics(member, DecodeSettings(gen_length=args.gen_length, block_size=args.block_size,
                                                         answer_length=None, cache="dual"))
        print(f"member 0: {stats['distinct_ids']} distinct ids in {stats['generated']}, "
              f"{stats['saturated_share']:.1%} of candidates at float32 confidence 1.0", file=sys.stderr)
        rows = []
        for k in map(int, args.rows.split(",")):
            name, cache, threshold, members = ROWS[k]
            theirs = fast_dllm(args, specs[0], prompt_ids, cache, threshold)
            ours = tie_lite(ensemble, args, cache, threshold, members)
            same = sum(a == b for a, b in zip(ours["ids"], theirs["ids"])) if len(members) == 1 else None
            rows.append({"row": name, "tie_lite_s": round(ours["seconds"], 2), "fast_dllm_s": round(theirs["seconds"], 2),
                         "ratio": round(ours["seconds"] / theirs["seconds"], 2), "identical": same,
                         "forwards": [ours["forwards"], theirs["forwards"]]})
            print(f"{name}: tie-lite {ours['seconds']:.1f} s ({ours['forwards']} forwards), Fast-dLLM "
                  f"{theirs['seconds']:.1f} s ({theirs['forwards']}), identical ids {same}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    figures = {"settings": {k: getattr(args, k) for k in ("layers", "width", "head_scale", "qk_std", "gen_length",
                                                          "block_size", "threads")},
               "member": stats, "prompt_tokens": len(prompt_ids), "rows": rows,
               "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__}}
    table = markdown(figures)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    if args.doc:
        write_doc(args.doc, table, "bench-fast-dllm")
    return 0


def markdown(f: dict) -> str:
    s, m = f["settings"], f["member"]
    lines = [f"Same checkpoint (LLaDA architecture, {s['layers']} layers x {s['width']}, vocabulary 126,464, head std "
             f"{s['head_scale']}, q/k std {s['qk_std']}: {m['distinct_ids']} distinct ids in {m['generated']}, "
             f"{m['saturated_share']:.1%} of candidates at float32 confidence 1.0), same prompt ids "
             f"({f['prompt_tokens']} tokens), fp32, {s['threads']} threads, gen {s['gen_length']}, block "
             f"{s['block_size']}, greedy; Fast-dLLM's rows by its own generate.py and modeling_llada.py.", "",
             "| method | tie-lite / Fast-dLLM decode time | ids identical | forwards (tie-lite, Fast-dLLM) |",
             "|---|---|---|---|"]
    for r in f["rows"]:
        who = "one Fast-dLLM member with dual + threshold" if r["identical"] is None else ""
        same = "—" if r["identical"] is None else f"{r['identical']}/{s['gen_length']}"
        lines.append(f"| {r['row']} | {r['ratio']}x ({r['tie_lite_s']} s vs {r['fast_dllm_s']} s) {who}".rstrip()
                     + f" | {same} | {r['forwards'][0]}, {r['forwards'][1]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
