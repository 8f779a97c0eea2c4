#!/usr/bin/env python
"""Benchmark: the block KV cache and logits at the read positions only, on a member shaped like a real one.

    python scripts/bench_cache.py                 # figures to stdout (JSON with --json)
    python scripts/bench_cache.py --doc docs/BENCHMARKS.md --plot docs/cache-growth.png

The bench members: LLaDA's architecture and hub conventions (tests/real_checkpoints.py builds the tokenizer
and config), the real 126,464-row vocabulary, 8 layers x 512, random weights (two seeds, so TIE has two
members that disagree). Random weights predict almost uniformly and the same token everywhere, which tests
neither threshold decoding nor the ranking; so the query and key projections are sharpened (--qk-std:
attention that depends on position, so positions predict different tokens) and the output head scaled
(--head-scale) until the members are sure of themselves as trained ones are. The figures report the tokens
committed per step, and `member_statistics` checks the members: distinct ids in a decode and the share of
candidates whose float32 confidence is exactly 1.0.

Everything is measured in one run and reported as ratios to one member decoded as tie-lite did before
(no cache, logits over the whole canvas): gen 256, block 32, one token a step unless threshold.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the hub-convention checkpoint builders the tests use

from real_checkpoints import build_llada  # noqa: E402

from tie_lite.engine.process import Forward  # noqa: E402
from tie_lite.engine.sampler import DecodeSettings, Trajectory  # noqa: E402
from tie_lite.engine.tie import TieSettings  # noqa: E402
from tie_lite.runtime.session import Ensemble, LoadSettings, read_positions  # noqa: E402

PROMPT = [{"role": "user", "content": "hi , what is 12 + 34 * 5 ? You are a helpful assistant . Answer : "
                                      "the answer is what ?"}]


def build_member(root: Path, seed: int, layers: int, width: int, head_scale: float, qk_std: float = 0.1) -> str:
    """A LLaDA-architecture checkpoint with the real vocabulary and random weights, saved in the hub layout:
    std 0.02 (LLaDA's init_std), `qk_std` for the query and key projections, `head_scale` for the head."""
    from tie_lite.models.llada import LLaDAConfig, LLaDAModelLM

    ckpt = build_llada(root, name=f"bench-{seed}")
    for f in ckpt.path.glob("model*.safetensors*"):
        f.unlink()
    config = json.loads((ckpt.path / "config.json").read_text())
    config.update(d_model=width, n_layers=layers, n_heads=width // 64, n_kv_heads=width // 64,
                  mlp_hidden_size=3 * width, max_sequence_length=4096)
    config.pop("auto_map", None)
    torch.manual_seed(seed)
    model = LLaDAModelLM(LLaDAConfig(**{k: v for k, v in config.items() if k not in ("architectures",)}))
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(head_scale / model.config.init_std)
        for name, param in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                param.mul_(qk_std / model.config.init_std)
    model.to(torch.bfloat16).save_pretrained(ckpt.path)
    return str(ckpt.path)


class WholeCanvasLogits(Trajectory):
    """tie-lite before this change: every step computes logits over the whole canvas."""

    def forward_request(self, settings, plan):
        return Forward(self.member, self.ids[None])


def decode_once(ensemble, decode, tie, members, before=False) -> dict:
    import tie_lite.engine.tie as tie_module

    if before:
        tie_module.Trajectory = WholeCanvasLogits
    try:
        start = time.perf_counter()
        result = ensemble.run(PROMPT, decode, tie, members=members)
        seconds = time.perf_counter() - start
    finally:
        tie_module.Trajectory = Trajectory
    committed = decode.gen_length * len(members)  # every member completes its canvas
    return dict(seconds=round(seconds, 3), forwards=result.steps, text=result.text,
                tokens_per_forward=round(committed / max(1, result.steps), 2))


class ConfidenceLog(Trajectory):
    """Notes, at each step, the float32 confidence of every candidate (how saturated the member is)."""

    log: list

    def step(self, settings, logits, plan=None):
        plan = plan or self.plan_step()
        if plan is not None:
            rows = logits[plan.cand].float()
            self.log.append(torch.softmax(rows, -1).gather(-1, rows.argmax(-1)[:, None])[:, 0])
        return super().step(settings, logits, plan)


def member_statistics(member, decode) -> dict:
    """One decode of `member` (untimed): distinct generated ids, and the share of the steps' candidates whose
    float32 confidence is exactly 1.0 or above 0.9. A member that predicts one token everywhere, or is never
    sure, tests neither the ranking nor threshold decoding."""
    t = ConfidenceLog.start(member, PROMPT, decode)
    t.log, t.watch = [], False
    t.run_blocks(decode, 10**9)
    conf = torch.cat(t.log)
    ids = t.ids[t.layout.prompt_len:].tolist()
    return dict(distinct_ids=len(set(ids)), generated=len(ids), saturated_share=round(float((conf == 1.0).float().mean()), 3),
                above_threshold_share=round(float((conf >= decode.threshold).float().mean()), 3), steps=len(t.log))


def block_ms_per_token(ensemble, gen: int, block: int, cache: str, before: bool, steps: int) -> float:
    """ms per committed token over the first `steps` steps of one member (one token a step)."""
    member = ensemble.members[0]
    decode = DecodeSettings(gen_length=gen, block_size=block, answer_length=None, cache=cache)
    cls = WholeCanvasLogits if before else Trajectory
    t = cls.start(member, PROMPT, decode)
    t.watch = False
    proc = t.advance(decode, gen // block)
    start = time.perf_counter()
    request = next(proc)
    for _ in range(steps):
        request = proc.send(request.member.forward(request))
    return 1000 * (time.perf_counter() - start) / steps


def logits_bytes(ensemble, decode, tie) -> dict:
    """Working memory of one forward, as the memory plan estimates it, before and after."""
    est = ensemble.estimates[0]
    total = len(ensemble.members[0].prompt_ids(PROMPT)) + decode.gen_length
    before = est.working_bytes(total, 2)
    after = est.working_bytes(total, 2, read_positions(decode, tie), cache=decode.cache != "none")
    return dict(canvas_positions=total, before_bytes=before, after_bytes=after)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--gen-length", type=int, default=256)
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--head-scale", type=float, default=0.8, help="std of the output head's random weights")
    ap.add_argument("--qk-std", type=float, default=0.1, help="std of the query and key projections' weights")
    ap.add_argument("--growth", default="64,128,256,512,1024", help="gen lengths for the ms/token plot")
    ap.add_argument("--growth-steps", type=int, default=8, help="steps timed per length, uncached")
    ap.add_argument("--growth-only", action="store_true", help="only the ms/token growth table")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--doc", help="write the table into this markdown file (between bench-cache markers)")
    ap.add_argument("--plot", help="write the growth plot here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="tie-lite-bench-cache-"))
    try:
        specs = tuple(build_member(root, seed, args.layers, args.width, args.head_scale, args.qk_std)
                      for seed in (0, 1))
        ensemble = Ensemble(LoadSettings(models=specs, dtype="float32"))
        figures = run(ensemble, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    figures["machine"] = dict(cpu=platform.processor() or platform.machine(), threads=args.threads,
                              torch=torch.__version__)
    if args.json:
        print(json.dumps(figures, indent=1))
    else:
        print(markdown(figures))
    if args.plot:
        plot(figures["growth"], args.plot)
    if args.doc:
        write_doc(args.doc, markdown(figures))
    return 0


def run(ensemble, args) -> dict:
    base = dict(gen_length=args.gen_length, block_size=args.block_size, answer_length=None)
    tie = TieSettings(interval=args.block_size, score="verify")
    one = TieSettings(interval=args.block_size, score="tcc")
    rows = {}

    def row(name, decode, members, tie_settings, before=False):
        r = decode_once(ensemble, decode, tie_settings, members, before)
        print(f"{name}: {r['seconds']} s, {r['forwards']} forwards", file=sys.stderr, flush=True)
        rows[name] = r

    if args.growth_only:
        row = lambda *a, **k: None  # noqa: E731
    row("one member, before (no cache, whole-canvas logits)", DecodeSettings(**base), [0], one, before=True)
    row("one member, no cache, read positions only", DecodeSettings(**base), [0], one)
    row("one member, prefix cache", DecodeSettings(**base, cache="prefix"), [0], one)
    row("one member, dual cache", DecodeSettings(**base, cache="dual"), [0], one)
    row("one member, dual cache + threshold", DecodeSettings(**base, cache="dual", unmask="threshold",
                                                             threshold=args.threshold), [0], one)
    row("TIE 2 members (verify), before", DecodeSettings(**base), [0, 1], tie, before=True)
    row("TIE 2 members (verify), dual cache + threshold",
        DecodeSettings(**base, cache="dual", unmask="threshold", threshold=args.threshold), [0, 1], tie)
    ref = rows.get("one member, before (no cache, whole-canvas logits)", {}).get("seconds")
    for r in rows.values():
        r["speedup"] = round(ref / r["seconds"], 2)
    growth = {"lengths": [int(x) for x in args.growth.split(",")], "before_ms": [], "dual_ms": []}
    for gen in growth["lengths"]:
        growth["before_ms"].append(round(block_ms_per_token(ensemble, gen, args.block_size, "none", True,
                                                            args.growth_steps), 1))
        growth["dual_ms"].append(round(block_ms_per_token(ensemble, gen, args.block_size, "dual", False,
                                                          args.block_size), 1))
        print(f"growth gen {gen}: {growth['before_ms'][-1]} vs {growth['dual_ms'][-1]} ms/token", file=sys.stderr)
    memory = logits_bytes(ensemble, DecodeSettings(**base, cache="dual"), tie)
    return dict(settings=dict(layers=args.layers, width=args.width, vocab=ensemble.estimates[0].dims["vocab"],
                              gen_length=args.gen_length, block_size=args.block_size, threshold=args.threshold,
                              head_scale=args.head_scale),
                rows=rows, growth=growth, memory=memory)


def markdown(f: dict) -> str:
    s = f["settings"]
    lines = [f"Bench member: LLaDA architecture, {s['layers']} layers x {s['width']}, vocabulary {s['vocab']:,}, random "
             f"weights (head std {s['head_scale']}); gen {s['gen_length']}, block {s['block_size']}, free layout; "
             f"{f['machine']['threads']} threads, torch {f['machine']['torch']}.", "",
             "| run | seconds | forwards (scoring included) | tokens per forward | speed vs one member before |", "|---|---|---|---|---|"]
    for name, r in f["rows"].items():
        lines.append(f"| {name} | {r['seconds']} | {r['forwards']} | {r['tokens_per_forward']} | {r['speedup']}x |")
    m = f["memory"]
    lines += ["", f"Working memory of one verify forward (2 canvases of {m['canvas_positions']} positions, the memory "
              f"plan's estimate): {m['before_bytes'] / 2**20:.0f} MiB before, {m['after_bytes'] / 2**20:.0f} MiB with "
              f"read-position logits and the dual cache.", "",
              "| gen length | " + " | ".join(map(str, f["growth"]["lengths"])) + " |",
              "|---" * (1 + len(f["growth"]["lengths"])) + "|",
              "| ms/token, before | " + " | ".join(map(str, f["growth"]["before_ms"])) + " |",
              "| ms/token, dual cache | " + " | ".join(map(str, f["growth"]["dual_ms"])) + " |"]
    return "\n".join(lines)


def plot(growth: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(growth["lengths"], growth["before_ms"], "o-", label="no cache, whole-canvas logits (before)")
    ax.plot(growth["lengths"], growth["dual_ms"], "s-", label="dual cache, read-position logits")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("generation length")
    ax.set_ylabel("ms per token (one member)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_doc(path: str, block: str, marker: str = "bench-cache") -> None:
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    doc = Path(path).read_text()
    if start in doc:
        head, rest = doc.split(start, 1)
        doc = head + start + "\n" + block + "\n" + end + rest.split(end, 1)[1]
    else:
        doc += f"\n{start}\n{block}\n{end}\n"
    Path(path).write_text(doc)


if __name__ == "__main__":
    sys.exit(main())
