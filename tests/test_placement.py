"""Members placed one per device: they decode a round side by side, and the answer is the one-by-one answer."""

import threading

import pytest

from tie_lite.engine.sampler import DecodeSettings
from tie_lite.engine.tie import TieSettings, run_tie
from tie_lite.runtime.scheduler import Scheduler

try:
    from test_bad_input import run_cli
    from test_ui import tiny_models  # noqa: F401  (a fixture: a frozen copy of the shipped members)
except ImportError:
    from .test_bad_input import run_cli
    from .test_ui import tiny_models  # noqa: F401

PROMPT = [{"role": "user", "content": "What is 23*4+17*5?"}]


def summary(result):
    return (result.text, result.final_member, result.rounds, result.responses, result.steps)


@pytest.mark.parametrize("score,select", [("tcc", "lowest-tcc"), ("verify", "verify")])
@pytest.mark.parametrize("cache,temperature", [("none", 0.0), ("dual", 0.8)])
def test_side_by_side_rounds_give_the_one_by_one_result(shipped, score, select, cache, temperature):
    members = list(shipped.values())
    decode = DecodeSettings(cache=cache, temperature=temperature, seed=5)
    tie = TieSettings(interval=16, score=score, select=select)
    one_by_one = run_tie(Scheduler(members), PROMPT, decode, tie)
    side_by_side = run_tie(Scheduler(members, parallel=True), PROMPT, decode, tie)
    assert summary(side_by_side) == summary(one_by_one)


def test_members_on_devices_of_their_own_compute_at_the_same_time(shipped, monkeypatch):
    """Each member's first forward of a round waits for the other's: one by one, that would never return."""
    members = list(shipped.values())
    meet = threading.Barrier(len(members), timeout=20)
    met = set()
    for member in members:
        forward = member.forward

        def waiting(request, member=member, forward=forward):
            if member.name not in met:
                met.add(member.name)
                meet.wait()
            return forward(request)

        monkeypatch.setattr(member, "forward", waiting)
    run_tie(Scheduler(members, parallel=True), PROMPT, DecodeSettings(), TieSettings(score="verify"))
    assert met == {m.name for m in members}


def test_a_cancelled_side_by_side_request_stops_every_member(shipped):
    from tie_lite.engine.events import Cancelled

    members = list(shipped.values())
    with pytest.raises(Cancelled):
        run_tie(Scheduler(members, parallel=True), PROMPT, DecodeSettings(), TieSettings(), should_stop=lambda: True)


def test_device_flags_from_the_cli(tiny_models):
    code, out, err = run_cli(["generate", "What is 23*4+17*5?", "--device", "cpu", "--device", "cpu"], "generate")
    assert code == 0, err
    assert out.strip() == run_cli(["generate", "What is 23*4+17*5?"], "generate")[1].strip()
    for argv, words in [
        (["--device", "cpu", "--device", "cpu", "--device", "cpu"], "given 3 times for 2 models"),
        (["--device", "cuda:1"], "no CUDA GPU is visible"),
        (["--device", "tpu:0"], "unknown --device 'tpu:0'"),
        (["--device", "cpu", "--device", "cpu", "--max-memory", "1GiB"], "leave it out"),
    ]:
        code, out, err = run_cli(["generate", "What is 23*4+17*5?", *argv], "generate")
        assert code != 0 and words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_plan_plans_one_device(tiny_models):
    code, _, err = run_cli(["plan", "--device", "cpu", "--device", "cpu"], "plan")
    assert code != 0 and "give --device once" in err
