"""Reference token ids from NVlabs Fast-dLLM's own LLaDA samplers (never imported by tie-lite).

Fast-dLLM (github.com/NVlabs/Fast-dLLM, llada/generate.py) decodes LLaDA with no cache (`generate`), a prefix
cache (`generate_with_prefix_cache`) and a dual cache (`generate_with_dual_cache`), each by a fixed number of
steps or by a confidence threshold, and ranks positions by a float64 softmax. This script runs those samplers,
with Fast-dLLM's own modeling_llada.py (the copy that takes past_key_values and replace_position), under the
transformers Fast-dLLM pins (requirements.txt: 4.49.0), in a scratch virtualenv:

    bash scripts/reference/make_venv.sh /tmp/tie-lite-fastdllm-venv 4.49.0
    /tmp/tie-lite-fastdllm-venv/bin/python scripts/reference/fast_dllm.py \\
        --fast-dllm-repo /work/.mirror/NVlabs+Fast-dLLM/repo

The checkpoint is the tiny LLaDA of tests/fixtures/reference/llada/ (the real GSAI-ML/LLaDA-8B-Instruct config,
2 layers x 64, vocabulary 126,464) with SATURATING_GAINS on its weights: query and key projections 3x (attention
that depends on position, so masked positions predict different tokens) and the output head 40x (logits that
lead by tens, so float32 confidences are often exactly 1.0 and tie, as a real 7-8B model's do). The script
checks that the fixture discriminates: the float32 ranking of the step's candidates would commit other
positions at some steps, and float64 leaves no tie where a step chooses.

What it writes under --out (default tests/fixtures/reference/fast-dllm/): figures.json with the source commit,
the gains, logits at fixed positions of fixed canvases (Fast-dLLM's model), and per run the sampler, settings,
generated ids, forwards (nfe) and per step the candidates whose float32 confidence is exactly 1.0.
tests/test_native_llada.py rebuilds the checkpoint (tests/real_checkpoints.build_llada with the gains) and
decodes the same prompt with tie-lite in the matching --cache mode.

This script must not import tie_lite; it imports tests/real_checkpoints.py for the shared weight filler.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from common import git, sha256, show, top_figures  # noqa: E402  (scripts/reference/, beside this file)
from llada import (  # noqa: E402  (the LLaDA script's canvases, and where it reads Fast-dLLM from)
    CANVASES, FAST_DLLM_COMMIT, FAST_DLLM_REPO, FAST_DLLM_URL, FIXED_IDS, MASK, POSITIONS, PROMPT, compact_json)
from real_checkpoints import SATURATING_GAINS, fill_deterministic, reference_dir  # noqa: E402

FILES = {"generate.py": "llada/generate.py", "model/__init__.py": "llada/model/__init__.py",
         "model/modeling_llada.py": "llada/model/modeling_llada.py",
         "model/configuration_llada.py": "llada/model/configuration_llada.py"}
SAMPLERS = {"none": "generate", "prefix": "generate_with_prefix_cache", "dual": "generate_with_dual_cache"}
GEN_LENGTH, BLOCK = 64, 16
# (cache, steps, threshold): one token a step, two a step, and threshold decoding, in each cache mode
RUNS = [(cache, steps, thr) for cache in SAMPLERS for steps, thr in ((64, None), (32, None), (64, 0.9))]


class StepLog:
    """Wraps generate.py's get_transfer_index (the samplers call it by its module name): calls it unchanged
    and notes, per step, how float32 would have ranked the same candidates."""

    def __init__(self, original):
        self.original, self.steps = original, []

    def __call__(self, logits, temperature, remasking, mask_index, x, num_transfer_tokens, threshold=None):
        x0, transfer = self.original(logits, temperature, remasking, mask_index, x, num_transfer_tokens, threshold)
        cand = mask_index[0].nonzero().flatten()
        top = logits[0, cand].argmax(-1)
        c32 = F.softmax(logits[0, cand].float(), dim=-1).gather(-1, top[:, None])[:, 0]
        c64 = F.softmax(logits[0, cand].to(torch.float64), dim=-1).gather(-1, top[:, None])[:, 0]
        chosen = transfer[0, cand]
        k = int(chosen.sum())
        if threshold is not None:  # what float32 would have committed: every candidate at or above, at least one
            k32 = max(1, int((c32 >= threshold).sum()))
        else:
            k32 = k
        by32 = set(cand[torch.sort(c32, descending=True, stable=True).indices[:k32]].tolist())
        ordered64 = torch.sort(c64, descending=True).values
        self.steps.append({
            "candidates": len(cand),
            "committed": k,
            "saturated_fp32": int((c32 == 1.0).sum()),
            "fp32_ranking_differs": by32 != set(cand[chosen].tolist()),
            # a tie across the cut between committed and left candidates: the order is then torch.topk's (with a
            # threshold only its fallback, the single most confident candidate, is chosen by order)
            "fp64_tie_at_choice": bool(k < len(cand) and ordered64[k - 1] == ordered64[k]
                                       and (threshold is None or ordered64[0] < threshold)),
        })
        return x0, transfer


def import_fast_dllm(repo: str, commit: str, work: Path):
    """Fast-dLLM's generate module and model package, read out of the clone at `commit` into `work`."""
    for dest, path in FILES.items():
        target = work / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(show(repo, commit, path))
    sys.path.insert(0, str(work))
    return importlib.import_module("generate"), importlib.import_module("model")


def time_sampler(args, commit: str, work: Path) -> None:
    """--time: one of Fast-dLLM's samplers on a saved checkpoint (scripts/bench_fast_dllm.py calls this), timed
    from the first forward to the returned canvas; prints one JSON object (ids, seconds, forwards)."""
    generate, model_pkg = import_fast_dllm(args.fast_dllm_repo, commit, work)
    torch.set_num_threads(args.threads)
    model = model_pkg.LLaDAModelLM.from_pretrained(args.time, torch_dtype=torch.float32).eval()
    prompt = torch.tensor([[int(i) for i in args.prompt_ids.split(",")]])
    sampler = getattr(generate, SAMPLERS[args.cache])
    start = time.perf_counter()
    out, nfe = sampler(model, prompt, steps=args.gen_length, gen_length=args.gen_length, block_length=args.block_size,
                       temperature=0.0, remasking="low_confidence", mask_id=MASK, threshold=args.threshold)
    seconds = time.perf_counter() - start
    print(json.dumps({"sampler": SAMPLERS[args.cache], "commit": commit, "seconds": seconds, "forwards": nfe,
                      "ids": out[0, prompt.shape[1]:].tolist()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fast-dllm-repo", default=FAST_DLLM_REPO, help="git clone of NVlabs/Fast-dLLM")
    ap.add_argument("--fast-dllm-commit", default=FAST_DLLM_COMMIT)
    ap.add_argument("--out", default=str(reference_dir("fast-dllm")))
    ap.add_argument("--time", metavar="CHECKPOINT", help="time one sampler on this checkpoint folder instead")
    ap.add_argument("--prompt-ids", help="--time: comma-separated prompt ids")
    ap.add_argument("--cache", choices=list(SAMPLERS), default="dual", help="--time: which sampler")
    ap.add_argument("--gen-length", type=int, default=256)
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--threshold", type=float, default=None, help="--time: threshold decoding at this confidence")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import transformers

    commit = git(args.fast_dllm_repo, "rev-parse", args.fast_dllm_commit).strip()
    work = Path(tempfile.mkdtemp(prefix="tie-lite-fast-dllm-ref-"))
    if args.time:
        try:
            return time_sampler(args, commit, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    torch.set_num_threads(1)  # as the tests run; kernels may round differently with other thread counts
    try:
        generate, model_pkg = import_fast_dllm(args.fast_dllm_repo, commit, work)
        config = json.loads((reference_dir("llada") / "config.json").read_text())
        model = model_pkg.LLaDAModelLM(model_pkg.LLaDAConfig(**config)).eval()
        fill_deterministic(model, gains=SATURATING_GAINS)
        table = json.loads((reference_dir("llada") / "tensors.json").read_text())
        assert {k: list(v.shape) for k, v in model.state_dict().items()} == {r["name"]: r["shape"] for r in table}

        with torch.no_grad():
            canvases = [{"canvas": k, "ids": ids, "positions": top_figures(model(torch.tensor([ids])).logits[0],
                                                                             positions, FIXED_IDS)}
                        for k, (ids, positions) in enumerate(zip(CANVASES, POSITIONS))]
        log = StepLog(generate.get_transfer_index)
        generate.get_transfer_index = log
        runs = []
        for cache, steps, threshold in RUNS:
            log.steps = []
            out, nfe = getattr(generate, SAMPLERS[cache])(
                model, torch.tensor([PROMPT]), steps=steps, gen_length=GEN_LENGTH, block_length=BLOCK,
                temperature=0.0, remasking="low_confidence", mask_id=MASK, threshold=threshold)
            ids = out[0, len(PROMPT):].tolist()
            assert MASK not in ids and nfe == len(log.steps)
            assert not any(s["fp64_tie_at_choice"] for s in log.steps), "a float64 tie: the order is topk's"
            runs.append({"cache": cache, "sampler": SAMPLERS[cache], "gen_length": GEN_LENGTH, "block_length": BLOCK,
                         "steps": steps, "threshold": threshold, "prompt": PROMPT, "output": ids, "forwards": nfe,
                         "distinct_ids": len(set(ids)),
                         "committed_per_step": [s["committed"] for s in log.steps],
                         "saturated_fp32_per_step": [s["saturated_fp32"] for s in log.steps],
                         "fp32_ranking_differs_at": [i for i, s in enumerate(log.steps) if s["fp32_ranking_differs"]]})
            r = runs[-1]
            print(f"{cache:6} steps {steps} threshold {threshold}: {nfe} forwards, {r['distinct_ids']} distinct ids, "
                  f"{sum(r['saturated_fp32_per_step'])} saturated candidates, float32 ranking differs at "
                  f"{len(r['fp32_ranking_differs_at'])} steps")
        # (a threshold run commits every candidate above it whatever the order: ranking decides only its fallback)
        assert all(r["fp32_ranking_differs_at"] for r in runs if r["threshold"] is None), \
            "the checkpoint does not tell the precisions apart"

        figures = {
            "about": "Token ids from NVlabs Fast-dLLM's LLaDA samplers and its modeling_llada.py (transformers %s, "
                     "torch %s, 1 thread) on the tiny LLaDA of ../llada/ with saturating weights."
                     % (transformers.__version__, torch.__version__.split("+")[0]),
            "command": "bash scripts/reference/make_venv.sh /tmp/tie-lite-fastdllm-venv 4.49.0 && "
                       "/tmp/tie-lite-fastdllm-venv/bin/python scripts/reference/fast_dllm.py "
                       "--fast-dllm-repo /work/.mirror/NVlabs+Fast-dLLM/repo",
            "source": {dest: {"repo": FAST_DLLM_URL, "commit": commit, "path": path,
                              "sha256": sha256(show(args.fast_dllm_repo, commit, path))} for dest, path in FILES.items()},
            "checkpoint": {"config": "../llada/config.json", "tensors": "../llada/tensors.json",
                           "gains": SATURATING_GAINS},
            "fixed_ids": FIXED_IDS,
            "canvases": canvases,
            "runs": runs,
            "notes": [
                "get_transfer_index: x0 = argmax of the logits (temperature 0); confidence = softmax(logits in "
                "float64) gathered at x0, -inf outside the step's masked block positions; torch.topk picks "
                "num_transfer_tokens (an even split of the block's masks over its steps), or with a threshold "
                "every candidate at or above it and at least the top one.",
                "prefix / dual: each block starts with one whole-canvas forward whose logits also make the block's "
                "first step; prefix then forwards the block onwards over the prefix's cached keys and values, "
                "dual only the block over the cached prefix and suffix.",
                "saturated_fp32_per_step: candidates whose float32 softmax confidence is exactly 1.0; "
                "fp32_ranking_differs_at: steps where ranking those candidates in float32 (ties leftmost) would "
                "commit other positions.",
            ],
        }
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "figures.json").write_text(compact_json(figures) + "\n")
        print(f"wrote {out}: Fast-dLLM {commit[:12]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
