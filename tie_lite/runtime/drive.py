"""Driving many decode processes together: requests for one member stack into one forward (eval, the
server's batching)."""

from __future__ import annotations

from collections import defaultdict

from tie_lite.engine.process import Forward


def forward_batch(pending: dict, scheduler=None, max_batch: int = 64, waited: dict | None = None,
                  patience: int = 1) -> dict:
    """One stacked forward for some of `pending` ({key: Forward}): the requests of one kind for one member,
    the resident member's first, the largest group otherwise. With `waited` ({key: forwards it has been passed
    over}), the group of the request passed over longest goes first once it has waited `patience` forwards: a
    request whose member is not the resident one (a long decode or token editing on another member) waits that
    long at most, never until the other is done. Returns {key: logits} for those."""
    groups = defaultdict(list)
    for k, req in pending.items():  # canvases (and their caches) of different lengths stack, right-padded
        groups[(id(req.member), req.kind)].append(k)
    current = scheduler.members[scheduler.current] if scheduler is not None and scheduler.current is not None else None
    waited = waited or {}

    def priority(g):
        longest = max(waited.get(k, 0) for k in groups[g])
        overdue = longest if longest >= patience else 0
        return (overdue, current is not None and g[0] == id(current), len(groups[g]))

    key = max(groups, key=priority)
    ks = sorted(groups[key], key=lambda k: -waited.get(k, 0))  # within the forward's limit, the longest-waiting first
    ks = ks[:max_batch]
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
    """Drive many independent processes together. Requests of one kind for the same member are stacked into
    one forward (the resident member first), so eval pays per batch, not per problem."""
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
