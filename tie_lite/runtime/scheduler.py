"""Which member computes when, and where its weights are.

The memory plan (DESIGN.md section 4): given each member's weight bytes at its quantization, the working
memory of one forward, and a device budget,
- everything fits -> all members resident;
- each member fits alone -> whole members swap between the device and host memory (or, on a CPU, the
  memory-mapped checkpoint); the members run in a snake (A B | B A | A B ...) so the member that ends a round
  begins the next: M - 1 swaps a round instead of M;
- a member alone does not fit -> for a mixture of experts whose other weights fit, its routed experts stay
  in host memory and compute there (llama.cpp's --cpu-moe): only each MoE layer's activations cross, per
  forward; otherwise accelerate layer offload for that member.

The engine asks `use(i)` before member i computes; the scheduler makes it resident (evicting the least
recently used members when the budget says so) and counts what it moved. Only relay state (canvas ids and
a few floats of score history) crosses between members; weights never do.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tie_lite.checks import format_size
from tie_lite.engine.events import Swap
from tie_lite.errors import UserError
from tie_lite.runtime.loading import Member

STRATEGIES = ("resident", "swap", "offload")
EXPERTS_ON_HOST = "experts-on-host"  # a member placement: routed experts in host memory, the rest on the device



# --- the plan: pure decisions on sizes, printable before anything loads ----------------------------------


@dataclass(frozen=True)
class Need:
    """What one member needs from the device."""

    name: str
    weight_bytes: int  # its weights on the device at its quantization
    working_bytes: int  # one forward at the requested lengths (logits, activations, sampler work)
    layer_bytes: int = 0  # the largest piece layer offload must still hold on the device
    reload: bool = False  # leaves the device by being released and reloaded (bitsandbytes 8-bit), not moved
    source_bytes: int = 0  # what a reload reads from disk
    expert_bytes: int = 0  # a mixture of experts' routed experts (what may stay in host memory)
    host_step_bytes: int = 0  # what crosses between device and host per forward when they do


@dataclass
class Plan:
    device: str
    budget_bytes: int
    budget_source: str  # "--max-memory", "free device memory", "available RAM"
    needs: list[Need]
    strategy: str
    placement: list[str]  # per member: resident | swap | offload | experts-on-host
    capacity_bytes: int  # the budget less the largest working memory: what weights may occupy at once
    cross_model: bool
    swaps_per_round: int
    bytes_per_round: int
    reloads_per_round: int
    orders: list[list[int]]  # the first rounds' execution order, scoring included
    warnings: list[str] = field(default_factory=list)

    @property
    def total_weight_bytes(self) -> int:
        return sum(n.weight_bytes for n in self.needs)

    @property
    def working_bytes(self) -> int:
        return max((n.working_bytes for n in self.needs), default=0)

    def device_bytes(self, k: int) -> int:
        """What member k may hold on the device: all its weights, all but its routed experts when they stay on
        the host, or under offload, the whole capacity."""
        need = self.needs[k]
        if self.placement[k] == EXPERTS_ON_HOST:
            return need.weight_bytes - need.expert_bytes
        return min(need.weight_bytes, self.capacity_bytes)

    @property
    def host_step_bytes(self) -> int:
        """Bytes crossing between device and host per forward of the members whose experts stay on the host."""
        return sum(n.host_step_bytes for n, p in zip(self.needs, self.placement) if p == EXPERTS_ON_HOST)

    def to_json(self) -> dict:
        return {
            "device": self.device,
            "budget_bytes": self.budget_bytes,
            "budget_source": self.budget_source,
            "strategy": self.strategy,
            "capacity_bytes": self.capacity_bytes,
            "working_bytes": self.working_bytes,
            "total_weight_bytes": self.total_weight_bytes,
            "members": [
                {"name": n.name, "weight_bytes": n.weight_bytes, "working_bytes": n.working_bytes,
                 "largest_layer_bytes": n.layer_bytes, "placement": p, "moves_by": "reload" if n.reload else "copy",
                 "expert_bytes": n.expert_bytes, "host_step_bytes": n.host_step_bytes if p == EXPERTS_ON_HOST else 0}
                for n, p in zip(self.needs, self.placement)
            ],
            "cross_model_scoring": self.cross_model,
            "swaps_per_round": self.swaps_per_round,
            "reloads_per_round": self.reloads_per_round,
            "bytes_per_round": self.bytes_per_round,
            "order": [[self.needs[i].name for i in o] for o in self.orders],
            "warnings": self.warnings,
        }


def make_plan(needs: list[Need], budget: int, *, device: str = "cpu", budget_source: str = "--max-memory",
              cross_model: bool = False, quant: str = "none", flag: str = "--max-memory") -> Plan:
    """Choose resident / swap / offload for `needs` under `budget`; UserError when nothing can run in it."""
    if not needs:
        raise UserError("give at least one --model")
    working = max(n.working_bytes for n in needs)
    capacity = budget - working
    total = sum(n.weight_bytes for n in needs)
    warnings: list[str] = []
    if total <= capacity:
        strategy, placement = "resident", ["resident"] * len(needs)
    else:
        placement = []
        for n in needs:
            if n.weight_bytes <= capacity:
                placement.append("swap")
                continue
            if n.expert_bytes and device != "cpu" and n.weight_bytes - n.expert_bytes <= capacity:  # host != device
                placement.append(EXPERTS_ON_HOST)
                warnings.append(
                    f"'{n.name}' ({format_size(n.weight_bytes)}) does not fit {format_size(capacity)} alone: its routed "
                    f"experts ({format_size(n.expert_bytes)}) stay in host memory and compute there, attention, "
                    f"embeddings, shared experts and dense layers ({format_size(n.weight_bytes - n.expert_bytes)}) on "
                    f"the {device}; about {format_size(n.host_step_bytes)} of activations cross per forward"
                )
                continue
            if capacity < n.layer_bytes or n.layer_bytes == 0:
                least = (n.layer_bytes or n.weight_bytes) + working
                raise UserError(
                    f"{flag} {format_size(budget)} is too small for '{n.name}' even with layer offload: it needs at "
                    f"least {format_size(least)} ({format_size(n.layer_bytes or n.weight_bytes)} for its largest "
                    f"layer + {format_size(working)} working memory); raise {flag}, use --quant 4bit, or lower "
                    f"--gen-length"
                )
            if device == "cpu" and quant != "none":
                raise UserError(
                    f"{flag} {format_size(budget)} is too small for '{n.name}' alone at --quant {quant} "
                    f"({format_size(n.weight_bytes)} + {format_size(working)} working memory), and layer offload on "
                    f"the CPU needs --quant none; raise {flag} to at least {format_size(n.weight_bytes + working)}"
                )
            placement.append("offload")
            on_device = max(0, capacity - n.layer_bytes) / max(1, n.weight_bytes)  # accelerate keeps room for one
            warnings.append(
                f"'{n.name}' ({format_size(n.weight_bytes)}) does not fit {format_size(capacity)} alone: accelerate "
                f"keeps about {100 * on_device:.0f}% of its layers on the {device} and streams the rest in for every "
                f"forward pass, which is much slower"
                + (f"; bitsandbytes keeps offloaded layers unquantized ({quant} is lost for them, so they take "
                   f"2-4x the memory in host RAM and move 2-4x the bytes)" if quant != "none" else "")
            )
        strategy = "offload" if "offload" in placement else "swap"
        on_device = sum(n.weight_bytes - (n.expert_bytes if p == EXPERTS_ON_HOST else 0) for n, p in zip(needs, placement))
        if EXPERTS_ON_HOST in placement and "offload" not in placement and on_device <= capacity:
            strategy = "resident"  # what stays on the device fits at once: nothing swaps
            placement = [p if p == EXPERTS_ON_HOST else "resident" for p in placement]
    plan = Plan(device=device, budget_bytes=budget, budget_source=budget_source, needs=list(needs),
                strategy=strategy, placement=placement, capacity_bytes=capacity, cross_model=cross_model,
                swaps_per_round=0, bytes_per_round=0, reloads_per_round=0, orders=[], warnings=warnings)
    if strategy != "resident":
        sizes = [plan.device_bytes(k) for k in range(len(needs))]
        sim = simulate(sizes, capacity, cross_model=cross_model, rounds=6)
        plan.orders = sim["orders"][:3]
        steady = sim["per_round"][-1]  # later rounds repeat; the first may start from a different residency
        plan.swaps_per_round = steady["swaps"]
        plan.bytes_per_round = steady["bytes"]
        plan.reloads_per_round = sum(1 for k in steady["in"] if needs[k].reload)
        if plan.reloads_per_round:
            warnings.append(
                "8-bit bitsandbytes members cannot move between devices (bitsandbytes issue 1815): each swap "
                "reloads them from their checkpoint; --quant 4bit moves packed weights instead"
            )
    else:
        plan.orders = [list(range(len(needs))), list(reversed(range(len(needs))))]
    return plan


def simulate(sizes: list[int], capacity: int, *, cross_model: bool = False, rounds: int = 4,
             resident: list[int] | None = None) -> dict:
    """Run the scheduler's residency policy on sizes alone: the orders and swaps per round it would produce."""
    sched = Scheduler([], strategy="swap", capacity=capacity, stores=None, sizes=[])
    for k, size in enumerate(sizes):  # loading, in member order, as the session does
        sched.reserve(size)
        sched.add(_Sized(f"m{k}", size), size=size)
    if resident is not None:
        sched.resident, sched.recency = set(resident), list(resident)
    sched.reset_counters()
    orders, per_round = [], []
    for r in range(rounds):
        before = (sched.swaps, sched.bytes_moved, len(sched.swapped_in))
        order = sched.order(r)
        for i in order:
            sched.use(i)
        seq = list(order)
        if cross_model and len(sizes) > 1:
            scoring = sched.scoring_order()
            for j in scoring:
                sched.use(j)
            seq += scoring
        orders.append(seq)
        per_round.append({"swaps": sched.swaps - before[0], "bytes": sched.bytes_moved - before[1],
                          "in": sched.swapped_in[before[2]:]})
    return {"orders": orders, "per_round": per_round}


@dataclass
class _Sized:
    """A member as the simulation sees it: a name and a size."""

    name: str
    footprint_bytes: int


# --- the run side -------------------------------------------------------------------------------------


class Scheduler:
    """Residency of the loaded members and the order they compute in.

    With no capacity (the plan says everything fits) every member stays resident and nothing moves. With a
    capacity, `use(i)` evicts least recently used members until member i fits, then restores it; the order
    of a round is most recently used first, which is the snake (A B | B A | ...) when one member fits at a
    time, and with room for k members leaves M - k swaps a round."""

    def __init__(self, members: list[Member], *, strategy: str = "resident", capacity: int | None = None,
                 stores: list | None = None, sizes: list[int] | None = None, initial: list[int] | None = None,
                 on_event=None, parallel: bool = False):
        self.loaded = list(members)
        self.parallel = parallel  # every member on a device of its own: a round's members advance concurrently
        self.members = self.loaded
        self.strategy = strategy
        self.capacity = capacity
        self.stores = stores
        self.sizes = list(sizes) if sizes is not None else [getattr(m, "footprint_bytes", 0) for m in self.loaded]
        self.budget_bytes: int | None = None
        self.on_event = on_event
        self.current: int | None = None  # position in self.members of the member that computed last
        self._index = list(range(len(self.loaded)))  # self.members position -> self.loaded index
        self.resident: set[int] = set(range(len(self.loaded))) if initial is None else set(initial)
        self.recency: list[int] = sorted(self.resident)  # loaded indices, least recently used first
        self.peak_resident_bytes = self.resident_bytes
        self.swapped_in: list[int] = []  # loaded indices, in the order they came in (this request)
        self.reset_counters()

    # --- bookkeeping ------------------------------------------------------------------------------------

    def reset_counters(self) -> None:
        self.swaps = 0
        self.reloads = 0
        self.bytes_moved = 0
        self.swap_seconds = 0.0
        self.swapped_in = []
        self.peak_resident_bytes = self.resident_bytes

    @property
    def swapping(self) -> bool:
        return self.capacity is not None

    @property
    def resident_bytes(self) -> int:
        return sum(self.sizes[j] for j in self.resident)

    def add(self, member: Member, store=None, size: int | None = None) -> None:
        """A member just loaded (and so resident); evictions to make room happen before its load (`reserve`)."""
        self.loaded.append(member)
        self.members = self.loaded
        self._index = list(range(len(self.loaded)))
        self.sizes.append(member.footprint_bytes if size is None else size)
        if self.stores is not None:
            self.stores.append(store)
        j = len(self.loaded) - 1
        self.resident.add(j)
        self.recency.append(j)
        self.peak_resident_bytes = max(self.peak_resident_bytes, self.resident_bytes)

    def reserve(self, nbytes: int, keep: int | None = None) -> None:
        """Evict least recently used members until `nbytes` more fit under the capacity."""
        if self.capacity is None:
            return
        while self.resident_bytes + nbytes > self.capacity:
            victims = [j for j in self.recency if j in self.resident and j != keep]
            if not victims:
                return
            self._release(victims[0])

    def _release(self, j: int) -> None:
        start = time.perf_counter()
        moved = self.stores[j].release() if self.stores is not None and self.stores[j] is not None else 0
        seconds = time.perf_counter() - start
        self.resident.discard(j)
        self.bytes_moved += moved
        self.swap_seconds += seconds
        self._emit(j, "out", moved, seconds)

    def _restore(self, j: int) -> None:
        start = time.perf_counter()
        store = self.stores[j] if self.stores is not None else None
        moved = store.restore() if store is not None else self.sizes[j]
        if store is not None and store.reload:
            self.reloads += 1
        seconds = time.perf_counter() - start
        self.resident.add(j)
        self.swaps += 1
        self.swapped_in.append(j)
        self.bytes_moved += moved
        self.swap_seconds += seconds
        self.peak_resident_bytes = max(self.peak_resident_bytes, self.resident_bytes)
        self._emit(j, "in", moved, seconds)

    def _emit(self, j: int, direction: str, nbytes: int, seconds: float) -> None:
        if self.on_event is not None:
            self.on_event(Swap(self.loaded[j].name, direction, int(nbytes), seconds))

    def set_capacity(self, capacity: int | None, strategy: str | None = None) -> None:
        """Re-plan: a smaller capacity evicts now, so the next forward runs within it."""
        self.capacity = capacity
        if strategy is not None:
            self.strategy = strategy
        if capacity is not None:
            self.reserve(0, keep=None)

    # --- what the engine calls --------------------------------------------------------------------------

    def select(self, indices: list[int] | None) -> None:
        """Run the next request with a subset of the loaded members (None: all of them)."""
        self._index = list(range(len(self.loaded))) if indices is None else list(indices)
        self.members = [self.loaded[j] for j in self._index]
        self.current = None
        if self.swapping:  # start with whoever is resident, so a request costs no extra swap
            for j in reversed(self.recency):
                if j in self.resident and j in self._index:
                    self.current = self._index.index(j)
                    break
        self.reset_counters()

    def _by_recency(self) -> list[int]:
        """Positions in self.members, most recently used first; never-used ones after, in member order."""
        rank = {j: k for k, j in enumerate(self.recency)}
        m = len(self.members)
        used = sorted((i for i in range(m) if self._index[i] in rank), key=lambda i: -rank[self._index[i]])
        return used + [i for i in range(m) if self._index[i] not in rank]

    def order(self, round_index: int) -> list[int]:
        """Snake order (A B | B A | A B ...) starting with the resident member: M-1 switches a round."""
        if self.swapping:
            return self._by_recency()
        m = len(self.members)
        base = list(range(m)) if round_index % 2 == 0 else list(reversed(range(m)))
        if self.current is not None and self.current in base:
            k = base.index(self.current)
            base = base[k:] + list(reversed(base[:k])) if k else base
        return base

    def scoring_order(self) -> list[int]:
        """Cross-model scoring starts with whoever is resident, then walks back through the others."""
        if self.swapping:
            return self._by_recency()
        m = len(self.members)
        first = self.current if self.current is not None else 0
        return [first] + [i for i in reversed(range(m)) if i != first]

    def use(self, index: int) -> None:
        self.use_member(self.members[index])

    def use_member(self, member: Member) -> None:
        """Make `member` (any loaded one, selected or not) resident for its next forward."""
        j = next(k for k, m in enumerate(self.loaded) if m is member)
        if j in self._index:
            self.current = self._index.index(j)
        if not self.swapping:
            return
        if j not in self.resident:
            self.reserve(self.sizes[j], keep=j)
            self._restore(j)
        self.recency = [k for k in self.recency if k != j] + [j]

    def report(self) -> dict:
        out = {
            "strategy": self.strategy,
            "swaps": self.swaps,
            "bytes_moved": self.bytes_moved,
            "swap_seconds": round(self.swap_seconds, 4),
        }
        if self.budget_bytes is not None:
            out["budget_bytes"] = self.budget_bytes
        if self.swapping:
            out["reloads"] = self.reloads
            out["capacity_bytes"] = self.capacity
            out["resident_peak_bytes"] = self.peak_resident_bytes
        return out


class SchedulerView:
    """One request's own choice of loaded members, so that requests with different choices run side by side
    (the server). Round order only decides which member computes first: results do not depend on it."""

    def __init__(self, scheduler: Scheduler, indices: list[int]):
        self.scheduler = scheduler
        self.members = [scheduler.loaded[j] for j in indices]
        self.parallel = scheduler.parallel

    def order(self, round_index: int) -> list[int]:
        m = len(self.members)
        return list(range(m)) if round_index % 2 == 0 else list(reversed(range(m)))

    def scoring_order(self) -> list[int]:
        return list(range(len(self.members)))

    def report(self) -> dict:
        return self.scheduler.report()
