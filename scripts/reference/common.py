"""What both reference scripts do the same way: read the authors' files out of a git clone at a commit, and
record logits at fixed positions. Runs in the scratch virtualenv; imports no tie_lite."""

from __future__ import annotations

import hashlib
import subprocess

import torch


def git(repo: str, *args: str) -> str:
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, text=True).stdout


def show(repo: str, commit: str, path: str) -> str:
    """A file as it stood at `commit` (the clones have no work tree to read from)."""
    return git(repo, "show", f"{commit}:{path}")


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def top_figures(logits: torch.Tensor, positions: list[int], fixed_ids: list[int]) -> list[dict]:
    """Per position: the top-5 ids and their logits, and the logits of `fixed_ids` (float32)."""
    rows = []
    for p in positions:
        row = logits[p].float()
        values, ids = row.topk(5)
        rows.append({
            "position": p,
            "top5_ids": ids.tolist(),
            "top5_logits": [float(v) for v in values],
            "fixed_logits": [float(row[i]) for i in fixed_ids],
        })
    return rows
