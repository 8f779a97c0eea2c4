"""Round scores for TIE. Higher is better for every score.

- tcc: minus the token change count at the watched answer positions over the round (no extra forward).
- top1 / entropy / margin: cross-model, every trajectory forwarded through every member, averaged.
- verify: put masks back on what each trajectory committed during the round and ask every member how
  likely those tokens are (mean log-probability), averaged over members and positions; end-of-text
  padding is re-masked but not scored (only the first end-of-text of a region is a decision).
- oracle: 1 when everything the trajectory committed matches the gold worked solution (a diagnostic bound).
"""

from __future__ import annotations

from tie_lite.engine.layout import TextState
from tie_lite.engine.process import run_each
from tie_lite.errors import UserError

SCORES = ("tcc", "top1", "entropy", "margin", "verify")
CROSS_MODEL = ("top1", "entropy", "margin", "verify")


def needs_cross_model(scores: str, members: int, select: str | None = None) -> bool:
    """Whether a request forwards every trajectory through every member (M canvases a forward).
    `scores` may be a comma list (eval compares several in one run)."""
    return members > 1 and (any(s in CROSS_MODEL for s in scores.split(",")) or select == "verify")


def check_score(name: str, members: int) -> None:
    if name not in SCORES + ("oracle",):
        raise UserError(f"unknown --score '{name}'; use one of {', '.join(SCORES)}")
    if name == "verify" and members < 2:
        raise UserError("--score verify asks the other members to re-check a trajectory; give at least two --model")


def round_scores(trajs: list, kind: str, order: list[int], gold: TextState | None = None,
                 parallel: bool = False):
    """Process (see process.py) returning one score per trajectory. Cross-model forwards go member by
    member in `order` (whichever is resident first), so scoring adds no swaps; with `parallel` (every
    member on a device of its own) the judges score at the same time."""
    if kind == "tcc":
        return [-t.round_tcc for t in trajs]
    if kind == "oracle":
        return [1.0 if matches_gold(t.state(), gold) else 0.0 for t in trajs]
    views = dict(zip(order, (yield from run_each([trajs[j].judge(trajs, kind) for j in order], parallel))))
    # summed in member order whatever the forward order, so swapped runs match resident ones bit for bit
    return [sum(views[j][i] for j in sorted(views)) / len(views) for i in range(len(trajs))]


def matches_gold(state: TextState, gold: TextState | None) -> bool:
    if gold is None:
        raise UserError("oracle methods need a task whose generator knows the gold worked solution")
    norm = lambda s: s.replace(" ", "")  # noqa: E731
    ok = norm(gold.reasoning).startswith(norm(state.reasoning))
    ok = ok and (not state.reasoning_done or norm(state.reasoning) == norm(gold.reasoning))
    ok = ok and norm(gold.answer).startswith(norm(state.answer))
    return ok and (not state.answer_done or norm(state.answer) == norm(gold.answer))
