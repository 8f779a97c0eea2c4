"""Loading an ensemble once and running requests on it: shared by the CLI, eval and the chat UI."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass

import torch

from .errors import UserError
from .loading import Member, load_member
from .registry import DEFAULT_ENSEMBLE
from .scheduler import Scheduler
from .sampler import DecodeSettings
from .tie import Result, TieSettings, run_tie


@dataclass(frozen=True)
class LoadSettings:
    models: tuple[str, ...] = DEFAULT_ENSEMBLE
    quant: str = "none"
    backend: str = "bitsandbytes"
    device: str = "cpu"
    trust_remote_code: bool = False
    allow_pickle: bool = False
    max_memory: str | None = None


class Ensemble:
    """Loaded members plus their scheduler; reused across requests."""

    def __init__(self, settings: LoadSettings, on_load=None):
        if not settings.models:
            raise UserError("give at least one --model")
        self.settings = settings
        start = time.perf_counter()
        members: list[Member] = []
        for spec in settings.models:
            if on_load is not None:
                on_load(spec)
            members.append(
                load_member(
                    spec,
                    quant=settings.quant,
                    backend=settings.backend,
                    device=settings.device,
                    trust_remote_code=settings.trust_remote_code,
                    allow_pickle=settings.allow_pickle,
                )
            )
        self.load_seconds = time.perf_counter() - start
        self.scheduler = Scheduler(members)

    @property
    def members(self) -> list[Member]:
        return self.scheduler.members

    def run(self, messages, decode: DecodeSettings, tie: TieSettings, on_event=None, should_stop=None, gold=None,
            members: list[int] | None = None) -> Result:
        """Decode with every member, or with the members at `members` (a member alone is TIE with M = 1)."""
        device = self.members[0].device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.scheduler.select(members)
        result = run_tie(self.scheduler, messages, decode, tie, on_event, should_stop, gold)
        result.memory["peak_bytes"] = peak_bytes(device)
        result.memory["footprint_bytes"] = {m.name: m.footprint_bytes for m in self.members}
        return result


def peak_bytes(device: torch.device) -> int:
    """Peak device memory on CUDA; peak resident memory of this process on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
