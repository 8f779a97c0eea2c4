"""The one event stream the engine emits; the CLI progress, the Gradio view and eval traces consume it.
Nothing prints from inside the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class StepFrame:
    round: int
    member: str
    forwards: int
    trajectory: Any  # sampler.Trajectory: render() / text() on demand, so silent runs pay nothing


@dataclass
class RoundScores:
    round: int
    scores: dict[str, float]
    leader: str


@dataclass
class Relay:
    round: int
    leader: str
    receivers: list[str]


@dataclass
class Swap:
    member: str
    direction: str  # "in" or "out"
    bytes: int
    seconds: float


@dataclass
class Final:
    result: Any  # tie.Result


@dataclass
class Cancelled(Exception):
    """Raised inside the loop when the caller's stop flag is set; the partial state is discarded."""

    message: str = "generation stopped"
    extra: dict = field(default_factory=dict)
