"""The engine's processes and what they ask for. The engine is written as generators that yield `Forward`
requests and receive one `Row` per canvas; a driver decides when and how to compute them (here: one
request at a time, or processes side by side; runtime/drive.py: many problems batched)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

PAD = -1  # stacked canvases are right-padded with this id; the member masks it out of attention


@dataclass
class Forward:
    """Canvases one member computes. The answer sent back is one `Row` per canvas (runtime.loading.Member.forward)."""

    member: object  # a loaded member (runtime/loading.py)
    ids: torch.Tensor  # (rows, length)
    need: list[torch.Tensor] | None = None  # per row: the canvas positions whose logits are read; None: all
    store: bool = False  # keep each row's keys and values (a block refresh of the KV cache)
    caches: list | None = None  # per row: a CanvasCache to reuse; then only `query` positions are recomputed
    query: list[torch.Tensor] | None = None
    canvas_lengths: list[int] | None = None  # per row, when rows of different lengths were stacked (right-padded)
    # per row: (position where block 0 starts, block size); block-causal members (LLaDA2) attend by blocks
    blocks: list[tuple[int, int]] | None = None

    @property
    def lengths(self) -> list[int]:
        return self.canvas_lengths or [self.ids.shape[1]] * self.ids.shape[0]

    @property
    def kind(self) -> tuple:
        """Requests of one kind stack into one forward."""
        return (self.need is None, self.store, self.caches is not None)

    @staticmethod
    def stack(requests: list[Forward]) -> Forward:
        if len(requests) == 1:
            return requests[0]
        first = requests[0]

        def joined(field):
            lists = [getattr(r, field) for r in requests]
            return None if lists[0] is None else [x for part in lists for x in part]

        width = max(r.ids.shape[1] for r in requests)  # right-padded; Member.forward masks the padding out
        ids = torch.cat([torch.nn.functional.pad(r.ids, (0, width - r.ids.shape[1]), value=PAD) for r in requests])
        lengths = [n for r in requests for n in r.lengths]
        return Forward(first.member, ids, joined("need"), first.store, joined("caches"), joined("query"), lengths,
                       joined("blocks"))


@dataclass
class Row:
    """One canvas's share of a forward: its logits (indexable by canvas position) and, when stored, its cache."""

    logits: object
    cache: object = None


class PositionLogits:
    """Logits at some canvas positions, indexed by canvas position like a whole-canvas tensor would be."""

    def __init__(self, positions: torch.Tensor, values: torch.Tensor):
        self.positions, self.values = positions, values
        size = int(positions.max()) + 1 if positions.numel() else 0
        self._row = torch.full((size,), -1, dtype=torch.long)
        self._row[positions] = torch.arange(positions.numel())

    def __getitem__(self, positions: torch.Tensor) -> torch.Tensor:
        rows = self._row[positions] if positions.numel() else positions
        if positions.numel() and bool((rows < 0).any()):
            raise IndexError("logits were not computed at some of these positions")
        return self.values[rows.to(self.values.device)]



def run(process, scheduler=None):
    """Drive one process to its result, computing each forward as it is asked for."""
    try:
        request = next(process)
        while True:
            if scheduler is not None:
                scheduler.use_member(request.member)
            request = process.send(request.member.forward(request))
    except StopIteration as stop:
        return stop.value


def run_side_by_side(processes: list) -> list:
    """Drive processes whose members sit on devices of their own at the same time, one thread each: torch
    leaves the GIL inside its kernels, so the devices compute together. Every process owns its state (its
    trajectory, its generator), so the results are those of running them one after another."""
    if len(processes) < 2:
        return [run(p) for p in processes]
    with ThreadPoolExecutor(len(processes)) as pool:
        return list(pool.map(run, processes))


def run_each(processes: list, side_by_side: bool):
    """Process returning every process's result: side by side (members on devices of their own), or one
    after another through this process's own driver."""
    if side_by_side:
        return run_side_by_side(processes)
    results = []
    for process in processes:
        results.append((yield from process))
    return results
