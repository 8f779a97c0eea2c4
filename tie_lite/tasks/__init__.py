"""Task generators and answer checkers used by eval and training."""

from ..errors import UserError
from .arithmetic import (
    ANSWER_MARKER,
    ArithmeticTask,
    Check,
    Problem,
    ProductsThenSum,
    SumThenProduct,
    parse_answer,
)

TASKS: dict[str, ArithmeticTask] = {t.name: t for t in (SumThenProduct(), ProductsThenSum())}

# Disjoint seed ranges: training streams use seeds >= TRAIN_SEED_BASE, validation and evaluation
# problems are drawn with seeds below it, validation VALIDATION_SEED by default.
TRAIN_SEED_BASE = 1_000_000
VALIDATION_SEED = 1
EVAL_SEED = 2


def get_task(name: str) -> ArithmeticTask:
    if name not in TASKS:
        raise UserError(f"unknown task '{name}'; choose one of: {', '.join(TASKS)} (see `tie-lite eval --list-tasks`)")
    return TASKS[name]


__all__ = ["ANSWER_MARKER", "Check", "Problem", "TASKS", "get_task", "parse_answer", "TRAIN_SEED_BASE",
           "VALIDATION_SEED", "EVAL_SEED"]
