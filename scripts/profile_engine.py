#!/usr/bin/env python
"""Where the engine's time goes when N requests are stacked: the members' forwards against the sampler's
per-trajectory work (plan, step, forward request), on the shipped pair with the server's default settings.

    python scripts/profile_engine.py [--stacks 1,8,16] [--waves 3] [--threads 1]

Each share is the wall time inside those calls over the wall time of driving `--waves` waves of N requests
together (runtime/drive.py, what the server's batching does). Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load_serve import EngineAlone  # noqa: E402  (the same engine and prompts as the load test)

PARTS = {"forward": ("tie_lite.runtime.loading", "Member", "forward"),
         "sampler step": ("tie_lite.engine.sampler", "Trajectory", "step"),
         "sampler plan": ("tie_lite.engine.sampler", "Trajectory", "plan_step"),
         "forward request": ("tie_lite.engine.sampler", "Trajectory", "forward_request")}


def timed(spent: dict, part: str, module: str, owner: str, name: str) -> None:
    import importlib

    cls = getattr(importlib.import_module(module), owner)
    call = getattr(cls, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            spent[part] += time.perf_counter() - start

    setattr(cls, name, wrapper)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stacks", default="1,8,16")
    ap.add_argument("--waves", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    engine = EngineAlone(args.waves, args.threads)
    spent = dict.fromkeys(PARTS, 0.0)
    for part, where in PARTS.items():
        timed(spent, part, *where)
    print(f"{'stacked':>7} {'wall s':>7} " + " ".join(f"{p:>16}" for p in PARTS) + f" {'other':>7}")
    for n in (int(x) for x in args.stacks.split(",")):
        for part in spent:
            spent[part] = 0.0
        wall = engine.run(engine.waves(n), n)
        shares = [spent[p] / wall for p in PARTS]
        print(f"{n:>7} {wall:>7.2f} " + " ".join(f"{s:>16.0%}" for s in shares) + f" {1 - sum(shares):>7.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
