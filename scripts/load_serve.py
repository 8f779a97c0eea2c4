#!/usr/bin/env python
"""Load test for `tie-lite serve` (localhost only, bounded): 1, 4, 8, 16 concurrent clients.

    python scripts/load_serve.py [--clients 1,4,8,16] [--requests 6] [--json FILE] [--threads 1]

Starts `tie-lite serve` on the shipped pair on a free local port, then for each client count runs that
many clients at once, each on one kept-alive connection (as the openai client holds one) sending
--requests chat completions (temperature 0, arithmetic prompts of three token lengths). Prints per count:
requests/s, completion tokens/s, throughput relative to one client, p50/p95 latency, requests lost,
whether every answer equals the one-client answer for its prompt, and the server's health after. The
server batches step by step (--max-batch 16).

Beside each served figure it prints the engine's own ceiling, measured in the same run and on the same
number of torch threads, with no HTTP and no server: the same requests' TIE processes driven N at a time,
their canvases stacked through each forward (runtime/drive.py, what the server's batching does), just
before and just after the served level (averaged), and the same requests driven one after another.
`served/ceiling` is how much of what the engine can do the server delivers.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
# one task, prompts of several token lengths (1- and 2-digit operands), as a server's traffic has them
PROMPTS = [f"What is ({a}+{b})*{c}?" for a, b, c in [(23, 41, 7), (5, 62, 3), (31, 7, 4), (4, 19, 6), (12, 56, 8),
                                                      (2, 3, 2), (44, 18, 5), (6, 29, 9)]]
MODEL = "tie:tiny-sp+tiny-bpe"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ask(client: httpx.Client, url: str, prompt: str) -> tuple[float, str, int]:
    start = time.perf_counter()
    r = client.post(f"{url}/v1/chat/completions", timeout=600,
                    json={"model": MODEL, "messages": [{"role": "user", "content": prompt}], "temperature": 0})
    r.raise_for_status()
    body = r.json()
    return time.perf_counter() - start, body["choices"][0]["message"]["content"], body["usage"]["completion_tokens"]


def run_level(url: str, clients: int, requests: int) -> dict:
    results, lost = [], []
    lock = threading.Lock()

    def client(k: int) -> None:
        session = httpx.Client()  # one kept-alive connection per client, as the openai client holds one
        for j in range(requests):
            prompt = PROMPTS[(k * requests + j) % len(PROMPTS)]
            try:
                seconds, text, tokens = ask(session, url, prompt)
                with lock:
                    results.append((prompt, seconds, text, tokens))
            except Exception as exc:  # counted, not raised: the figure is how many were lost
                with lock:
                    lost.append(repr(exc))

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    latencies = sorted(r[1] for r in results)
    return {"clients": clients, "requests": len(results) + len(lost), "lost": len(lost), "wall_s": round(wall, 3),
            "requests_per_s": round(len(results) / wall, 3), "tokens_per_s": round(sum(r[3] for r in results) / wall, 2),
            "p50_s": round(statistics.median(latencies), 3) if latencies else None,
            "p95_s": round(latencies[max(0, int(0.95 * len(latencies)) - 1)], 3) if latencies else None,
            "answers": {r[0]: r[2] for r in results}}


class EngineAlone:
    """The engine with no HTTP and no server, in this process, with the server's default settings on the shipped
    pair: N clients' requests (their prompts, in `requests` waves of N) driven a wave at a time with their
    canvases stacked through each forward (the ceiling), or one request at a time. As many requests as a served
    level, so both figures average over the same work."""

    def __init__(self, requests: int, threads: int):
        import torch

        from tie_lite.faces.client_settings import Defaults
        from tie_lite.runtime.session import Ensemble

        torch.set_num_threads(threads)
        self.requests, self.defaults = requests, Defaults()
        self.ensemble = Ensemble(self.defaults.load)
        self.run([PROMPTS[:2]], 2)  # warm-up

    def run(self, waves: list[list[str]], stack: int) -> float:
        """Seconds to drive `waves`, each wave's requests `stack` at a time."""
        from tie_lite.engine.tie import tie_process
        from tie_lite.runtime.drive import run_many
        from tie_lite.runtime.scheduler import SchedulerView

        members = list(range(len(self.defaults.member_names)))
        start = time.perf_counter()
        for wave in waves:
            for at in range(0, len(wave), stack):
                view = SchedulerView(self.ensemble.scheduler, members)
                run_many([tie_process(view, [{"role": "user", "content": p}], self.defaults.decode, self.defaults.tie)
                          for p in wave[at : at + stack]], self.ensemble.scheduler, max_batch=stack)
        return time.perf_counter() - start

    def waves(self, n: int) -> list[list[str]]:
        return [[PROMPTS[(k * self.requests + j) % len(PROMPTS)] for k in range(n)] for j in range(self.requests)]

    def stacked_per_s(self, n: int) -> float:
        return n * self.requests / self.run(self.waves(n), n)

    def single_per_s(self, n: int) -> float:
        return n * self.requests / self.run(self.waves(n), 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", default="1,4,8,16")
    ap.add_argument("--requests", type=int, default=6, help="requests per client")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    # the engine alone runs in this process while the server idles (an idle server takes no CPU): its ceiling
    # is measured just before and just after each served level, and the two averaged, so a machine whose speed
    # drifts (shared cores) shifts both figures alike
    engine = EngineAlone(args.requests, args.threads)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    server = subprocess.Popen([sys.executable, "-m", "tie_lite.faces.cli", "serve", "--port", str(port), "--max-batch", "16",
                               "--max-queue", "64"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        ask(httpx.Client(), url, PROMPTS[0])  # warm-up
        levels = []
        for clients in (int(c) for c in args.clients.split(",")):
            before = engine.stacked_per_s(clients)
            level = run_level(url, clients, args.requests)
            after = engine.stacked_per_s(clients)
            level["engine"] = {"stacked_per_s": round(2 / (1 / before + 1 / after), 3),
                               "stacked_before_after": [round(before, 3), round(after, 3)]}
            levels.append(level)
        base = levels[0]
        reference = dict(base["answers"])
        for level in levels:
            level["speedup"] = round(level["requests_per_s"] / base["requests_per_s"], 2)
            level["identical"] = all(reference.get(p, t) == t for p, t in level["answers"].items())
            reference.update({p: t for p, t in level["answers"].items() if p not in reference})
        health = httpx.get(f"{url}/health").json()
    finally:
        server.terminate()
        server.wait(30)
    for lv in levels:  # one at a time, for the stacking gain; the server has stopped
        e = lv["engine"]
        e["single_per_s"] = round(engine.single_per_s(lv["clients"]), 3)
        e["stacking_gain"] = round(e["stacked_per_s"] / e["single_per_s"], 2)
        lv["of_ceiling"] = round(lv["requests_per_s"] / e["stacked_per_s"], 2)
    print(f"{'clients':>7} {'req/s':>7} {'tok/s':>7} {'x1':>5} {'p50 s':>6} {'p95 s':>6} {'lost':>4} {'identical':>9} "
          f"{'ceiling':>8} {'served/ceiling':>14} {'alone':>7} {'stacking':>8}")
    for lv in levels:
        e = lv["engine"]
        print(f"{lv['clients']:>7} {lv['requests_per_s']:>7.2f} {lv['tokens_per_s']:>7.1f} {lv['speedup']:>5.2f} "
              f"{lv['p50_s']:>6.2f} {lv['p95_s']:>6.2f} {lv['lost']:>4} {lv['identical']!s:>9} "
              f"{e['stacked_per_s']:>8.2f} {lv['of_ceiling']:>14.2f} {e['single_per_s']:>7.2f} {e['stacking_gain']:>7.2f}x")
    print("req/s: served; ceiling: the engine alone, N requests stacked; alone: the same N one at a time")
    print(f"server after: {health['status']}, running {health['running']}, waiting {health['waiting']}")
    if args.json:
        for lv in levels:
            lv.pop("answers")
        Path(args.json).write_text(json.dumps({"levels": levels, "health": health, "threads": args.threads,
                                               "requests_per_client": args.requests}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
