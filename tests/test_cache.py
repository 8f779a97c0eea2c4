"""The block KV cache and logits at the read positions only: what they compute, when they refresh, and that
a relay and cross-model verification cost no extra whole-canvas forward."""

from __future__ import annotations

import pytest
import torch
from real_checkpoints import build_dream, build_llada

from tie_lite.engine.process import Forward
from tie_lite.engine.sampler import DecodeSettings, Trajectory
from tie_lite.engine.scoring import round_scores
from tie_lite.engine.tie import TieSettings, tie_process
from tie_lite.runtime.loading import load_member
from tie_lite.runtime.scheduler import Scheduler

PROMPT = [{"role": "user", "content": "What is (23+41)*7?"}]


@pytest.fixture(scope="module")
def natives(tmp_path_factory, shipped):
    """One member of each native family: tie-tiny (both logit conventions), LLaDA, Dream (shifted)."""
    root = tmp_path_factory.mktemp("cache-members")
    return {**shipped, "llada": load_member(str(build_llada(root).path)), "dream": load_member(str(build_dream(root).path))}


def recording(process, log):
    """Drive a process like drive.run, keeping every Forward it asks for."""
    try:
        request = next(process)
        while True:
            log.append(request)
            request = process.send(request.member.forward(request))
    except StopIteration as stop:
        return stop.value


@pytest.mark.parametrize("name", ["tiny-sp", "tiny-bpe", "llada", "dream"])
def test_a_cache_of_the_same_canvas_gives_the_whole_canvas_logits(natives, name):
    member = natives[name]
    settings = DecodeSettings(gen_length=32, block_size=8)
    t = Trajectory.start(member, [{"role": "user", "content": "hi"}], settings)
    t.run_blocks(settings, 1)  # one block committed, the rest masked
    full = member.logits(t.ids[None])[0]
    need = torch.tensor([3, t.layout.prompt_len + 9, t.layout.total_len - 1])
    stored = member.forward(Forward(member, t.ids[None], need=[need], store=True))[0]
    assert stored.cache is not None
    torch.testing.assert_close(stored.logits[need], full[need], rtol=1e-5, atol=1e-5)
    query = torch.arange(t.layout.prompt_len + 8, t.layout.prompt_len + 16)
    cached = member.forward(Forward(member, t.ids[None], need=[need], caches=[stored.cache], query=[query]))[0]
    torch.testing.assert_close(cached.logits[need], full[need], rtol=1e-5, atol=1e-5)
    assert cached.logits.values.shape == (need.numel(), full.shape[-1])  # never canvas x vocabulary
    with pytest.raises(IndexError):
        cached.logits[torch.tensor([5])]


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_the_cache_refreshes_once_a_block_and_recomputes_only_what_changes(shipped, mode):
    member = shipped["tiny-sp"]
    settings = DecodeSettings(cache=mode)
    t = Trajectory.start(member, PROMPT, settings)
    masked = int(t.masked.sum())
    log = []
    recording(t.advance(settings, t.layout.num_blocks), log)
    assert t.done and t.forwards == masked  # one token a step: as many forwards as without a cache
    refreshes = [r for r in log if r.store]
    assert len(refreshes) == t.layout.num_blocks  # one whole-canvas forward a block
    for r in log:
        if r.caches is not None:
            q = r.query[0]
            if mode == "dual":
                assert q.numel() == settings.block_size  # the block only (the member adds the watched positions)
            else:
                assert int(q[-1]) == t.layout.total_len - 1  # the block onwards
        assert r.need[0].numel() <= settings.block_size + settings.answer_length


def test_the_ensemble_with_a_cache_is_about_as_accurate_as_without(shipped):
    """The cache approximates (the suffix's keys and values are up to a block old), so single answers may move;
    the ensemble's accuracy stays (the eval at n = 500 measures it to the point: README)."""
    from tie_lite.runtime.drive import run_many
    from tie_lite.tasks import TASKS, VALIDATION_SEED

    task = TASKS["sum-product"]
    problems = task.generate(48, VALIDATION_SEED)
    correct = {}
    for mode in ("none", "dual"):
        scheduler = Scheduler(list(shipped.values()))
        procs = [tie_process(scheduler, [{"role": "user", "content": p.prompt}], DecodeSettings(cache=mode),
                             TieSettings(score="verify")) for p in problems]
        correct[mode] = sum(task.check(p, r.text).correct for p, r in zip(problems, run_many(procs, scheduler)))
    assert correct["none"] >= 20 and correct["dual"] >= correct["none"] - 4, correct


def test_a_relay_is_the_receivers_refresh_and_verify_costs_no_whole_canvas_forward(tmp_path):
    """Two members with one tokenizer (LLaDA and its GQA variant): the receiver's first forward after a relay is
    its block refresh, and verify reads each judge's cached round-start canvas at the scored positions only
    (rounds of two blocks here: the round's first step did not read the second block)."""
    a = load_member(str(build_llada(tmp_path).path))
    b = load_member(str(build_llada(tmp_path, "gqa").path))
    decode = DecodeSettings(gen_length=32, block_size=8, cache="dual")
    log = []
    proc = tie_process(Scheduler([a, b]), [{"role": "user", "content": "hi"}], decode,
                       TieSettings(interval=16, score="verify"))
    result = recording(proc, log)
    uncached = recording(tie_process(Scheduler([a, b]), [{"role": "user", "content": "hi"}],
                                     DecodeSettings(gen_length=32, block_size=8), TieSettings(interval=16, score="verify")), [])
    assert len(result.rounds) == len(uncached.rounds)
    whole = [r for r in log if r.caches is None]
    assert all(r.store for r in whole)  # every whole-canvas forward is a block refresh
    assert len(whole) == 2 * 4  # one a block for each member: relays and scoring added none
    scoring = [r for r in log if r.caches is not None and r.query[0].numel() == 0]
    assert len(scoring) >= 2 * (len(result.rounds) - 1)  # each judge, each round, over its cache
    for r in scoring:
        assert r.ids.shape[0] == 1  # the M verify canvases were one canvas: computed once


@pytest.mark.parametrize("cache", ["none", "dual"])
def test_verify_within_one_block_reads_the_rounds_first_step_and_forwards_nothing(tmp_path, cache, monkeypatch):
    """A round of one block: each judge's first step of the round computed its logits on the canvas the round
    started from, at every position of the block, so verify asks for no forward and scores what a forward gives."""
    from tie_lite.engine import judge

    a = load_member(str(build_llada(tmp_path).path))
    b = load_member(str(build_llada(tmp_path, "gqa").path))
    decode = DecodeSettings(gen_length=32, block_size=8, cache=cache)
    tie = TieSettings(interval=8, score="verify")
    prompt = [{"role": "user", "content": "hi"}]
    log = []
    result = recording(tie_process(Scheduler([a, b]), prompt, decode, tie), log)
    steps = sum(len(r.ids) for r in log)
    monkeypatch.setattr(judge, "_round_logits", lambda *_: None)  # every verify computed by its own forward
    log = []
    recomputed = recording(tie_process(Scheduler([a, b]), prompt, decode, tie), log)
    assert len(result.rounds) == len(recomputed.rounds) == 4
    assert sum(len(r.ids) for r in log) - steps >= 2 * (len(result.rounds) - 1)  # those forwards are gone
    for ours, theirs in zip(result.rounds, recomputed.rounds):
        assert ours["leader"] == theirs["leader"]
        assert ours["scores"] == pytest.approx(theirs["scores"], abs=1e-5)
    assert result.token_ids == recomputed.token_ids


def test_cached_verify_scores_equal_whole_canvas_verify(tmp_path):
    a = load_member(str(build_llada(tmp_path).path))
    b = load_member(str(build_llada(tmp_path, "gqa").path))
    scores = {}
    for mode in ("none", "dual"):
        decode = DecodeSettings(gen_length=32, block_size=8, cache=mode)
        trajs = [Trajectory.start(m, [{"role": "user", "content": "hi"}], decode) for m in (a, b)]
        recording(trajs[1].advance(decode, 1), [])
        recording(trajs[0].advance(decode, 1), [])
        for t in trajs:
            t.round_logits = None  # the verify forward itself, not the round's first step
        log = []
        scores[mode] = recording(round_scores(trajs, "verify", [0, 1]), log)
        assert (mode == "dual") == all(r.caches is not None for r in log)
    assert scores["none"] == pytest.approx(scores["dual"], abs=1e-5)


MIXED = ["hi", "What is (3+4)*5?", "What is (123+45)*6? Show the work."]  # three prompt lengths


@pytest.fixture(scope="module")
def llada2(tmp_path_factory):
    from real_checkpoints import build_llada2

    return load_member(str(build_llada2(tmp_path_factory.mktemp("cache-llada2")).path))


@pytest.mark.parametrize("store", [False, True], ids=["cached", "cached-and-stored"])
@pytest.mark.parametrize("name", ["tiny-sp", "tiny-bpe", "llada", "dream", "llada2"])
def test_cached_canvases_of_different_lengths_stack_into_one_forward_that_equals_each_alone(natives, llada2, name,
                                                                                             store):
    """The server and eval stack requests of one member into one forward: canvases of different prompt lengths,
    each with its own block cache, right-padded to the longest. Each row's logits (and the cache it keeps) are
    those of its own forward."""
    member = llada2 if name == "llada2" else natives[name]
    settings = DecodeSettings(gen_length=32, block_size=8, cache="dual")
    requests = []
    for prompt in MIXED:
        process = Trajectory.start(member, [{"role": "user", "content": prompt}], settings).advance(settings, 2)
        request = next(process)
        while request.caches is None:  # up to the first forward that reads a block cache
            request = process.send(member.forward(request))
        requests.append(Forward(request.member, request.ids, request.need, store, request.caches, request.query,
                                blocks=request.blocks))
    assert len({r.ids.shape[1] for r in requests}) == len(MIXED)
    stacked = member.forward(Forward.stack(requests))
    for request, row in zip(requests, stacked):
        alone = member.forward(request)[0]
        need = request.need[0]
        torch.testing.assert_close(row.logits[need], alone.logits[need], rtol=1e-5, atol=1e-5)
        if store:
            assert row.cache.length == request.ids.shape[1]
            for mine, its in zip(row.cache.keys + row.cache.values, alone.cache.keys + alone.cache.values):
                torch.testing.assert_close(mine, its, rtol=1e-5, atol=1e-5)


def test_requests_with_prompts_of_different_lengths_share_forwards_and_keep_their_tokens(shipped, monkeypatch):
    """Many requests driven together (the server's batching, eval) with the block cache: prompts of different
    lengths stack, and every request's tokens are those it gets alone."""
    from tie_lite.runtime import drive

    scheduler = Scheduler([shipped["tiny-sp"], shipped["tiny-bpe"]])
    settings = DecodeSettings(cache="dual")
    prompts = ["What is (3+4)*5?", "What is (23+41)*7?", "What is (12+5)*3?", "Compute (15+62)*3."]

    def processes(ps):
        return [tie_process(scheduler, [{"role": "user", "content": p}], settings, TieSettings()) for p in ps]

    alone = [drive.run_many(processes([p]), scheduler)[0] for p in prompts]
    stacks = []  # per forward: the canvas lengths it stacked
    real = drive.forward_batch

    def counted(pending, *args, **kwargs):
        out = real(pending, *args, **kwargs)
        stacks.append([pending[k].ids.shape[1] for k in out])
        return out

    monkeypatch.setattr(drive, "forward_batch", counted)
    together = drive.run_many(processes(prompts), scheduler)
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    assert [r.text for r in together] == [r.text for r in alone]
    assert any(len(set(lengths)) > 1 for lengths in stacks)  # canvases of different lengths did stack
    assert len(stacks) < sum(r.steps for r in alone) / 2
