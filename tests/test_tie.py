"""TIE: one member is plain decoding, a whole-generation interval is the post-generation ensemble,
relay crosses tokenizers through text, and the scores see what they should."""

import pytest
import torch

from tie_lite.engine.events import Relay, RoundScores, StepFrame
from tie_lite.engine.judge import verify_canvas
from tie_lite.engine.layout import TextState
from tie_lite.engine.sampler import DecodeSettings, Trajectory
from tie_lite.engine.tie import TieSettings, run_tie
from tie_lite.runtime.scheduler import Scheduler

PROMPT = [{"role": "user", "content": "What is 23*4+17*5?"}]


def plain(member, settings):
    t = Trajectory.start(member, PROMPT, settings)
    t.run_blocks(settings, 999)
    return t


def test_one_member_is_plain_decoding(shipped):
    settings = DecodeSettings()
    for member in shipped.values():
        result = run_tie(Scheduler([member]), PROMPT, settings)
        t = plain(member, settings)
        assert result.text == t.text()
        assert result.steps == t.forwards
        assert result.final_member == member.name


def test_whole_generation_interval_is_post_generation_ensemble(shipped):
    settings = DecodeSettings()
    members = list(shipped.values())
    result = run_tie(Scheduler(members), PROMPT, settings, TieSettings(interval=10**6))
    singles = {m.name: plain(m, settings) for m in members}
    assert len(result.rounds) == 1
    assert result.responses == {n: t.text() for n, t in singles.items()}
    norm = {n: (t.total_tcc / t.total_steps, -t.total_top1 / t.total_steps) for n, t in singles.items()}
    assert result.final_member == min(norm, key=norm.get)
    assert result.text == singles[result.final_member].text()


def test_rounds_relay_the_leader_and_emit_events(shipped):
    events = []
    members = list(shipped.values())
    result = run_tie(Scheduler(members), PROMPT, DecodeSettings(block_size=16), TieSettings(interval=16),
                     on_event=events.append)
    rounds = [e for e in events if isinstance(e, RoundScores)]
    relays = [e for e in events if isinstance(e, Relay)]
    assert len(rounds) == 4 == len(result.rounds)  # 64 positions, one block of 16 per round
    assert len(relays) == 3
    assert [r.leader for r in rounds] == [r["leader"] for r in result.rounds]
    assert all(max(r.scores, key=r.scores.get) == r.leader for r in rounds)
    assert any(isinstance(e, StepFrame) for e in events)
    assert result.leader_changes == sum(a.leader != b.leader for a, b in zip(rounds, rounds[1:]))


def test_text_relay_round_trip_between_shipped_tokenizers(shipped):
    char, bpe = shipped["tiny-sp"], shipped["tiny-bpe"]
    settings = DecodeSettings()
    src = Trajectory.start(char, PROMPT, settings)
    src.run_blocks(settings, 2)  # two blocks committed: a block boundary
    dst = Trajectory.start(bpe, PROMPT, settings)
    dst.adopt(src)
    assert dst.state() == src.state()
    assert src.state().reasoning  # something was actually relayed
    back = Trajectory.start(char, PROMPT, settings)
    back.adopt(dst)
    assert back.state() == src.state()
    # the receiver keeps its own budget: its canvas length is its own layout's
    assert dst.ids.numel() == dst.layout.total_len
    dst.run_blocks(settings, 99)
    assert dst.done and dst.text().startswith(src.state().reasoning.strip()[:5])


def test_same_tokenizer_relays_ids_exactly(shipped):
    char = shipped["tiny-sp"]
    settings = DecodeSettings()
    a, b = Trajectory.start(char, PROMPT, settings), Trajectory.start(char, PROMPT, settings)
    a.run_blocks(settings, 1)
    b.adopt(a)
    assert torch.equal(a.ids, b.ids)


def test_free_layout_watches_the_next_masked_positions_past_the_block(shipped):
    settings = DecodeSettings(gen_length=48, block_size=16, answer_length=None)
    t = Trajectory.start(shipped["tiny-sp"], PROMPT, settings)
    lay = t.layout
    watched = t.scored_positions(t.masked, lay.block(0))
    assert watched.tolist() == list(range(lay.block(1).start, lay.block(1).start + 8))
    t.run_blocks(settings, 2)
    last = t.scored_positions(t.masked, lay.block(2))  # nothing after the last block: its own masks
    assert last.tolist() == list(range(lay.block(2).start, lay.block(2).start + 8))
    result = run_tie(Scheduler(list(shipped.values())), PROMPT, settings, TieSettings(score="top1"))
    assert len(result.rounds) == 3 and result.answer is None


def one_round(member, settings, blocks_before: int, blocks: int):
    """A trajectory that decoded `blocks_before` blocks, then a round of `blocks`; its state before and after."""
    t = Trajectory.start(member, PROMPT, settings)
    t.run_blocks(settings, blocks_before)
    t.begin_round()
    before = t.state()
    t.run_blocks(settings, blocks)
    return t, before, t.state()


def test_verify_masks_exactly_the_rounds_commitments_across_tokenizers(shipped):
    char, bpe = shipped["tiny-sp"], shipped["tiny-bpe"]
    settings = DecodeSettings()
    t, before, after = one_round(char, settings, 1, 1)
    judge = Trajectory.start(bpe, PROMPT, settings)
    ids, positions, tokens = verify_canvas(judge, t)
    new_text = after.reasoning[len(before.reasoning):]
    assert bpe.tokenizer.decode(tokens.tolist(), skip_special_tokens=True) == new_text  # plus EOS padding if it ended
    assert (ids[positions] == bpe.mask_id).all()
    kept = judge.layout.read_state(bpe.tokenizer, ids)
    assert kept.reasoning == before.reasoning
    # the same tokenizer: exactly the positions committed during the round
    judge_same = Trajectory.start(char, PROMPT, settings)
    ids2, positions2, tokens2 = verify_canvas(judge_same, t)
    committed = ((t.round_start == char.mask_id) & (t.ids != char.mask_id)).nonzero().flatten()
    assert positions2.tolist() == committed.tolist()
    assert torch.equal(tokens2, t.ids[committed])


def test_verify_scores_the_decision_to_end_not_the_padding_after_it(shipped):
    """A round that finishes the response commits end-of-text padding: it is masked again (it would give
    the first end-of-text away) but only the first end-of-text of each region is scored, so a handful of
    answer digits is not outweighed by a dozen certain paddings."""
    char, bpe = shipped["tiny-sp"], shipped["tiny-bpe"]
    settings = DecodeSettings()
    t, before, after = one_round(char, settings, 2, 99)
    assert t.done
    eos = torch.tensor(char.eos_ids)
    committed = ((t.round_start == char.mask_id) & (t.ids != char.mask_id)).nonzero().flatten()
    for judge in (Trajectory.start(char, PROMPT, settings), Trajectory.start(bpe, PROMPT, settings)):
        ids, positions, tokens = verify_canvas(judge, t)
        lay = judge.layout
        scored_eos = positions[torch.isin(tokens, torch.tensor(lay.eos_ids))].tolist()
        regions = [lay.reasoning, lay.answer]
        assert sorted(sum(r.start <= p < r.stop for p in scored_eos) for r in regions) == [1, 1]  # one per region
        masked = (ids == lay.mask_id).nonzero().flatten()
        assert len(masked) > len(positions)  # the padding is masked too, just not scored
        text = judge.member.tokenizer.decode(tokens.tolist(), skip_special_tokens=True)
        assert text.replace(" ", "") == (after.reasoning[len(before.reasoning):] + after.answer).replace(" ", "")
    same = verify_canvas(Trajectory.start(char, PROMPT, settings), t)
    padding = torch.isin(t.ids[committed], eos) & torch.isin(t.ids[committed - 1], eos)
    assert padding.any() and same[1].tolist() == committed[~padding].tolist()


@pytest.mark.parametrize("score", ["top1", "entropy", "margin", "verify"])
def test_cross_model_scores_run_and_pick_the_best(shipped, score):
    result = run_tie(Scheduler(list(shipped.values())), PROMPT, DecodeSettings(), TieSettings(score=score))
    for r in result.rounds:
        assert r["leader"] == max(r["scores"], key=r["scores"].get)
    assert result.steps > 2 * 40  # scoring forwards are counted


def test_oracle_relay_follows_the_gold(shipped):
    gold = TextState("23*4=80+12=92;17*5=50+35=85;92+85=177", True, "177", True)
    result = run_tie(Scheduler(list(shipped.values())), PROMPT, DecodeSettings(), TieSettings(score="oracle", select="oracle"),
                     gold=gold)
    assert all(set(r["scores"].values()) <= {0.0, 1.0} for r in result.rounds)


def test_selection_rules(shipped):
    members = list(shipped.values())
    best = run_tie(Scheduler(members), PROMPT, DecodeSettings(), TieSettings(select="best-model", select_model="tiny-bpe"))
    assert best.final_member == "tiny-bpe" and best.text == best.responses["tiny-bpe"]
    most = run_tie(Scheduler(members), PROMPT, DecodeSettings(), TieSettings(select="most-selected"))
    leaders = [r["leader"] for r in most.rounds]
    assert leaders.count(most.final_member) == max(leaders.count(n) for n in set(leaders))
