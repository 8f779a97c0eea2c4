"""TIE: the round loop, relay and final selection. One member is plain decoding; an interval that covers
the whole generation is the post-generation ensemble. Both are this loop, not copies of it."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from tie_lite.engine.events import Cancelled, Final, Relay, RoundScores, StepFrame
from tie_lite.engine.layout import TextState
from tie_lite.engine.process import run, run_each
from tie_lite.engine.recipe import settings_of
from tie_lite.engine.sampler import DecodeSettings, Trajectory
from tie_lite.engine.scoring import check_score, round_scores
from tie_lite.engine.uniform import UniformTrajectory
from tie_lite.errors import UserError

SELECTIONS = ("lowest-tcc", "verify", "most-selected", "best-model", "oracle")


@dataclass(frozen=True)
class TieSettings:
    interval: int = 16  # steps per round, rounded up to whole blocks so relays land on block boundaries
    score: str = "tcc"
    select: str = "lowest-tcc"
    select_model: str | None = None  # with select == "best-model"

    def validate(self, member_names: list[str]) -> None:
        if self.interval < 1:
            raise UserError("--interval must be at least 1 step")
        check_score(self.score, len(member_names))
        if self.select not in SELECTIONS:
            raise UserError(f"unknown --select '{self.select}'; use one of {', '.join(SELECTIONS[:-1])}")
        if self.select == "best-model" and self.select_model not in member_names:
            raise UserError(f"--select best-model needs a member name from: {', '.join(member_names)}")
        if self.select == "verify" and len(member_names) < 2:
            raise UserError("--select verify needs at least two --model")


@dataclass
class Result:
    text: str
    answer: str | None
    members: list[str]
    final_member: str
    rounds: list[dict]
    leader_changes: int
    steps: int  # forward passes, decoding and scoring, all members
    responses: dict[str, str]
    seconds: float
    memory: dict = field(default_factory=dict)
    # the canvas after the prompt, id for id in the member's own vocabulary (answer marker and end-of-text
    # padding included): what another implementation's output is compared with, token for token
    token_ids: list[int] = field(default_factory=list)  # the final response's
    response_token_ids: dict[str, list[int]] = field(default_factory=dict)  # each member's completed response
    member_settings: dict[str, dict] = field(default_factory=dict)  # what each member's decode actually ran with

    @property
    def change_rate(self) -> float | None:
        """Percent of relays whose leader differs from the previous round's."""
        return 100.0 * self.leader_changes / (len(self.rounds) - 1) if len(self.rounds) > 1 else None


def unique_names(names: list[str]) -> list[str]:
    """Members' display names, numbered when one model appears twice (the engine's own naming)."""
    if len(set(names)) != len(names):
        return [f"{n}#{i + 1}" for i, n in enumerate(names)]
    return list(names)


def run_tie(scheduler, *args, **kwargs) -> Result:
    """Decode one request to its Result, computing each forward as the loop asks (see tie_process)."""
    return run(tie_process(scheduler, *args, **kwargs), scheduler)


def tie_process(
    scheduler,
    messages: list[dict],
    decode: DecodeSettings,
    tie: TieSettings = TieSettings(),
    on_event=None,
    should_stop=None,
    gold: TextState | None = None,
):
    """The TIE loop as a process (process.py): it yields the forwards it needs and returns the Result.
    `scheduler` (runtime/scheduler.py) holds the members and says in which order they compute."""
    start = time.perf_counter()
    members = scheduler.members
    names = unique_names([m.name for m in members])
    decode.validate()
    decodes = settings_of(members, decode)  # each member's own: its recipe under the settings given
    tie.validate(names)
    if "oracle" in (tie.score, tie.select) and gold is None:
        raise UserError("oracle methods need a task whose generator knows the gold worked solution")
    emit = on_event or (lambda event: None)
    # one member is plain decoding: no round to score, no final choice, so no TCC bookkeeping
    trajs = [start_trajectory(m, messages, d, watch=len(members) > 1) for m, d in zip(members, decodes)]
    for i, t in enumerate(trajs):
        t.index = i
    # a round is --interval steps of each member, rounded up to whole blocks of its own
    blocks_per_round = [round_blocks(tie, d) for d in decodes]
    parallel = getattr(scheduler, "parallel", False) and len(trajs) > 1  # members on devices of their own
    rounds: list[dict] = []
    leaders: list[int] = []
    r = 0
    while True:
        def on_step(t, i, r=r):
            if should_stop is not None and should_stop():
                raise Cancelled()
            emit(StepFrame(r, names[i], t.forwards, t))

        yield from run_each([trajs[i].advance(decodes[i], blocks_per_round[i], lambda t, i=i: on_step(t, i))
                             for i in scheduler.order(r)], parallel)
        finished = any(t.done for t in trajs)
        if len(trajs) > 1:
            scores = yield from round_scores(trajs, tie.score, scheduler.scoring_order(), gold, parallel)
        else:
            scores = [-t.round_tcc for t in trajs]
        leader = max(range(len(trajs)), key=lambda i: (scores[i], -i))
        leaders.append(leader)
        rounds.append({"leader": names[leader], "scores": dict(zip(names, scores))})
        emit(RoundScores(r, dict(zip(names, scores)), names[leader]))
        if finished:
            break
        if len(trajs) > 1:
            for t in trajs:
                t.adopt(trajs[leader])
            emit(Relay(r, names[leader], [n for k, n in enumerate(names) if k != leader]))
        for t in trajs:
            t.begin_round()
        r += 1
    unfinished = [i for i, t in enumerate(trajs) if not t.done]
    # the others complete their own responses, after the last relay (still streaming their steps)
    yield from run_each([trajs[i].advance(decodes[i], trajs[i].layout.num_blocks, lambda t, i=i: on_step(t, i))
                         for i in unfinished], parallel)
    verify = None
    if tie.select == "verify" and len(trajs) > 1:
        # members re-check what each response committed since the last relay, completion included
        reuse = tie.score == "verify" and not unfinished
        verify = scores if reuse else (yield from round_scores(trajs, "verify", scheduler.scoring_order(), None, parallel))
    final = select_final(trajs, names, leaders, tie, verify, gold)
    text = trajs[final].text()
    result = Result(
        text=text,
        answer=trajs[final].layout.parse_answer(text),
        members=[m.name for m in members],
        final_member=names[final],
        rounds=rounds,
        leader_changes=sum(a != b for a, b in zip(leaders, leaders[1:])),
        steps=sum(t.forwards for t in trajs),
        responses={n: t.text() for n, t in zip(names, trajs)},
        seconds=time.perf_counter() - start,
        memory=scheduler.report(),
        token_ids=generated_ids(trajs[final]),
        response_token_ids={n: generated_ids(t) for n, t in zip(names, trajs)},
        member_settings={n: settings_run(t, d) for n, t, d in zip(names, trajs, decodes)},
    )
    emit(Final(result))
    return result


def round_blocks(tie: TieSettings, decode: DecodeSettings) -> int:
    """Blocks of a member's own that one round covers: --interval of its steps, rounded up to whole blocks."""
    return max(1, math.ceil(tie.interval / decode.steps_per_block))


def generated_ids(traj) -> list[int]:
    """A trajectory's canvas after its prompt, id for id. A masked trajectory's `ids` (a local or a Ray
    member's) hold the prompt too; a uniform-noise one's hold only what it generated, and it says so."""
    own = getattr(traj, "response_ids", None)
    if own is not None:
        return own()
    return traj.ids[traj.layout.prompt_len :].tolist()


def settings_run(traj, decode: DecodeSettings) -> dict:
    """What a member's decode ran with; a trajectory kept elsewhere (a Ray member's) reports the request's."""
    report = getattr(traj, "settings_run", None)
    if report is not None:
        return report(decode)
    return {"sampler": "masked"} | {k: v for k, v in vars(decode).items() if k not in ("given", "member_options")}


def start_trajectory(member, messages: list[dict], decode: DecodeSettings, watch: bool):
    """A member's trajectory: here, or where the member computes when it keeps its trajectory there (a Ray
    member, runtime/remote.py, has its own `start_trajectory`)."""
    start_elsewhere = getattr(member, "start_trajectory", None)
    if start_elsewhere is not None:
        return start_elsewhere(messages, decode, watch)
    uniform = getattr(member, "denoising", None) is not None  # a uniform-noise canvas (DiffusionGemma)
    traj = (UniformTrajectory if uniform else Trajectory).start(member, messages, decode)
    traj.watch = watch
    return traj


def select_final(trajs, names, leaders, tie: TieSettings, verify_scores, gold) -> int:
    """Which completed response to return."""
    m = len(trajs)
    if m == 1:
        return 0
    if tie.select == "best-model":
        return names.index(tie.select_model)
    if tie.select == "most-selected":
        return max(range(m), key=lambda i: (leaders.count(i), -i))
    if tie.select == "oracle":  # a response whose answer is the gold one, if any member has it
        gold_answer = gold.answer.replace(" ", "")
        return next((i for i, t in enumerate(trajs) if t.state().answer.replace(" ", "") == gold_answer), 0)
    if tie.select == "verify":
        return max(range(m), key=lambda i: (verify_scores[i], -i))

    def key(i):  # lowest normalized TCC over the whole decode, then the higher mean top-1 probability
        t = trajs[i]
        steps = max(1, t.total_steps)
        return (t.total_tcc / steps, -t.total_top1 / steps, i)

    return min(range(m), key=key)
