"""Running decode processes. The engine is written as generators that yield `Forward` requests and
receive logits; a driver decides when and how to compute them. One request at a time for a single
generation; many problems at once (one batched forward per member and canvas length) for eval."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch


@dataclass
class Forward:
    member: object  # loading.Member
    ids: torch.Tensor  # (batch, length)


def run(process, scheduler=None):
    """Drive one process to its result, computing each forward as it is asked for."""
    try:
        request = next(process)
        while True:
            if scheduler is not None:
                scheduler.use_member(request.member)
            request = process.send(request.member.logits(request.ids))
    except StopIteration as stop:
        return stop.value


def forward_batch(pending: dict, scheduler=None, max_batch: int = 64) -> dict:
    """One stacked forward for some of `pending` ({key: Forward}): the requests for one member and canvas
    length, the resident member's first, the largest group otherwise. Returns {key: logits} for those."""
    groups = defaultdict(list)
    for k, req in pending.items():
        groups[(id(req.member), req.ids.shape[1])].append(k)
    current = scheduler.members[scheduler.current] if scheduler is not None and scheduler.current is not None else None
    key = max(groups, key=lambda g: (current is not None and g[0] == id(current), len(groups[g])))
    ks = groups[key][:max_batch]
    member = pending[ks[0]].member
    if scheduler is not None:
        scheduler.use_member(member)
    sizes = [pending[k].ids.shape[0] for k in ks]
    logits = member.logits(torch.cat([pending[k].ids for k in ks]))
    return dict(zip(ks, torch.split(logits, sizes)))


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
