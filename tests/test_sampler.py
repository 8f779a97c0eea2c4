"""The decoding engine commits exactly what the reference samplers' rules say."""

import pytest
import torch

from tie_lite.engine.sampler import DecodeSettings, Trajectory

MESSAGES = [{"role": "user", "content": "What is (23+41)*7?"}]


def reference_order(member, prompt_ids, gen_length, block_size, steps):
    """A straightforward LLaDA-rule loop, written independently of the engine: fixed per-block step
    budget, even split of the block's masks over its steps (remainder to the first steps), greedy,
    commit the most confident masked positions of the current block, confidence a float64 softmax as
    Fast-dLLM computes it (the shipped members' EOS runs are exactly 1.0 in float32)."""
    mask = member.mask_id
    x = torch.tensor(prompt_ids + [mask] * gen_length)
    start = len(prompt_ids)
    blocks = gen_length // block_size
    per_block = steps // blocks
    commits = []
    for b in range(blocks):
        lo, hi = start + b * block_size, start + (b + 1) * block_size
        n = int((x[lo:hi] == mask).sum())
        counts = [n // per_block + (1 if i < n % per_block else 0) for i in range(per_block)]
        for count in counts:
            logits = member.logits(x[None])[0]
            pred = logits.argmax(-1)
            conf = torch.softmax(logits.double(), -1).gather(-1, pred[:, None])[:, 0]
            allowed = torch.zeros_like(conf, dtype=torch.bool)
            allowed[lo:hi] = x[lo:hi] == mask
            conf = torch.where(allowed, conf, torch.tensor(-float("inf")))
            if count == 0:
                continue
            chosen = torch.sort(conf, descending=True, stable=True).indices[:count]  # ties: leftmost first
            x[chosen] = pred[chosen]
            commits.append(sorted((int(p), int(pred[p])) for p in chosen))
    return commits, x


def engine_order(member, settings):
    traj = Trajectory.start(member, MESSAGES, settings)
    commits = []
    previous = traj.ids.clone()

    def on_step(t):
        nonlocal previous
        changed = (t.ids != previous).nonzero().flatten()
        commits.append(sorted((int(p), int(t.ids[p])) for p in changed))
        previous = t.ids.clone()

    traj.run_blocks(settings, 999, on_step)
    return commits, traj


@pytest.mark.parametrize("name", ["tiny-sp", "tiny-bpe"])
@pytest.mark.parametrize("gen_length,block_size,steps", [(32, 32, 32), (32, 8, 32), (32, 8, 16), (48, 16, 12), (40, 8, 20)])
def test_greedy_low_confidence_matches_reference(shipped, name, gen_length, block_size, steps):
    member = shipped[name]
    settings = DecodeSettings(gen_length=gen_length, block_size=block_size, steps=steps, answer_length=None)
    ours, traj = engine_order(member, settings)
    ref, x = reference_order(member, traj.prompt_ids, gen_length, block_size, steps)
    assert ours == ref
    assert torch.equal(traj.ids, x)
    assert traj.done


def test_threshold_commits_confident_positions_and_at_least_one(shipped):
    member = shipped["tiny-sp"]
    settings = DecodeSettings(gen_length=32, block_size=8, unmask="threshold", threshold=0.9, answer_length=None)
    traj = Trajectory.start(member, MESSAGES, settings)
    before = traj.masked.clone()
    logits = member.logits(traj.ids[None])[0]
    traj.step(settings, logits)
    committed = (before & ~traj.masked).nonzero().flatten()
    block = slice(traj.layout.prompt_len, traj.layout.prompt_len + 8)
    conf = torch.softmax(logits.double(), -1).max(-1).values
    sure = [p for p in range(block.start, block.stop) if conf[p] >= 0.9]
    assert set(committed.tolist()) == set(sure) or (not sure and len(committed) == 1)


def test_threshold_and_topk_use_fewer_forwards(shipped):
    member = shipped["tiny-sp"]
    one = Trajectory.start(member, MESSAGES, DecodeSettings(answer_length=8))
    one.run_blocks(DecodeSettings(), 99)
    for settings in (DecodeSettings(unmask="threshold", threshold=0.5), DecodeSettings(unmask="topk", topk=2)):
        t = Trajectory.start(member, MESSAGES, settings)
        t.run_blocks(settings, 99)
        assert t.done and t.forwards < one.forwards


def test_answer_positions_wait_for_reasoning(shipped):
    member = shipped["tiny-bpe"]
    settings = DecodeSettings(gen_length=32, block_size=32, answer_length=8)
    traj = Trajectory.start(member, MESSAGES, settings)
    lay = traj.layout
    while not traj.done:
        reasoning_left = bool(traj.masked[lay.reasoning].any())
        answer_before = traj.masked[lay.answer].clone()
        traj.step(settings, member.logits(traj.ids[None])[0])
        if reasoning_left:
            assert torch.equal(traj.masked[lay.answer], answer_before)
    assert traj.ids[lay.marker].tolist() == list(lay.marker_ids)


def test_temperature_sampling_is_seeded(shipped):
    member = shipped["tiny-sp"]

    def run(seed):
        settings = DecodeSettings(temperature=1.0, seed=seed)
        t = Trajectory.start(member, MESSAGES, settings)
        t.run_blocks(settings, 99)
        return t.ids

    assert torch.equal(run(1), run(1))
    assert any(not torch.equal(run(1), run(s)) for s in (2, 3, 4))


@pytest.mark.parametrize("policy", ["margin", "entropy", "random"])
def test_other_policies_complete(shipped, policy):
    settings = DecodeSettings(unmask=policy)
    t = Trajectory.start(shipped["tiny-bpe"], MESSAGES, settings)
    t.run_blocks(settings, 99)
    assert t.done and "Answer:" in t.text()
