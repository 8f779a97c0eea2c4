"""Many requests on one loaded ensemble at once: step-level batching for the server (and the chat).

Each request is a TIE process (tie.py) on its own choice of members. One worker thread drives all of
them: every iteration it admits waiting requests (a new request joins at the next step), drops the
ones whose client went away, and computes one stacked forward for the pending requests of one member
and canvas length (drive.forward_batch, the same batching eval uses). Requests beyond `max_batch`
wait in a queue of at most `max_queue`; past that `submit` refuses at once (the server answers 429).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import deque

from tie_lite.engine.events import Cancelled
from tie_lite.engine.tie import tie_process
from tie_lite.errors import UserError
from tie_lite.runtime.drive import forward_batch
from tie_lite.runtime.scheduler import SchedulerView
from tie_lite.runtime.session import peak_bytes


# Longest a step that starts new requests waits for others still being read or tokenized (seconds). Clients
# in step send their next requests together, a millisecond or two apart; one that misses the step the others
# start at decodes out of step with them for its whole run, in forwards of its own.
ADMIT_WAIT = 0.01
# Forwards a request may be passed over while another member's requests run, when members swap: a round's steps
SWAP_PATIENCE = 16


def job_members(ensemble, job: Job) -> list:
    return [ensemble.scheduler.loaded[j] for j in job.members]


def _internal(exc: Exception) -> str:
    return f"internal error ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"


class QueueFull(Exception):
    """More requests than the server runs and queues; the client should retry later."""


class Closed(Exception):
    """The engine is shutting down and takes no more requests."""


class Job:
    """One request. `on_event` sees its tie events in the worker thread (by default they are queued on
    `events` as ("event", e)); `events` ends with ("done", Result), ("error", message) or ("cancelled", None).
    `cancel` drops it at the next step."""

    def __init__(self, messages, decode, tie, members: list[int], on_event=None, events: queue.Queue | None = None):
        self.messages, self.decode, self.tie, self.members = messages, decode, tie, members
        self.events: queue.Queue = events if events is not None else queue.Queue()
        # runs in the worker thread, while the trajectories an event carries are still as the event says
        self.on_event = on_event or (lambda event: self.events.put(("event", event)))
        self.finished = threading.Event()
        self.result = None
        self.error: str | None = None
        self.limit = 1  # requests one forward may stack with this one (the memory plan's batch limit)
        self._cancel = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def _end(self, kind: str, value=None) -> None:
        if kind == "done":
            self.result = value
        elif kind == "error":
            self.error = value
        self.events.put((kind, value))
        self.finished.set()


class BatchEngine:
    def __init__(self, ensemble, max_batch: int = 8, max_queue: int = 32):
        if max_batch < 1 or max_queue < 0:
            raise UserError("--max-batch must be at least 1 and --max-queue at least 0")
        self.ensemble = ensemble
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._waiting: deque[Job] = deque()
        self._active: dict[Job, object] = {}  # job -> its process
        self._pending: dict[Job, object] = {}  # job -> the Forward it waits for
        self._waited: dict[Job, int] = {}  # job -> forwards computed for others since its own was asked for
        self._starting = 0  # admitted by the worker, being started
        self._arriving = 0  # requests the server is reading or tokenizing, not yet submitted
        self._answered = 0  # requests answered since new ones last started: their clients may send the next
        self._cond = threading.Condition()
        self.closed = False
        self.forwards = 0  # stacked forwards computed (for the load benchmark)
        self.batched = 0  # requests' forwards they served
        self._worker = threading.Thread(target=self._loop, name="tie-lite-batching", daemon=True)
        self._worker.start()

    @property
    def load(self) -> dict:
        with self._cond:
            return {"running": len(self._active) + self._starting, "waiting": len(self._waiting), "max_batch": self.max_batch,
                    "max_queue": self.max_queue}

    def submit(self, messages, decode, tie, members: list[int], on_event=None, events: queue.Queue | None = None) -> Job:
        """Queue a request; `events` lets a caller's `on_event` write into the job's queue from the first step."""
        job = Job(messages, decode, tie, members, on_event, events)
        with self._cond:
            if self.closed:
                raise Closed("the server is shutting down")
            if len(self._active) + self._starting + len(self._waiting) >= self.max_batch + self.max_queue:
                raise QueueFull(f"{len(self._active)} requests running and {len(self._waiting)} waiting")
            self._waiting.append(job)
            self._cond.notify()
        return job

    @contextlib.contextmanager
    def arriving(self):
        """Around reading and submitting a request: while it lasts, a step that starts new requests may wait
        (at most ADMIT_WAIT) for this one to start with them."""
        with self._cond:
            self._arriving += 1
        try:
            yield
        finally:
            with self._cond:
                self._arriving -= 1
                self._cond.notify()

    def close(self) -> None:
        """Take no more requests and cancel every one waiting or running: each ends at the next step with
        ("cancelled", None), so a server can answer and exit within seconds."""
        with self._cond:
            self.closed = True
            for job in list(self._waiting) + list(self._active):
                job.cancel()
            self._cond.notify()

    # --- the worker ----------------------------------------------------------------------------------

    def _start(self, job: Job) -> None:
        ensemble = self.ensemble
        try:
            ensemble.scheduler.select(job.members)  # the request's lengths against the budget, as a run does
            job.limit = ensemble.batch_limit(job.messages, job.decode, job.tie, limit=self.max_batch)
            view = SchedulerView(ensemble.scheduler, job.members)
            process = tie_process(view, job.messages, job.decode, job.tie, on_event=job.on_event,
                                  should_stop=lambda: job.cancelled)
            self._active[job] = process
        except UserError as exc:
            job._end("error", str(exc))
            return
        except Exception as exc:  # a bug of ours, or the device failing: this request ends, the worker lives
            job._end("error", _internal(exc))
            return
        self._advance(job, None)

    def _advance(self, job: Job, logits) -> None:
        process = self._active[job]
        try:
            self._pending[job] = next(process) if logits is None else process.send(logits)
        except StopIteration as stop:
            self._retire(job)
            self._answered += 1
            result = stop.value
            ensemble = self.ensemble
            # requests overlap, so the peak is this process's (or device's) since the engine started
            result.memory.update(peak_bytes=peak_bytes(ensemble.device), baseline_bytes=ensemble.baseline_bytes,
                                 footprint_bytes={m.name: m.footprint_bytes for m in job_members(ensemble, job)})
            job._end("done", result)
        except Cancelled:
            self._retire(job)
            job._end("cancelled")
        except UserError as exc:
            self._retire(job)
            job._end("error", str(exc))
        except Exception as exc:  # a bug of ours must not take the other requests down
            self._retire(job)
            job._end("error", _internal(exc))

    def _retire(self, job: Job) -> None:
        self._active.pop(job, None)
        self._pending.pop(job, None)
        self._waited.pop(job, None)

    def _loop(self) -> None:
        while True:
            try:
                self._iteration()
            except Exception as exc:  # never let the worker die: every request in flight gets the line
                for job in list(self._active):
                    self._retire(job)
                    job._end("error", _internal(exc))

    def _iteration(self) -> None:
        with self._cond:
            while not self._waiting and not self._active:
                self._cond.wait()
            if self._waiting and not self.closed:  # new requests start: those on their way join them
                deadline = time.monotonic() + ADMIT_WAIT
                while (self._arriving or len(self._waiting) < self._answered) and not self.closed \
                        and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
                self._answered = 0
            admitted = []
            while self._waiting and len(self._active) + len(admitted) < self.max_batch:
                admitted.append(self._waiting.popleft())
            self._starting = len(admitted)  # neither waiting nor active until started: still counted as taken
            for job in [j for j in self._waiting if j.cancelled]:  # gone before it started
                self._waiting.remove(job)
                job._end("cancelled")
        for job in admitted:
            if job.cancelled or self.closed:  # closed while it was being admitted: close() did not see it
                job._end("cancelled")
            else:
                self._start(job)
            with self._cond:
                self._starting -= 1
        # the client went away, or the engine closed (a request started while close() ran is not flagged): free it now
        for job in [j for j in self._active if j.cancelled or self.closed]:
            self._active[job].close()
            self._retire(job)
            job._end("cancelled")
        if not self._pending:
            return
        # no more requests in one forward than the tightest of them may stack under the memory budget
        limit = min(job.limit for job in self._pending)
        # members that swap in and out of the device take turns a round at a time (a turn costs a whole swap);
        # resident ones a forward at a time
        patience = SWAP_PATIENCE if getattr(self.ensemble.scheduler, "swapping", False) else 1
        out = forward_batch(self._pending, self.ensemble.scheduler, limit, self._waited, patience)
        self.forwards += 1
        self.batched += len(out)
        for job in self._pending:
            self._waited[job] = 0 if job in out else self._waited.get(job, 0) + 1
        for job, logits in out.items():
            self._advance(job, logits)
