"""Which member computes when, and where its weights are. The engine asks `use(i)` before member i
computes; the scheduler makes it resident (swapping others out when the plan says so) and counts it."""

from __future__ import annotations

from .loading import Member


class Scheduler:
    """All members resident: the plan when everything fits."""

    strategy = "resident"

    def __init__(self, members: list[Member]):
        self.loaded = members
        self.members = members
        self.current: int | None = None
        self.swaps = 0
        self.bytes_moved = 0
        self.swap_seconds = 0.0

    def select(self, indices: list[int] | None) -> None:
        """Run the next request with a subset of the loaded members (None: all of them)."""
        self.members = self.loaded if indices is None else [self.loaded[i] for i in indices]
        self.current = None

    def order(self, round_index: int) -> list[int]:
        """Snake order (A B | B A | A B ...) starting with the resident member: M-1 switches a round."""
        m = len(self.members)
        base = list(range(m)) if round_index % 2 == 0 else list(reversed(range(m)))
        if self.current is not None and self.current in base:
            k = base.index(self.current)
            base = base[k:] + list(reversed(base[:k])) if k else base
        return base

    def scoring_order(self) -> list[int]:
        """Cross-model scoring starts with whoever is resident, then walks back through the others."""
        m = len(self.members)
        first = self.current if self.current is not None else 0
        return [first] + [i for i in reversed(range(m)) if i != first]

    def use(self, index: int) -> None:
        self.current = index

    def report(self) -> dict:
        return {
            "strategy": self.strategy,
            "swaps": self.swaps,
            "bytes_moved": self.bytes_moved,
            "swap_seconds": round(self.swap_seconds, 4),
        }
