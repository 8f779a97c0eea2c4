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


# --- LLaDA2.1's token editing and the provenance records ----------------------------------------------------


def _chosen_logits(member, traj, tokens: dict[int, int], sure: float = 50.0) -> torch.Tensor:
    """Whole-canvas logits, flat except that position p's top-1 is tokens[p] by a margin of `sure`."""
    logits = torch.zeros(traj.ids.numel(), member.logits(traj.ids[None]).shape[-1])
    for p, token in tokens.items():
        logits[p, token] = sure
    return logits


def test_an_edit_rewrites_the_committer_and_log_probability_and_a_remask_clears_them(shipped):
    member = shipped["tiny-sp"]
    settings = DecodeSettings(gen_length=16, block_size=8, answer_length=None, unmask="llada2", threshold=1.0,
                              edit_threshold=0.9)
    traj = Trajectory.start(member, MESSAGES, settings)
    traj.index = 1  # the member's place in an ensemble: what committed_by records
    lay = traj.layout
    block = range(lay.prompt_len, lay.prompt_len + 8)
    first = {p: 10 + p for p in block}
    p0, p1, p2 = block[:3]
    for p in (p0, p1, p2):  # the step's share, one position a step: the one whose top-1 stands out
        traj.step(settings, _chosen_logits(member, traj, {p: first[p]}, sure=3.0))
    assert traj.ids[[p0, p1, p2]].tolist() == [first[p0], first[p1], first[p2]] and traj.edits == 0
    logp_p2 = float(traj.commit_logp[p2])

    # p0's top-1 is now another token and p1's the mask id, both past the edit threshold; p2 keeps its token
    edited = _chosen_logits(member, traj, {**first, p0: 7, p1: member.mask_id})
    traj.step(settings, edited)
    assert traj.edits == 2 and traj.ids[p0] == 7 and traj.ids[p1] == member.mask_id
    assert traj.committed_by[p0] == 1 and traj.commit_logp[p0] == pytest.approx(
        float(torch.log_softmax(edited[p0], -1)[7]), abs=1e-5)
    assert traj.committed_by[p1] == -1 and traj.commit_logp[p1] == 0  # a masked position: nobody's, no log-probability
    assert traj.committed_by[p2] == 1 and traj.commit_logp[p2] == logp_p2  # not edited: its record stands

    traj.run_blocks(settings, 99)  # the member's own logits from here: p1 is decoded again
    gen = slice(lay.prompt_len, lay.total_len)
    assert traj.done and (traj.committed_by[gen] == 1).all() and traj.ids[p1] != member.mask_id


def test_a_remask_while_polishing_a_full_block_is_decoded_again_before_the_next_pass(shipped):
    """Once a block has no masks LLaDA2.1 forwards it again while edits happen; an edit into the mask id makes the
    next forward commit that position (as generate() does), and only passes over the full block count."""
    member = shipped["tiny-sp"]
    settings = DecodeSettings(gen_length=8, block_size=8, answer_length=None, unmask="llada2", threshold=0.9,
                              edit_threshold=0.9, edit_steps=2)
    traj = Trajectory.start(member, MESSAGES, settings)
    block = range(traj.layout.prompt_len, traj.layout.total_len)
    wanted = {p: 10 + p for p in block}
    q = block[3]
    plans, given = [], []

    def step(settings, logits, plan=None):
        full = not bool(traj.masked[traj.layout.prompt_len:].any())
        polishes = sum(1 for c in plans if not c)
        remask = full and polishes == 0  # the first pass over the full block writes the mask id at q
        crafted = _chosen_logits(member, traj, {**wanted, q: member.mask_id} if remask else wanted)
        plans.append(plan.cand.tolist())
        given.append(crafted)
        return Trajectory.step(traj, settings, crafted, plan)

    traj.step = step
    traj.run_blocks(settings, 1)
    # all eight commit at once; a pass edits q into the mask id; q is committed again; a pass with no edits ends it
    assert plans == [list(block), [], [q], []]
    assert traj.done and traj.ids[list(block)].tolist() == [wanted[p] for p in block]
    assert (traj.committed_by[list(block)] == 0).all()
    assert traj.commit_logp[q] == pytest.approx(float(torch.log_softmax(given[2][q], -1)[wanted[q]]), abs=1e-5)
