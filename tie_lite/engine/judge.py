"""What one member (the judge) thinks of the trajectories of a round: the canvases it forwards for a
cross-model score, and the figures it reads from them. The judge's side of round_scores (scoring.py); a Ray
member computes it on its actor. The judge is a sampler.Trajectory; the judged are trajectories or their relay
states (runtime/remote.py), read through the same few attributes."""

from __future__ import annotations

import torch

from tie_lite.engine.process import Forward, Row


def member_view(judge, trajs: list, kind: str):
    """Process: what `judge`'s member thinks of each trajectory, all of them in one batched forward.

    Logits are computed at the positions scored only, and each distinct canvas once: after a relay the verify
    canvases are all the canvas the round started from, so verify costs one forward a judge, not M. With a
    KV cache the judge kept that canvas's keys and values at its round's first step, and the forward
    recomputes the scored positions only."""
    canvases, targets = [], []
    for t in trajs:
        if kind == "verify":
            ids, positions, tokens = verify_canvas(judge, t)
            targets.append((positions, tokens))
        else:
            ids = translate(t, judge)
            positions = watched_positions(judge, ids)
            targets.append((positions, None))
        canvases.append(ids)
    distinct, which = [], []
    for ids in canvases:
        j = next((j for j, d in enumerate(distinct) if torch.equal(d, ids)), None)
        if j is None:
            j = len(distinct)
            distinct.append(ids)
        which.append(j)
    needs = [torch.unique(torch.cat([targets[i][0] for i in range(len(trajs)) if which[i] == j]))
             for j in range(len(distinct))]
    stashed = _round_logits(judge, distinct, needs) if kind == "verify" else None
    if stashed is not None:
        return _scores(judge, targets, which, [Row(stashed)], kind)
    if kind == "verify" and len(distinct) == 1 and judge.round_cache is not None and torch.equal(distinct[0], judge.round_cache_ids):
        request = Forward(judge.member, distinct[0][None], need=needs, caches=[judge.round_cache], query=[needs[0][:0]],
                          blocks=[judge.layout.block_origin])
    else:
        request = Forward(judge.member, torch.stack(distinct), need=needs, blocks=[judge.layout.block_origin] * len(distinct))
    rows = yield request
    judge.forwards += len(distinct)
    return _scores(judge, targets, which, rows, kind)


def _round_logits(judge, distinct: list, needs: list):
    """The judge's first-step logits of this round, when the one canvas to verify is the one the round started
    from and that step read every position to score (a round within one block): the verify forward would
    compute them again."""
    stash = getattr(judge, "round_logits", None)
    if stash is None or len(distinct) != 1 or not torch.equal(distinct[0], judge.round_start):
        return None
    positions, logits = stash
    if not bool(torch.isin(needs[0], positions).all()):
        return None
    return logits


def _scores(judge, targets: list, which: list, rows: list, kind: str) -> list[float]:
    out = []
    for i, (positions, tokens) in enumerate(targets):
        logits = rows[which[i]].logits
        if positions.numel() == 0:
            out.append(0.0)
        elif kind == "verify":
            logp = torch.log_softmax(logits[positions], dim=-1).gather(-1, tokens[:, None])
            out.append(float(logp.mean()))
        else:
            out.append(_confidence_stat(judge, logits[positions], kind))
    return out


def translate(t, judge) -> torch.Tensor:
    """`t`'s canvas as `judge`'s member sees it (id for id with a shared tokenizer, else through text)."""
    if judge.same_canvas(t):
        return t.ids
    return judge.layout.write_state(judge.member.tokenizer, judge.prompt_ids, t.state())


def watched_positions(judge, ids: torch.Tensor) -> torch.Tensor:
    """The positions a cross-model confidence score reads on canvas `ids`, as `judge`'s layout watches them."""
    lay = judge.layout
    masked = ids == lay.mask_id
    gen = masked[lay.prompt_len :]
    if not gen.any():
        return torch.zeros(0, dtype=torch.long)
    blk = lay.block_at(int(gen.nonzero()[0]))
    return lay.watched_positions(masked, lay.block(blk))


def _confidence_stat(judge, logits: torch.Tensor, kind: str) -> float:
    lay = judge.layout
    probs = torch.softmax(logits, dim=-1)
    top = probs.topk(min(2, probs.shape[-1]), dim=-1)
    keep = ~torch.isin(top.indices[:, 0], torch.tensor(lay.eos_ids))
    if not keep.any():
        return 0.0
    probs, values = probs[keep], top.values[keep]
    if kind == "top1":
        return float(values[:, 0].mean())
    if kind == "margin":
        return float((values[:, 0] - values[:, 1]).mean())
    return float((probs * probs.clamp_min(1e-12).log()).sum(-1).mean())  # -entropy


def verify_canvas(judge, t):
    """Canvas for `judge` with `t`'s round commitments masked again, and the (positions, tokens) to score:
    every committed token but end-of-text padding (an end-of-text after another one in its region), which
    follows from the first and would otherwise outweigh the answer digits it sits next to."""
    if judge.same_canvas(t):
        mask_id = t.layout.mask_id
        committed = (t.round_start == mask_id) & (t.ids != mask_id)
        positions = committed.nonzero().flatten()
        ids = t.ids.clone()
        ids[positions] = mask_id
        tokens = t.ids[positions]
    else:
        before = t.round_start_state()
        ids, positions, tokens = judge.layout.write_span(judge.member.tokenizer, judge.prompt_ids, before, t.state())
    full = ids.clone()
    full[positions] = tokens
    eos = torch.tensor(judge.layout.eos_ids)
    padding = torch.isin(tokens, eos) & torch.isin(full[positions - 1], eos)
    return ids, positions[~padding], tokens[~padding]
