"""Running decode processes. The engine is written as generators that yield `Forward` requests and
receive logits; a driver decides when and how to compute them. One request at a time for a single
generation; many problems at once (one batched forward per member and canvas length) for eval."""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch


PAD = -1  # stacked canvases are right-padded with this id; the member masks it out of attention


@dataclass
class Forward:
    """Canvases one member computes. The answer sent back is one `Row` per canvas (loading.Member.forward)."""

    member: object  # loading.Member
    ids: torch.Tensor  # (rows, length)
    need: list[torch.Tensor] | None = None  # per row: the canvas positions whose logits are read; None: all
    store: bool = False  # keep each row's keys and values (a block refresh of the KV cache)
    caches: list | None = None  # per row: a CanvasCache to reuse; then only `query` positions are recomputed
    query: list[torch.Tensor] | None = None
    canvas_lengths: list[int] | None = None  # per row, when rows of different lengths were stacked (right-padded)

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
        return Forward(first.member, ids, joined("need"), first.store, joined("caches"), joined("query"), lengths)


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


def forward_batch(pending: dict, scheduler=None, max_batch: int = 64) -> dict:
    """One stacked forward for some of `pending` ({key: Forward}): the requests for one member and canvas
    length, the resident member's first, the largest group otherwise. Returns {key: logits} for those."""
    groups = defaultdict(list)
    for k, req in pending.items():  # canvases of different lengths stack (padded), cached ones only alike
        groups[(id(req.member), req.kind, req.ids.shape[1] if req.caches is not None else None)].append(k)
    current = scheduler.members[scheduler.current] if scheduler is not None and scheduler.current is not None else None
    key = max(groups, key=lambda g: (current is not None and g[0] == id(current), len(groups[g])))
    ks = groups[key][:max_batch]
    member = pending[ks[0]].member
    if scheduler is not None:
        scheduler.use_member(member)
    rows = member.forward(Forward.stack([pending[k] for k in ks]))
    out, at = {}, 0
    for k in ks:
        n = pending[k].ids.shape[0]
        out[k], at = rows[at : at + n], at + n
    return out


def run_many(processes, scheduler=None, on_done=None, max_batch: int = 64) -> list:
    """Drive many independent processes together. Requests for the same member and canvas length are
    stacked into one forward (the resident member first), so eval pays per batch, not per problem."""
    results = [None] * len(processes)
    pending: dict[int, Forward] = {}

    def advance(k, value=None):
        try:
            pending[k] = processes[k].send(value) if value is not None else next(processes[k])
        except StopIteration as stop:
            pending.pop(k, None)
            results[k] = stop.value
            if on_done is not None:
                on_done(k, stop.value)

    for k in range(len(processes)):
        advance(k)
    while pending:
        for k, part in forward_batch(pending, scheduler, max_batch).items():
            advance(k, part)
    return results
