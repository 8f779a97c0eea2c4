"""The server's step-level batching: requests that come together start together, so they decode in step and
every forward stacks all of them (a request one step late decodes out of step for its whole run, in forwards
of its own)."""

from __future__ import annotations

import time

import pytest

from tie_lite.faces.client_settings import Defaults
from tie_lite.runtime import batching
from tie_lite.runtime.batching import BatchEngine
from tie_lite.runtime.session import Ensemble

MESSAGES = [{"role": "user", "content": "What is (23+41)*7?"}]
LATE = 0.3  # seconds the second request comes after the first: several steps of the first, were it decoding


@pytest.fixture(scope="module")
def engine():
    defaults = Defaults()
    return BatchEngine(Ensemble(defaults.load), max_batch=4), defaults


def submit(engine, defaults):
    return engine.submit(MESSAGES, defaults.decode, defaults.tie, [0, 1])


def finish(*jobs):
    for job in jobs:
        assert job.finished.wait(120) and job.result is not None, job.error
    return [job.result for job in jobs]


def forwards_of(engine, run) -> tuple[int, list]:
    before = engine.forwards
    results = run()
    return engine.forwards - before, results


@pytest.fixture(scope="module")
def alone(engine):
    eng, defaults = engine
    return forwards_of(eng, lambda: finish(submit(eng, defaults)))


def test_a_request_still_being_read_starts_with_the_one_submitted_before_it(engine, alone, monkeypatch):
    eng, defaults = engine
    monkeypatch.setattr(batching, "ADMIT_WAIT", 30.0)  # here only the second request's arrival ends the wait

    def two():
        with eng.arriving():  # the server is reading the second request
            first = submit(eng, defaults)
            time.sleep(LATE)
            second = submit(eng, defaults)
        return finish(first, second)

    forwards, results = forwards_of(eng, two)
    assert forwards == alone[0]  # every forward computed both
    assert [r.token_ids for r in results] == [alone[1][0].token_ids] * 2


def test_clients_answered_together_start_their_next_requests_together(engine, alone, monkeypatch):
    eng, defaults = engine
    finish(submit(eng, defaults), submit(eng, defaults))  # two answered in the same step
    monkeypatch.setattr(batching, "ADMIT_WAIT", 30.0)

    def next_two():
        first = submit(eng, defaults)
        time.sleep(LATE)  # the second client's next request comes a little later
        return finish(first, submit(eng, defaults))

    forwards, results = forwards_of(eng, next_two)
    assert forwards == alone[0]
    assert [r.token_ids for r in results] == [alone[1][0].token_ids] * 2


def test_the_wait_for_others_is_bounded(engine, alone, monkeypatch):
    """Two were answered and only one comes back: it starts once ADMIT_WAIT has passed, alone."""
    eng, defaults = engine
    finish(submit(eng, defaults), submit(eng, defaults))
    monkeypatch.setattr(batching, "ADMIT_WAIT", 0.2)
    forwards, results = forwards_of(eng, lambda: finish(submit(eng, defaults)))
    assert forwards == alone[0] and results[0].token_ids == alone[1][0].token_ids
