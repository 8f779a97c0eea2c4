#!/usr/bin/env python
"""Benchmark: two members advancing a round side by side (each on a device of its own) against one by one.

    python scripts/bench_parallel.py            # figures to stdout (JSON with --json)

With no second device here, the two "devices" are two CPU cores: torch runs single-threaded, so each member's
thread computes on one core, as each member would on its own GPU. The members are bench_cache.py's
LLaDA-architecture members (the real 126,464-row vocabulary, random weights, two seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cache import PROMPT, build_member  # noqa: E402

from tie_lite.engine.sampler import DecodeSettings  # noqa: E402
from tie_lite.engine.tie import TieSettings  # noqa: E402
from tie_lite.runtime.session import Ensemble, LoadSettings  # noqa: E402


def ray_figures(paths, decode, repeats: int, local: dict) -> dict:
    """The same runs with each member a single-threaded Ray actor on a local cluster: round time against the
    one-process run, bytes crossing between the driver and the actors, and the overhead Ray adds (a round's
    wall time less the slower actor's compute time in it)."""
    remote = Ensemble(LoadSettings(models=tuple(paths), dtype="float32", ray="local"))
    out = {}
    for score in ("tcc", "verify"):
        tie = TieSettings(interval=16, score=score, select="verify" if score == "verify" else "lowest-tcc")
        best = None
        for _ in range(repeats):
            crossed = [m.bytes_crossed for m in remote.members]
            computed = [m.actor_seconds for m in remote.members]
            start = time.perf_counter()
            result = remote.run(PROMPT, decode, tie)
            wall = time.perf_counter() - start
            rounds = len(result.rounds)
            slower = max(m.actor_seconds - c for m, c in zip(remote.members, computed))
            run = {"seconds": round(wall, 3), "rounds": rounds, "seconds_per_round": round(wall / rounds, 3),
                   "bytes_per_round": round(sum(m.bytes_crossed - c for m, c in zip(remote.members, crossed)) / rounds),
                   "ray_overhead_ms_per_round": round(1000 * (wall - slower) / rounds, 1), "text": result.text}
            best = run if best is None or wall < best["seconds"] else best
        assert best["text"] == local[f"{score} one by one"]["text"], "Ray changed the output"
        out[f"{score} ray"] = best
        out[f"{score} ray ratio"] = round(best["seconds"] / local[f"{score} one by one"]["seconds"], 3)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--gen-length", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-ray", action="store_true", help="leave out the Ray mode (two actors on a local cluster)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # one core per member, as one device per member
    with tempfile.TemporaryDirectory() as root:
        paths = [build_member(Path(root), seed, args.layers, args.width, head_scale=0.8) for seed in (1, 2)]
        ensemble = Ensemble(LoadSettings(models=tuple(paths), dtype="float32"))
        decode = DecodeSettings(gen_length=args.gen_length, block_size=16, answer_length=None)
        figures = {}
        for score in ("tcc", "verify"):
            tie = TieSettings(interval=16, score=score, select="verify" if score == "verify" else "lowest-tcc")
            for mode in (False, True):
                ensemble.scheduler.parallel = mode
                best, result = float("inf"), None
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    result = ensemble.run(PROMPT, decode, tie)
                    best = min(best, time.perf_counter() - start)
                figures[f"{score} {'side by side' if mode else 'one by one'}"] = {
                    "seconds": round(best, 3), "rounds": len(result.rounds),
                    "seconds_per_round": round(best / len(result.rounds), 3), "text": result.text}
            one, two = (figures[f"{score} {k}"] for k in ("one by one", "side by side"))
            assert one["text"] == two["text"], "side by side changed the output"
            figures[f"{score} ratio"] = round(two["seconds"] / one["seconds"], 3)
        if not args.no_ray:
            figures.update(ray_figures(paths, decode, args.repeats, figures))
    figures["machine"] = {"cpus": os.cpu_count(), "torch_threads_per_member": 1, "torch": torch.__version__}
    if args.json:
        print(json.dumps(figures, indent=1))
    else:
        for k, v in figures.items():
            print(k, {a: b for a, b in v.items() if a != "text"} if isinstance(v, dict) else v)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
