"""Loading an ensemble once and running requests on it: shared by the CLI, eval and the chat UI."""

from __future__ import annotations

import math
import resource
import shutil
import time
import weakref
from dataclasses import dataclass

import psutil
import torch

from tie_lite.checks import format_size, parse_size
from tie_lite.engine.layout import FREE_ANSWER_POSITIONS, check_context, response_length
from tie_lite.engine.recipe import settings_of
from tie_lite.engine.sampler import DecodeSettings, blocks_from_start
from tie_lite.engine.scoring import needs_cross_model
from tie_lite.engine.tie import Result, TieSettings, run_tie
from tie_lite.errors import UserError
from tie_lite.runtime.loading import (
    Member,
    load_member,
    load_member_experts_on_host,
    load_member_offloaded,
    resolve_device,
)
from tie_lite.runtime.plan import needs_for
from tie_lite.runtime.registry import DEFAULT_ENSEMBLE
from tie_lite.runtime.remote import start_members
from tie_lite.runtime.scheduler import EXPERTS_ON_HOST, Scheduler, make_plan
from tie_lite.runtime.sizes import SizeEstimate, estimate_member
from tie_lite.runtime.weights import WeightStore, _weight_tensors, swap_dir

# The load-time plan (placement, offload) assumes the smallest request unless told the lengths to expect;
# every request then re-checks the budget with its own lengths and says plainly when it does not fit.
PLAN_TOKENS = 32


@dataclass(frozen=True)
class LoadSettings:
    models: tuple[str, ...] = DEFAULT_ENSEMBLE
    quant: str = "none"
    backend: str = "bitsandbytes"
    device: str = "cpu"
    placement: tuple[str, ...] = ()  # one device per member, in order; empty: every member on `device`
    dtype: str = "auto"
    trust_remote_code: bool = False
    allow_pickle: bool = False
    max_memory: str | None = None
    ray: str | None = None  # 'local' (start a cluster here) or a cluster address: every member a Ray actor
    threads: int | None = None  # CPU threads of each Ray member actor; None: an equal share of the cluster's CPUs


class Ensemble:
    """Loaded members plus their scheduler; reused across requests.

    With no budget on the CPU every member stays resident. With --max-memory (or on CUDA, where the free
    device memory is the budget) the members load under a plan: resident when they all fit, else whole
    members swap (one resident at a time when only one fits), and a member that alone does not fit is
    loaded with accelerate layer offload."""

    def __init__(self, settings: LoadSettings, on_load=None, *, plan_tokens: int | None = None):
        """`plan_tokens`: positions one forward will compute (prompt + generation, times M with cross-model
        scores), so the load-time plan leaves working memory for them; by default the smallest request's."""
        if not settings.models:
            raise UserError("give at least one --model")
        self.settings = settings
        if settings.ray is not None:
            self._start_remote(settings, on_load)
            return
        budget = parse_size(settings.max_memory)
        placement = [resolve_device(d) for d in settings.placement]
        if placement and budget is not None:
            raise UserError("--max-memory plans members that share one device; with one --device per member, "
                            "leave it out (each member must fit its own device)")
        device = resolve_device(settings.device)
        self.device = device
        self.budget = budget
        self.budget_source = "--max-memory" if budget is not None else None
        if budget is None and device.type == "cuda":
            budget, self.budget_source = int(torch.cuda.mem_get_info(device)[0]), "free device memory"
            self.budget = budget
        self.estimates: list[SizeEstimate] = []
        self.plan = None
        self.baseline_bytes = current_bytes(device)
        kwargs = dict(quant=settings.quant, backend=settings.backend, device=settings.device, dtype=settings.dtype,
                      trust_remote_code=settings.trust_remote_code, allow_pickle=settings.allow_pickle)
        start = time.perf_counter()
        if budget is None:
            # Sizes from headers only, so that a request too large for the host fails with a line, not a hang.
            self.estimates = [estimate_member(spec, quant=settings.quant, backend=settings.backend,
                                              device=device.type, dtype=settings.dtype) for spec in settings.models]
            members: list[Member] = []
            for k, spec in enumerate(settings.models):
                if on_load is not None:
                    on_load(spec)
                where = dict(device=settings.placement[k]) if placement else {}
                members.append(load_member(spec, **{**kwargs, **where}))
            # members on devices of their own compute at the same time; sharing one, they take turns
            self.scheduler = Scheduler(members, parallel=len(set(placement)) == len(members) > 1)
        else:
            self.scheduler = self._load_planned(budget, kwargs, on_load, plan_tokens or PLAN_TOKENS)
        self.load_seconds = time.perf_counter() - start

    def _start_remote(self, s: LoadSettings, on_load) -> None:
        """Members as Ray actors (remote.py): each loads and computes where Ray places it, side by side."""
        if s.max_memory is not None or s.placement:
            raise UserError("with --ray each member is an actor that Ray places (one GPU each with --device cuda); "
                            "leave out --max-memory and the per-member --device")
        start = time.perf_counter()
        if on_load is not None:
            on_load(", ".join(s.models))
        kwargs = dict(quant=s.quant, backend=s.backend, device=s.device, dtype=s.dtype,
                      trust_remote_code=s.trust_remote_code, allow_pickle=s.allow_pickle)
        members = start_members(s.ray, list(s.models), kwargs, s.device, s.threads)
        self.device = torch.device("cpu")  # the driver's own memory is what this process can report
        self.budget = self.budget_source = self.plan = None
        self.estimates = []
        self.baseline_bytes = current_bytes(self.device)
        self.scheduler = Scheduler(members, parallel=len(members) > 1)
        self.load_seconds = time.perf_counter() - start

    def _load_planned(self, budget: int, kwargs: dict, on_load, tokens: int) -> Scheduler:
        s = self.settings
        self.estimates = [estimate_member(spec, quant=s.quant, backend=s.backend, device=self.device.type, dtype=s.dtype)
                          for spec in s.models]
        needs = _needs(self.estimates, tokens, 1)
        self.plan = plan = make_plan(needs, budget, device=self.device.type, budget_source=self.budget_source,
                                     quant=s.quant)
        self._spill = swap_dir()
        weakref.finalize(self, shutil.rmtree, self._spill, True)
        sched = Scheduler([], strategy=plan.strategy, capacity=None if plan.strategy == "resident" else plan.capacity_bytes,
                          stores=[], sizes=[])
        sched.budget_bytes = budget
        for k, spec in enumerate(s.models):
            if on_load is not None:
                on_load(spec)
            sched.reserve(plan.device_bytes(k))  # make room before loading, so loading honours the budget too
            if plan.placement[k] == EXPERTS_ON_HOST:
                if plan.strategy != "resident":
                    raise UserError(f"'{spec}' keeps its experts on the host, and the other members would have to "
                                    f"swap beside it, which tie-lite does not do yet; raise --max-memory or run it "
                                    f"with fewer members")

                def load(spec=spec):
                    return load_member_experts_on_host(spec, **kwargs)
            elif plan.placement[k] == "offload":
                def load(spec=spec, k=k):
                    return load_member_offloaded(spec, device_bytes=plan.capacity_bytes,
                                                 offload_folder=f"{self._spill}/offload-{k}", **kwargs)
            else:
                def load(spec=spec):
                    return load_member(spec, **kwargs)
            member = load()
            reload = (lambda load=load: load().model) if self.estimates[k].reload else None
            hosted = member.family.is_routed_expert if plan.placement[k] == EXPERTS_ON_HOST else (lambda _: False)
            on_device = sum(t.numel() * t.element_size() for name, t in _weight_tensors(member.model)
                            if t.device.type == member.device.type and not hosted(name))  # host-kept ones do not count
            sched.add(member, WeightStore(member, self._spill, reload=reload), size=on_device)
        return sched

    @property
    def members(self) -> list[Member]:
        return self.scheduler.members

    def run(self, messages, decode: DecodeSettings, tie: TieSettings, on_event=None, should_stop=None, gold=None,
            members: list[int] | None = None) -> Result:
        """Decode with every member, or with the members at `members` (a member alone is TIE with M = 1)."""
        device = self.device
        self.scheduler.select(members)
        working = self.fit_request(messages, decode, tie)
        for attempt in range(2):
            reset_peak(device)
            self.scheduler.on_event = on_event
            try:
                result = run_tie(self.scheduler, messages, decode, tie, on_event, should_stop, gold)
                break
            except torch.OutOfMemoryError:
                self._replan_after_oom(working, decode, retry=attempt == 0)
                self.scheduler.select(members)
            except RuntimeError as exc:
                if "can't allocate memory" not in str(exc):
                    raise
                raise UserError(f"out of host memory on the CPU ({str(exc).splitlines()[0][:80]}); pass a smaller "
                                f"--max-memory so members swap, a shorter --gen-length, or fewer --model") from None
            finally:
                self.scheduler.on_event = None
        result.memory["peak_bytes"] = peak_bytes(device)
        result.memory["baseline_bytes"] = self.baseline_bytes
        result.memory["footprint_bytes"] = {m.name: m.footprint_bytes for m in self.members}
        return result

    # --- budget checks per request ---------------------------------------------------------------------

    def _working(self, messages, decode: DecodeSettings, tie: TieSettings, times: int = 1) -> int:
        if not self.estimates:
            return 0
        index = self.scheduler._index
        decodes = settings_of(self.members, decode)  # each member's own settings: the widest sizes the forward
        total_len = max(self._canvas_lengths(messages, decodes))
        cross = needs_cross_model(tie.score, len(index), tie.select)
        batch = (len(index) if cross else 1) * times
        read = max(read_positions(d, tie) for d in decodes)
        cached = any(d.cache != "none" for d in decodes)
        return max(self.estimates[j].working_bytes(total_len, batch, read, cached) for j in index)

    def _canvas_lengths(self, messages, decodes: list[DecodeSettings], check: bool = False) -> list[int]:
        """Each member's whole canvas, prompt and response, with its own settings `decodes` (with `check`, each
        within its context)."""
        lengths = []
        for m, d in zip(self.members, decodes):
            prompt = len(m.prompt_ids(messages))
            canvas = response_length(prompt, d.gen_length, d.layout_block_size, blocks_from_start(m, d))
            if check:
                check_context(prompt, d.gen_length, m.max_length, prompt + canvas)
            lengths.append(prompt + canvas)
        return lengths

    def batch_limit(self, messages, decode: DecodeSettings, tie: TieSettings, limit: int = 64) -> int:
        """How many canvases like this request's one forward may stack under the budget (eval's batching
        driver): at least 1, at most `limit`. Call after `scheduler.select`; it also applies `fit_request`."""
        working = self.fit_request(messages, decode, tie)
        if self.budget is None or working == 0:
            return limit
        largest = max(self.scheduler.sizes[j] for j in self.scheduler._index)
        b = 1
        while b < limit and largest + self._working(messages, decode, tie, times=b + 1) <= self.budget:
            b += 1
        return b

    def fit_request(self, messages, decode: DecodeSettings, tie: TieSettings) -> int:
        """Re-check the plan against this request's lengths: a longer generation needs more working memory,
        which can turn a resident plan into swapping, or not fit at all (a UserError saying what to change).
        `run` calls it; a caller driving processes itself (eval) calls it with its longest prompt first.
        Returns the working memory it planned for."""
        if self.settings.ray is not None:
            return 0  # each actor's memory is its worker's; the layout still checks the context there
        if self.budget is None:
            self._check_host_memory(messages, decode, tie)
            return 0
        sched = self.scheduler
        working = self._working(messages, decode, tie)
        capacity = self.budget - working
        sizes = [sched.sizes[j] for j in sched._index]
        if max(sizes) > capacity:
            k = sizes.index(max(sizes))
            raise UserError(
                f"--gen-length {decode.gen_length} needs about {format_size(working)} of working memory, which "
                f"leaves {format_size(max(0, capacity))} of {self.budget_source} {format_size(self.budget)} for "
                f"weights, less than '{self.members[k].name}' needs ({format_size(sizes[k])}); lower --gen-length, "
                f"raise --max-memory, or use --quant 4bit"
            )
        if sched.swapping:
            sched.set_capacity(capacity)
        elif sum(sched.sizes) > capacity:
            sched.set_capacity(capacity, strategy="swap")
        return working

    def check_prompt(self, messages, decode: DecodeSettings) -> None:
        """The conversation and the canvas within every member's context (a prompt far too long is refused by its
        characters, before it is tokenized)."""
        self._canvas_lengths(messages, settings_of(self.members, decode), check=True)

    def _check_host_memory(self, messages, decode: DecodeSettings, tie: TieSettings) -> None:
        """No budget given (all members resident on the CPU): refuse a request whose forward alone would not fit
        in the memory the host has free, instead of swapping the machine to a standstill."""

        self.check_prompt(messages, decode)  # a canvas past the context fails in the layout anyway: say that first
        working = self._working(messages, decode, tie)
        free = int(psutil.virtual_memory().available)
        if working > 0.9 * free:
            raise UserError(
                f"--gen-length {decode.gen_length} needs about {format_size(working)} of working memory for one "
                f"forward and this machine has {format_size(free)} free; lower --gen-length or use fewer --model"
            )

    def _replan_after_oom(self, working: int, decode: DecodeSettings, retry: bool) -> None:
        """Out of device memory mid-run: shrink the budget to what is really usable and swap, or say what to change."""
        sched = self.scheduler
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            free = int(torch.cuda.mem_get_info(self.device)[0])
        else:
            free = int(psutil.virtual_memory().available)
        usable = free + sched.resident_bytes
        largest = max(sched.sizes[j] for j in sched._index)
        budget = int(min(self.budget or usable, usable) * 0.9)
        capacity = budget - working
        if retry and self.estimates and capacity >= largest:
            self.budget, self.budget_source = budget, "re-planned budget"
            sched.budget_bytes = budget
            sched.set_capacity(capacity, strategy="swap" if sched.strategy == "resident" else sched.strategy)
            return
        needed = largest + working
        flag = "--max-memory" + (f" {format_size(int(usable * 0.85)).replace(' ', '')}" if usable > needed else "")
        raise UserError(
            f"out of memory on {self.device.type}: this run needs about {format_size(needed)} "
            f"({format_size(largest)} for the largest member + {format_size(working)} working memory at "
            f"--gen-length {decode.gen_length}) and about {format_size(usable)} is usable; "
            + (f"pass {flag} so members swap, " if usable > needed else "")
            + "use --quant 4bit or a shorter --gen-length"
        )


def read_positions(decode: DecodeSettings, tie: TieSettings) -> int:
    """The most positions one forward computes logits at: a round's blocks (what verify re-checks; a step
    reads one block's candidates) plus the watched answer positions."""
    blocks = max(1, math.ceil(tie.interval / decode.steps_per_block))
    watched = decode.answer_length or FREE_ANSWER_POSITIONS
    return min(decode.gen_length, blocks * decode.layout_block_size) + watched


def _needs(estimates, total_len: int, batch: int):
    return needs_for(estimates, total_len, batch)


def current_bytes(device: torch.device) -> int:
    """Memory in use now: device memory allocated on CUDA, resident set size of this process on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def reset_peak(device: torch.device) -> None:
    """Start a fresh peak for this request (Linux lets a process reset its own resident high-water mark)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_bytes(device: torch.device) -> int:
    """Peak device memory on CUDA; peak resident memory of this process on the CPU (since reset_peak)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
