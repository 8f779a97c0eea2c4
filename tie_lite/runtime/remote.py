"""Members as Ray actors (`--ray`, pip install 'tie-lite[ray]').

Each member is an actor that holds its model and its trajectory and computes its steps and its judge's
scores where its weights are. Between the driver and the actors only the relay state crosses: canvas ids,
a few texts and score floats (kilobytes a round), never logits or weights. The TIE loop (tie.py) is the
same one: a `RemoteTrajectory` stands where a local `Trajectory` does, one call per round's advance."""

from __future__ import annotations

import os
import pickle
import socket
import time
from dataclasses import dataclass

import torch

from tie_lite.engine.judge import member_view
from tie_lite.engine.layout import Layout, TextState
from tie_lite.engine.process import run
from tie_lite.engine.sampler import Trajectory
from tie_lite.errors import UserError
from tie_lite.runtime.loading import load_member

RESTART_SECONDS = 300  # how long a request waits for a member actor that Ray is restarting (it reloads)


def import_ray():
    try:
        import ray  # an optional extra (tie-lite[ray])
    except ImportError:
        raise UserError("--ray needs Ray; install it with: pip install 'tie-lite[ray]'") from None
    return ray


@dataclass
class RelayState:
    """What a member's trajectory shows the others: enough to relay its canvas (id for id with a shared
    tokenizer, else through text) and to score it; it duck-types the parts of a Trajectory scoring reads."""

    tokenizer_key: str
    layout: Layout
    ids: torch.Tensor
    round_start: torch.Tensor
    now: TextState
    before: TextState

    def state(self) -> TextState:
        return self.now

    def round_start_state(self) -> TextState:
        return self.before


@dataclass
class Snapshot:
    """An actor's answer after each call: its relay state and what the driver's loop reads."""

    relay: RelayState
    done: bool
    forwards: int
    round_tcc: float
    total_tcc: float
    total_steps: int
    total_top1: float
    text: str
    rendered: str
    seconds: float  # spent computing inside the actor (the benchmark's Ray overhead is the rest)


class MemberActor:
    """The actor (wrapped by ray.remote in `connect`). The model loads on the first request, so that a
    restarted actor reloads itself and a load error reaches the driver as its own one-line message."""

    def __init__(self, spec: str, load_kwargs: dict, threads: int):
        torch.set_num_threads(threads)
        self.spec, self.load_kwargs = spec, load_kwargs
        self.member = None
        self.trajectory = None

    def load(self) -> dict:
        if self.member is None:
            self.member = load_member(self.spec, **self.load_kwargs)
        m = self.member
        return {"name": m.name, "footprint_bytes": m.footprint_bytes, "quant": m.quant, "pid": os.getpid(),
                "recipe": m.recipe}

    def start(self, messages, decode, watch: bool) -> Snapshot:
        start = time.perf_counter()
        self.load()
        self.trajectory = Trajectory.start(self.member, messages, decode)
        self.trajectory.watch = watch
        return self._snapshot(start)

    def advance(self, decode, blocks: int) -> Snapshot:
        start = time.perf_counter()
        self._own().run_blocks(decode, blocks)
        return self._snapshot(start)

    def judge(self, states: list[RelayState], kind: str) -> tuple[list[float], int, float]:
        start, t = time.perf_counter(), self._own()
        scores = run(member_view(t, states, kind))
        return scores, t.forwards, time.perf_counter() - start

    def token_counts(self, messages, text: str) -> tuple[int, int]:
        self.load()
        return self.member.token_counts(messages, text)

    def adopt(self, state: RelayState) -> None:
        self._own().adopt(state)

    def begin_round(self) -> None:
        self._own().begin_round()

    def _own(self):
        if self.trajectory is None:  # Ray restarted this actor mid-request: its trajectory is gone
            raise RuntimeError("the member actor restarted and lost this request's trajectory")
        return self.trajectory

    def _snapshot(self, start: float) -> Snapshot:
        t = self.trajectory
        relay = RelayState(t.tokenizer_key, t.layout, t.ids.clone(), t.round_start.clone(), t.state(),
                           t.round_start_state())
        return Snapshot(relay, t.done, t.forwards, t.round_tcc, t.total_tcc, t.total_steps, t.total_top1, t.text(),
                        t.render(), time.perf_counter() - start)


class RemoteMember:
    """The driver's handle on one member actor. Counts the bytes its calls send and receive."""

    def __init__(self, actor, spec: str):
        self.actor, self.spec = actor, spec
        self.name = spec  # until the actor says (error lines name the member)
        self.bytes_crossed = 0
        self.actor_seconds = 0.0
        info = self.load()
        self.name, self.footprint_bytes, self.quant = info["name"], info["footprint_bytes"], info["quant"]
        self.recipe = info["recipe"]  # the driver resolves the member's settings (engine/recipe.py)

    def load(self) -> dict:
        """Load (or, after a restart, reload) the model; returns its name, size and worker process id."""
        info = self.call("load")
        self.pid = info["pid"]
        return info

    def token_counts(self, messages, text: str) -> tuple[int, int]:
        return self.call("token_counts", messages, text)

    def start_trajectory(self, messages, decode, watch: bool) -> RemoteTrajectory:
        """The trajectory stays on the actor; the TIE loop holds this stand-in (engine/tie.py asks for it)."""
        return RemoteTrajectory(self, messages, decode, watch)

    def call(self, method: str, *args):
        """One actor call, waited for. A dead or restarting actor is one line; Ray restarts it, so the next
        request works (its first call waits for the restart)."""
        ray = import_ray()
        from ray.exceptions import (  # ray: optional extra
            ActorUnavailableError,
            RayActorError,
            RayTaskError,
        )

        self.bytes_crossed += len(pickle.dumps(args))
        deadline = time.monotonic() + RESTART_SECONDS
        while True:
            try:
                out = ray.get(getattr(self.actor, method).remote(*args))
                break
            except RayTaskError as exc:
                cause = exc.cause
                if isinstance(cause, UserError):
                    raise UserError(str(cause)) from None
                if isinstance(cause, RuntimeError) and "restarted" in str(cause):
                    raise self._lost("restarted") from None
                raise
            except ActorUnavailableError:
                if method in ("load", "start") and time.monotonic() < deadline:  # restarting: wait, then retry
                    time.sleep(0.2)
                    continue
                raise self._lost("became unavailable") from None
            except RayActorError:
                raise self._lost("died") from None
        self.bytes_crossed += len(pickle.dumps(out))
        if isinstance(out, Snapshot):
            self.actor_seconds += out.seconds
        elif method == "judge":
            self.actor_seconds += out[2]
        return out

    def _lost(self, what: str) -> UserError:
        return UserError(f"member '{self.name}' (a Ray actor) {what} in the middle of this request, so it was "
                         "stopped; Ray restarts the member: send the request again")


class RemoteTrajectory:
    """Stands for a member's trajectory held by its actor: the TIE loop calls it as it calls a local one."""

    def __init__(self, member: RemoteMember, messages, decode, watch: bool = True):
        self.member = member
        self._take(member.call("start", messages, decode, watch))

    def _take(self, snap: Snapshot) -> None:
        self.snapshot = snap
        r = snap.relay
        self.layout, self.ids, self.round_start, self.tokenizer_key = r.layout, r.ids, r.round_start, r.tokenizer_key
        self.done, self.forwards, self.round_tcc = snap.done, snap.forwards, snap.round_tcc
        self.total_tcc, self.total_steps, self.total_top1 = snap.total_tcc, snap.total_steps, snap.total_top1

    @property
    def relay(self) -> RelayState:
        return self.snapshot.relay

    def state(self) -> TextState:
        return self.relay.now

    def text(self) -> str:
        return self.snapshot.text

    def render(self, mask_symbol: str = "░") -> str:
        return self.snapshot.rendered.replace("░", mask_symbol)

    def advance(self, decode, blocks: int, on_step=None):
        """Process (engine/process.py) with nothing to forward here: the actor runs the round's steps itself, so the
        step callback (progress, cancellation) comes once a round."""
        self._take(self.member.call("advance", decode, blocks))
        if on_step is not None:
            on_step(self)
        return
        yield  # a generator, like Trajectory.advance

    def judge(self, trajs: list, kind: str):
        """Process: this member's scores of every trajectory, computed on its actor."""
        scores, self.forwards, _ = self.member.call("judge", [t.relay for t in trajs], kind)
        return scores
        yield

    def adopt(self, other: RemoteTrajectory) -> None:
        if other is not self:
            self.member.call("adopt", other.relay)

    def begin_round(self) -> None:
        self.member.call("begin_round")


def start_members(address: str, specs: list[str], load_kwargs: dict, device: str,
                  threads: int | None = None) -> list[RemoteMember]:
    """Start (address 'local') or join a Ray cluster and one actor per member; on CUDA each asks for a GPU.
    Each actor computes with `threads` CPU threads when given (the driver's own figure: CPU float sums depend
    on the thread count, so equal counts give the in-process output bit for bit), else its share of CPUs."""
    ray = import_ray()
    if address != "local":
        check_reachable(address)
    if not ray.is_initialized():
        opts = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        if address == "local":
            ray.init(address="local", num_cpus=max(os.cpu_count() or 1, len(specs)), object_store_memory=128 * 2**20,
                     **opts)
        else:
            try:
                ray.init(address=address, **opts)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise UserError(f"--ray {address}: no Ray cluster to join there ({str(exc).splitlines()[0][:120]}); "
                                "start one with 'ray start --head', or give --ray alone for a local one") from None
    have = ray.cluster_resources()
    gpus = 1 if device.startswith("cuda") else 0
    if gpus and have.get("GPU", 0) < len(specs):
        raise UserError(f"--ray with --device cuda gives each member a GPU: the cluster has {int(have.get('GPU', 0))} "
                        f"for {len(specs)} members; add GPUs or use fewer --model")
    cpus = int(have.get("CPU", 0)) // len(specs)
    if cpus < 1:
        raise UserError(f"the Ray cluster has {int(have.get('CPU', 0))} CPUs for {len(specs)} members (one each at "
                        "least); add a node or use fewer --model")
    wait_for_free(ray, cpus * len(specs), gpus * len(specs))
    actor_class = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=-1)(MemberActor)
    kwargs = {**load_kwargs, "device": "cuda" if gpus else load_kwargs["device"]}
    actors = [actor_class.remote(spec, kwargs, threads or cpus) for spec in specs]
    return [RemoteMember(actor, spec) for actor, spec in zip(actors, specs)]


def check_reachable(address: str, seconds: float = 5.0) -> None:
    """Ray waits minutes for a cluster that is not there (and prints C++ warnings meanwhile): try the head's port
    first and say so in one line. 'auto' and other forms without a port are left to Ray."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=seconds).close()
    except OSError as exc:
        raise UserError(f"--ray {address}: no Ray cluster answers there ({exc.strerror or exc}); start one with "
                        "'ray start --head' on that machine, or give --ray alone for a local one") from None


def wait_for_free(ray, cpus: int, gpus: int, seconds: float = 10.0) -> None:
    """Actors that cannot be placed would wait forever: wait briefly for released actors' resources, then say
    what holds them."""
    deadline = time.monotonic() + seconds
    while True:
        free = ray.available_resources()
        if free.get("CPU", 0) >= cpus and free.get("GPU", 0) >= gpus:
            return
        if time.monotonic() > deadline:
            raise UserError(f"the Ray cluster has {int(free.get('CPU', 0))} CPUs and {int(free.get('GPU', 0))} GPUs "
                            f"free, and these members need {cpus} and {gpus}: another ensemble holds them; close it "
                            "or add a node")
        time.sleep(0.2)
