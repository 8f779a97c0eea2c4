"""A member's trajectory and how it advances under an unmasking policy (the reference samplers' rules).

Two step schedules, one engine:

- "blocks" (LLaDA's): per block of `block_size` positions and `steps_per_block` steps, each step commits
  ceil(m / r) of the block's m masked positions with r steps left in it: exactly LLaDA's even split (n // s
  each step, the first n % s steps one more), minus the forward passes LLaDA spends on steps that commit
  nothing.
- "dream" (Dream's `diffusion_generate`): no blocks, the whole generation is one; with timesteps
  `linspace(1, eps, steps + 1)` (float32), step i commits int(m * (1 - t[i+1] / t[i])) of the m masked
  positions and the last step all that are left. Steps that commit nothing are skipped (Dream spends a
  forward on them whose canvas, and so whose logits, the next step sees unchanged).

LLaDA2's generate() is the `llada2` policy: each step commits the block's masked positions whose top-1
probability exceeds `threshold` (strictly), and at least the step's share of the block (LLaDA's even split of
the block over its steps, at least one). LLaDA2.1's token editing is `edit_threshold`: in the same step,
committed positions of the current block (never the prompt or the answer marker) whose top-1 token differs
from the one standing there, with probability above `edit_threshold`, take the new token; once a block has no
masks left it is forwarded again while edits happen, at most `edit_steps` more times (2.1's max_post_steps).
An edit is part of the member's trajectory: scores read the canvas as it stands at the end of a round, and the
provenance records (`committed_by`, `commit_logp`) name the editing member and the edited token's probability.

Dream's algorithm names are policies too: `maskgit_plus` (top-1 probability), `topk_margin` (top-1 minus
top-2 probability) and `entropy` (negative entropy). Under the "dream" schedule `entropy` is computed as
diffusion_generate computes it, sum(p * log(p + 1e-10)); under "blocks" as before. At temperature 0 a
single Dream member on the free layout then commits what diffusion_generate(..., temperature=0, top_k=None)
commits. Note that diffusion_generate called without top_k uses top_k=50 (the model config's legacy
generation default), which changes its confidences; tie-lite never truncates the distribution.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import torch

from tie_lite.checks import check_lengths, check_seed, shown
from tie_lite.engine.judge import member_view
from tie_lite.engine.answer import PAPER_ANSWER_MARKER
from tie_lite.engine.layout import Layout, TextState, make_layout
from tie_lite.engine.process import Forward, run
from tie_lite.errors import UserError

UNMASK_POLICIES = ("low_confidence", "threshold", "topk", "margin", "entropy", "random", "maskgit_plus", "topk_margin",
                   "llada2", "fast_dllm_v2")
# Passes over one full block while LLaDA2.1's editing changes it: 16 times the authors' 16. A pass that edits
# nothing ends the block; past this, tokens that flip back and forth are not converging.
MAX_EDIT_STEPS = 256
DREAM_ALGS = ("maskgit_plus", "topk_margin", "entropy")  # diffusion_generate's `alg` names
SCHEDULES = ("blocks", "dream")
CACHES = ("none", "prefix", "dual")
# The settings a member's recipe may choose (the others, seed and answer marker, belong to the request)
RECIPE_KEYS = ("gen_length", "block_size", "steps", "temperature", "unmask", "threshold", "topk", "answer_length",
               "schedule", "eps", "cache", "edit_threshold", "edit_steps", "stop_at_eos", "sub_block")
DREAM_ENTROPY_EPS = 1e-10  # diffusion_generate's log(p + 1e-10)


@dataclass(frozen=True)
class DecodeSettings:
    gen_length: int = 64
    block_size: int = 16
    steps: int | None = None  # None: one token per step (steps == gen_length)
    temperature: float = 0.0
    unmask: str = "low_confidence"
    threshold: float = 0.9
    topk: int = 2
    seed: int = 0
    answer_length: int | None = 8  # None: free layout (no answer marker)
    answer_marker: str = PAPER_ANSWER_MARKER  # the text between reasoning and answer (a task may give its own)
    schedule: str = "blocks"  # "blocks" (LLaDA's semi-autoregressive blocks) or "dream" (diffusion_generate's)
    eps: float = 1e-3  # "dream": the last timestep of linspace(1, eps, steps + 1)
    # block KV cache: none (exact, the reference samplers' computation), prefix (the committed prefix's keys and
    # values reused within a block) or dual (the suffix's too). The CLI, chat and server default to dual.
    cache: str = "none"
    # LLaDA2.1's token editing: committed positions of the current block whose top-1 token differs and is more
    # probable than this are replaced (None: no editing); at most `edit_steps` extra forwards once a block is full
    edit_threshold: float | None = None
    edit_steps: int = 16
    # Block diffusion's early stop (SDAR's generate()): once a finished block leaves an end-of-text in the response,
    # the positions still masked are end-of-text too (the free layout only: an answer marker's answer is still to come)
    stop_at_eos: bool = False
    # Fast-dLLM v2's sub-blocks (`--unmask fast_dllm_v2`): a block's sub-blocks of this size are decoded left to right
    sub_block: int = 8
    # Which of these fields the user set (engine/recipe.py): the others come from each member's recipe, the
    # decode settings its authors' code uses. None: every field is as given here (a caller that builds its own
    # settings decodes with them as they are).
    given: frozenset[str] | None = None
    # Settings for one member by name, over everything else: ((member name, ((field, value), ...)), ...)
    member_options: tuple[tuple[str, tuple[tuple[str, object], ...]], ...] = ()

    @property
    def dream(self) -> bool:
        return self.schedule == "dream"

    @property
    def total_steps(self) -> int:
        return self.steps if self.steps is not None else self.gen_length

    @property
    def layout_block_size(self) -> int:
        """The canvas's block size: `block_size`, or under the "dream" schedule the whole generation."""
        return self.gen_length if self.dream else self.block_size

    @property
    def steps_per_block(self) -> int:
        return self.total_steps // (self.gen_length // self.layout_block_size)

    def for_length(self, gen_length: int) -> DecodeSettings:
        """These settings over a canvas of another length: the same steps per token, a whole number of steps per
        block (a server's cap or lm-eval's max_gen_toks choose the length)."""
        steps = None
        if self.steps is not None:
            blocks = max(1, gen_length // (gen_length if self.dream else self.block_size))
            steps = max(1, round(self.steps * gen_length / self.gen_length / blocks)) * blocks
        given = None if self.given is None else self.given | {"gen_length"}  # steps stay the member's if not given
        return replace(self, gen_length=gen_length, steps=steps, given=given)

    def validate(self) -> None:
        check_lengths({"--gen-length": self.gen_length, "--block-size": self.block_size, "--steps": self.steps,
                       "--answer-length": self.answer_length})
        check_seed(self.seed, "--seed")
        if self.unmask not in UNMASK_POLICIES:
            raise UserError(f"unknown --unmask '{shown(self.unmask)}'; use one of {', '.join(UNMASK_POLICIES)}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"unknown --schedule '{shown(self.schedule)}'; use one of {', '.join(SCHEDULES)}")
        if self.cache not in CACHES:
            raise UserError(f"unknown --cache '{shown(self.cache)}'; use one of {', '.join(CACHES)}")
        if self.gen_length <= 0 or self.block_size <= 0 or self.total_steps <= 0:
            raise UserError("--gen-length, --block-size and --steps must be positive")
        if not math.isfinite(self.temperature):
            raise UserError("--temperature must be a finite number")
        if not math.isfinite(self.threshold):
            raise UserError("--threshold must be a finite number")
        if self.edit_threshold is not None and not (math.isfinite(self.edit_threshold) and 0 <= self.edit_threshold < 1):
            raise UserError("--edit-threshold must be in [0, 1)")
        if not 0 <= self.edit_steps <= MAX_EDIT_STEPS:
            raise UserError(f"--edit-steps must be in 0..{MAX_EDIT_STEPS} (passes over one full block; the LLaDA2.1 "
                            f"authors use 16)")
        if self.dream:
            self._validate_dream()
            return
        if self.gen_length % self.block_size:
            raise UserError(
                f"--gen-length {self.gen_length} is not a multiple of --block-size {self.block_size}; "
                f"use e.g. --gen-length {(self.gen_length // self.block_size + 1) * self.block_size}"
            )
        blocks = self.gen_length // self.block_size
        if self.total_steps % blocks:
            raise UserError(
                f"--steps {self.total_steps} must be a multiple of the number of blocks ({blocks} = gen-length / "
                f"block-size); use e.g. --steps {max(1, self.total_steps // blocks) * blocks}"
            )
        if self.temperature < 0:
            raise UserError("--temperature must be >= 0")
        if not 0 < self.threshold <= 1:
            raise UserError("--threshold must be in (0, 1]")
        if self.topk < 1 or (self.unmask == "topk" and self.topk > self.block_size):
            raise UserError(f"--topk must be in 1..{self.block_size} (the positions of one block, --block-size)")
        if self.unmask == "fast_dllm_v2" and (self.sub_block < 1 or self.block_size % self.sub_block):
            raise UserError(f"--sub-block {self.sub_block} must divide --block-size {self.block_size} (Fast-dLLM v2 "
                            f"decodes a block's sub-blocks left to right)")

    def _validate_dream(self) -> None:
        if self.unmask in ("threshold", "topk"):
            raise UserError(
                f"--schedule dream sets how many positions each step commits, so --unmask {self.unmask} does not "
                f"apply; use Dream's {', '.join(DREAM_ALGS)}, or low_confidence, margin, random"
            )
        if not (math.isfinite(self.eps) and 0 < self.eps < 1):
            raise UserError("--eps must be in (0, 1)")
        if self.temperature < 0:
            raise UserError("--temperature must be >= 0")


def blocks_from_start(member, settings: DecodeSettings) -> bool:
    """A block-diffusion member numbers its blocks from position 0 of the sequence, as its authors decode it."""
    return getattr(getattr(member, "family", None), "block_causal", False) and not settings.dream


@dataclass
class Trajectory:
    """One member's canvas plus what scoring needs from its recent steps (the relay state). The member is a
    loaded model as runtime/loading.py makes it: its tokenizer and family facts, and `forward` for requests."""

    member: object
    layout: Layout
    prompt_ids: list[int]
    ids: torch.Tensor
    generator: torch.Generator
    block_step: int = 0
    forwards: int = 0
    round_start: torch.Tensor | None = None
    prev_top1: torch.Tensor | None = None
    round_tcc: float = 0.0
    round_steps: int = 0
    total_tcc: float = 0.0
    total_steps: int = 0
    total_top1: float = 0.0
    watch: bool = True  # record TCC / top-1 at the watched positions (scoring reads them; one member does not)
    cache: object = None  # the KV cache of the latest block refresh (models/cache.py), and its block's start
    cache_block: int = -1
    round_cache: object = None  # the first refresh of this round, on the canvas the round started from
    round_cache_ids: torch.Tensor | None = None
    # the round's first step's logits (the positions it read, the step's own logits object, kept by reference), on
    # the canvas the round started from: verify reads a trajectory's round commitments there, so a judge whose
    # member took that step needs no forward
    round_logits: tuple[torch.Tensor, object] | None = None
    index: int = 0  # the member's place in the ensemble: what `committed_by` records
    committed_by: torch.Tensor | None = None  # per position, the member that committed its token (-1: none)
    # per position, the log-probability its token had when it was committed (0 where nothing was: prompt, marker,
    # masks); carried through relays like `committed_by`, so an API can report each token's logprob
    commit_logp: torch.Tensor | None = None
    edit_threshold: float | None = None  # LLaDA2.1's token editing (DecodeSettings.edit_threshold)
    sub_block: int | None = None  # Fast-dLLM v2's sub-blocks (`--unmask fast_dllm_v2`); None: the whole block
    edits: int = 0  # committed tokens replaced by token editing, over the whole decode
    last_edits: int = 0
    _pending_edits: tuple | None = None

    @classmethod
    def start(cls, member, messages: list[dict], settings: DecodeSettings) -> Trajectory:
        prompt = member.prompt_ids(messages)
        layout, ids = make_layout(
            member.tokenizer,
            prompt,
            gen_length=settings.gen_length,
            block_size=settings.layout_block_size,
            mask_id=member.mask_id,
            eos_ids=member.eos_ids,
            answer_length=settings.answer_length,
            marker=settings.answer_marker,
            max_length=member.max_length,
            blocks_from_start=blocks_from_start(member, settings),
        )
        gen = torch.Generator().manual_seed(settings.seed)
        traj = cls(member, layout, prompt, ids, gen, committed_by=torch.full_like(ids, -1),
                   commit_logp=torch.zeros(ids.numel()), edit_threshold=settings.edit_threshold,
                   sub_block=settings.sub_block if settings.unmask == "fast_dllm_v2" else None)
        traj.begin_round()
        return traj

    # --- state ------------------------------------------------------------------------------------

    @property
    def masked(self) -> torch.Tensor:
        return self.ids == self.layout.mask_id

    @property
    def done(self) -> bool:
        return not bool(self.masked[self.layout.prompt_len :].any())

    def current_block(self) -> int | None:
        gen = self.masked[self.layout.prompt_len :]
        if not gen.any():
            return None
        return self.layout.block_at(int(gen.nonzero()[0]))

    def state(self) -> TextState:
        return self.layout.read_state(self.member.tokenizer, self.ids)

    def settings_run(self, settings: DecodeSettings) -> dict:
        """What this member's decode ran with (--json, the API's trace): the settings its sampler read, and its
        canvas as laid out (a block-diffusion member's blocks start at multiples of the block from position 0)."""
        lay = self.layout
        out = {"sampler": "masked", "gen_length": lay.gen_length, "block_size": lay.block_size,
               "first_block": lay.block_size - lay.block_offset, "steps": settings.total_steps,
               "schedule": settings.schedule, "unmask": settings.unmask, "temperature": settings.temperature,
               "seed": settings.seed, "cache": settings.cache if self.member.caches else "none",
               "layout": "answer" if lay.has_answer else "free"}
        # a block-diffusion member's finished blocks never see later ones: any cache is exact; a bidirectional
        # member's reused keys and values are Fast-dLLM's approximation
        out["cache_exact"] = out["cache"] == "none" or bool(getattr(self.member, "block_causal", False))
        if settings.unmask in ("threshold", "llada2", "fast_dllm_v2"):
            out["threshold"] = settings.threshold
        if settings.unmask == "topk":
            out["topk"] = settings.topk
        if settings.dream:
            out["eps"] = settings.eps
        if self.edit_threshold is not None:
            out |= {"edit_threshold": self.edit_threshold, "edit_steps": settings.edit_steps}
        if settings.stop_at_eos:
            out["stop_at_eos"] = True
        if self.sub_block is not None:
            out["sub_block"] = self.sub_block
        return out

    def text(self) -> str:
        return self.layout.text(self.member.tokenizer, self.ids)

    def render(self, mask_symbol: str = "░") -> str:
        return self.layout.render(self.member.tokenizer, self.ids, mask_symbol)

    def pieces(self) -> list[tuple[str, int | None]]:
        """The canvas as (text, committing member) pieces (Layout.pieces), for views that show provenance."""
        return self.layout.pieces(self.member.tokenizer, self.ids, self.committed_by)

    def round_start_state(self) -> TextState:
        return self.layout.read_state(self.member.tokenizer, self.round_start)

    @property
    def tokenizer_key(self) -> str:
        return self.member.tokenizer_key

    def same_canvas(self, other) -> bool:
        """Whether `other` (a trajectory or its relay state) writes canvases id for id as this one does."""
        return other.tokenizer_key == self.tokenizer_key and other.layout == self.layout

    def judge(self, trajs: list, kind: str):
        """Process: this member's cross-model scores of every trajectory (judge.member_view)."""
        return (yield from member_view(self, trajs, kind))

    def begin_round(self) -> None:
        self.round_start = self.ids.clone()
        self.round_tcc = 0.0
        self.round_steps = 0
        self.round_cache = self.round_cache_ids = self.round_logits = None

    def adopt(self, other: Trajectory) -> None:
        """Relay: take `other`'s canvas, id for id when the tokenizers match, else through text."""
        if other is self:
            return
        owners = getattr(other, "committed_by", None)  # a Ray member's relay state carries none
        if self.same_canvas(other):
            self.ids = other.ids.clone()
            self.committed_by = owners.clone() if owners is not None else torch.full_like(self.ids, -1)
            logp = getattr(other, "commit_logp", None)
            self.commit_logp = logp.clone() if logp is not None else torch.zeros(self.ids.numel())
        else:
            self.ids = self.layout.write_state(self.member.tokenizer, self.prompt_ids, other.state())
            self.committed_by = torch.full_like(self.ids, -1) if owners is None else self.layout.owners_of(
                self.member.tokenizer, self.ids, other.layout.char_owners(other.member.tokenizer, other.ids, owners))
            logp = getattr(other, "commit_logp", None)
            self.commit_logp = torch.zeros(self.ids.numel()) if logp is None else self.layout.logprobs_of(
                self.member.tokenizer, self.ids, other.layout.char_logprobs(other.member.tokenizer, other.ids, logp))
        self.block_step = 0
        self.prev_top1 = None
        self.cache = None  # another canvas: the next step refreshes

    # --- decoding ---------------------------------------------------------------------------------

    def scored_positions(self, masked: torch.Tensor, block: slice) -> torch.Tensor:
        """Positions whose predictions are watched (Layout.watched_positions)."""
        return self.layout.watched_positions(masked, block)

    def plan_step(self) -> StepPlan | None:
        """What the next step reads: its block, the positions it may commit and the watched ones; None when
        the canvas is complete. Known before the forward, so the forward computes logits there only."""
        lay = self.layout
        masked = self.masked  # once per step: the block, the candidates and the watched positions share it
        gen = masked[lay.prompt_len :]
        if not gen.any():
            return None
        block = lay.block(lay.block_at(int(gen.nonzero()[0])))
        candidates = torch.zeros_like(masked)
        candidates[block] = masked[block]
        if self.sub_block is not None:
            self._sub_block_candidates(candidates, block)
        if lay.has_answer and masked[lay.reasoning].any():
            candidates[lay.answer] = False  # answers are committed after all of the reasoning
        cand = candidates.nonzero().flatten()
        watched = self.scored_positions(masked, block) if self.watch else cand[:0]
        return StepPlan(masked, block, cand, watched, self._editable(masked, block))

    def _sub_block_candidates(self, candidates: torch.Tensor, block: slice) -> None:
        """Fast-dLLM v2: a block whose first position is still masked commits it alone first (its authors decode it
        autoregressively, from the previous block's last output); then the first sub-block holding masks."""
        start = self.layout.block_start(block)
        if start >= self.layout.prompt_len and bool(candidates[start]):
            candidates[start + 1 :] = False
            return
        for first in range(start, block.stop, self.sub_block):
            if bool(candidates[first : first + self.sub_block].any()):
                candidates[: first] = False
                candidates[first + self.sub_block :] = False
                return

    def _editable(self, masked: torch.Tensor, block: slice) -> torch.Tensor | None:
        """Committed positions of `block` that token editing may replace (never the answer marker); None when
        the trajectory does not edit."""
        if self.edit_threshold is None:
            return None
        editable = ~masked
        editable[: block.start] = False
        editable[block.stop :] = False
        editable[self.layout.marker] = False
        return editable.nonzero().flatten()

    def step(self, settings: DecodeSettings, logits, plan: StepPlan | None = None) -> bool:
        """Commit from one forward's logits (for this canvas, indexable by position). False when it was
        already complete."""
        plan = plan or self.plan_step()
        if plan is None:
            return False
        lay, masked, block, cand = self.layout, plan.masked, plan.block, plan.cand
        self.forwards += 1

        cand_logits = logits[cand]
        if settings.temperature > 0:
            x0 = _gumbel_argmax(cand_logits, settings.temperature, self.generator)
        else:
            x0 = cand_logits.argmax(-1)
        confidence = commit_confidence(settings.unmask, cand_logits, x0, self.generator, dream=settings.dream)

        if plan.editable is not None:  # read before this step's commitments, as LLaDA2.1's generate() does
            self._edit(settings, logits, plan.editable)
        if settings.dream:
            left = int(masked[lay.prompt_len :].sum())
            count = dream_transfer_count(left, self.block_step, settings.total_steps, settings.eps)
            while count == 0:  # a step of Dream's that commits nothing: the next one sees the same canvas
                self.block_step += 1
                count = dream_transfer_count(left, self.block_step, settings.total_steps, settings.eps)
        elif settings.unmask == "threshold":
            count = max(1, int((confidence >= settings.threshold).sum()))
        elif settings.unmask == "topk":
            count = settings.topk
        elif settings.unmask == "fast_dllm_v2":  # every candidate above the threshold (strictly), at least one
            count = max(1, int((confidence > settings.threshold).sum()))
        elif settings.unmask == "llada2":
            share = llada2_share(lay.block_size, settings.steps_per_block, self.block_step)
            count = max(int((confidence > settings.threshold).sum()), share)
        else:
            left = max(1, settings.steps_per_block - self.block_step)
            count = math.ceil(int(masked[block].sum()) / left)
        count = min(count, cand.numel())
        chosen = most_confident(confidence, count)
        if self.watch:
            self._record(logits, plan.watched)
        self.ids[cand[chosen]] = x0[chosen]
        if self.committed_by is not None:
            self.committed_by[cand[chosen]] = self.index
        if self.commit_logp is not None:
            picked = torch.softmax(cand_logits[chosen], dim=-1).gather(-1, x0[chosen, None])[:, 0]
            self.commit_logp[cand[chosen]] = picked.clamp_min(1e-30).log()  # each committed token's log-probability
        if plan.editable is not None and self._pending_edits is not None:
            self._apply_edits(*self._pending_edits)
            self._pending_edits = None
        self.block_step += 1
        if not (self.ids[block] == lay.mask_id).any():
            self.block_step = 0
        return True

    def _edit(self, settings: DecodeSettings, logits, editable: torch.Tensor) -> None:
        """LLaDA2.1's edits at `editable` (positions, tokens), applied with the step's commitments."""
        self.last_edits = 0
        self._pending_edits = None
        if not editable.numel():
            return
        probs = torch.softmax(logits[editable], dim=-1)
        top_p, top = probs.max(-1)
        change = (top != self.ids[editable]) & (top_p > settings.edit_threshold)
        if bool(change.any()):
            self._pending_edits = (editable[change], top[change], top_p[change])
            self.last_edits = int(change.sum())
            self.edits += self.last_edits

    def _apply_edits(self, positions: torch.Tensor, tokens: torch.Tensor, probs: torch.Tensor) -> None:
        """Write the edited tokens, and make the provenance records describe them: this member committed each,
        with the probability the editing forward gave it. A token edited into the mask id (LLaDA2.1's generate()
        does not rule it out) is a masked position again: no committer, no log-probability."""
        self.ids[positions] = tokens
        remasked = tokens == self.layout.mask_id
        if self.committed_by is not None:
            self.committed_by[positions] = torch.where(remasked, -1, self.index)
        if self.commit_logp is not None:
            logp = probs.clamp_min(1e-30).log().to(self.commit_logp.dtype)
            self.commit_logp[positions] = torch.where(remasked, torch.zeros_like(logp), logp)

    def _polish(self, settings: DecodeSettings, index: int, on_step=None):
        """Process: LLaDA2.1's passes over a block that has no masks left, while they edit (at most
        `edit_steps`). An edit that wrote the mask id leaves a masked position: the next forward commits there
        again, as generate() does, and only passes over a full block count towards `edit_steps`."""
        block = self.layout.block(index)
        passes = 0
        while True:
            masked = self.masked
            full = not bool(masked[block].any())
            if full:
                passes += 1
                if passes > settings.edit_steps:
                    return
                watched = self.scored_positions(masked, block) if self.watch else torch.zeros(0, dtype=torch.long)
                plan = StepPlan(masked, block, torch.zeros(0, dtype=torch.long), watched, self._editable(masked, block))
            else:
                plan = self.plan_step()
            yield from self._forward_and_step(settings, plan, on_step)
            if full and not self.last_edits:
                return

    def _record(self, logits: torch.Tensor, watched: torch.Tensor) -> None:
        """Token change count at the watched positions (EOS predictions excluded), normalized per step."""
        if watched.numel():
            probs = torch.softmax(logits[watched], dim=-1)
            top_p, top = probs.max(-1)
            keep = ~torch.isin(top, torch.tensor(self.layout.eos_ids))
            watched, top, top_p = watched[keep], top[keep], top_p[keep]
        else:
            top = top_p = watched
        tcc = 0.0
        if watched.numel():
            if self.prev_top1 is not None:
                prev = self.prev_top1[watched]
                tcc = float(((prev >= 0) & (prev != top)).sum()) / watched.numel()
            self.total_top1 += float(top_p.mean())
        full = torch.full((self.ids.numel(),), -1, dtype=torch.long)
        full[watched] = top
        self.prev_top1 = full
        self.round_tcc += tcc
        self.round_steps += 1
        self.total_tcc += tcc
        self.total_steps += 1

    def advance(self, settings: DecodeSettings, blocks: int, on_step=None):
        """Process: advance until `blocks` more blocks are complete (relays land on block boundaries) or
        done, yielding each canvas to forward (see process.py)."""
        for _ in range(blocks):
            blk = self.current_block()
            while blk is not None and self.current_block() == blk:
                yield from self._forward_and_step(settings, self.plan_step(), on_step)
            if blk is not None and self.edit_threshold is not None:
                yield from self._polish(settings, blk, on_step)
            if settings.stop_at_eos and not self.layout.has_answer:
                self._stop_after_eos()
            if self.done:
                return

    def _stop_after_eos(self) -> None:
        """After a finished block: where the response holds an end-of-text, what is still masked becomes that
        end-of-text (nobody committed it), as SDAR's generate() stops there."""
        response = self.ids[self.layout.prompt_len :]
        found = torch.isin(response, torch.tensor(self.layout.eos_ids))
        if bool(found.any()):
            masked = self.masked
            masked[: self.layout.prompt_len] = False
            self.ids[masked] = response[int(found.nonzero()[0])]

    def _forward_and_step(self, settings: DecodeSettings, plan: StepPlan, on_step=None):
        """Process: one forward for `plan` (keeping the cache it brings back) and the step on its logits."""
        request = self.forward_request(settings, plan)
        row = (yield request)[0]
        if row.cache is not None:
            self._keep_cache(row.cache, plan)
        if self.round_logits is None and self.round_start is not None and torch.equal(self.ids, self.round_start):
            self.round_logits = (request.need[0], row.logits)
        self.step(settings, row.logits, plan)
        if on_step is not None:
            on_step(self)

    def forward_request(self, settings: DecodeSettings, plan: StepPlan) -> Forward:
        """The forward a step needs: logits at its candidates and watched positions only; with a cache, a
        whole-canvas refresh at each new block (a relay lands on one, so it costs no extra forward) and then
        only the positions that change (prefix: the block onwards; dual: the block and the watched ones)."""
        read = [plan.cand, plan.watched] + ([plan.editable] if plan.editable is not None else [])
        need = [torch.unique(torch.cat(read))]
        blocks = [self.layout.block_origin]
        if settings.cache == "none" or not self.member.caches:
            return Forward(self.member, self.ids[None], need=need, blocks=blocks)
        start = self.layout.block_start(plan.block)  # the prompt's tail shares the first block: it changes with it
        if self.cache is not None and self.cache_block < start and self.member.block_causal:
            # block diffusion: the blocks before the last cached one never saw what came after them, so their
            # keys and values are final; the refresh recomputes from the block just finished onwards
            query = torch.arange(self.cache_block, self.layout.total_len)
            return Forward(self.member, self.ids[None], need=need, store=True, caches=[self.cache], query=[query],
                           blocks=blocks)
        if self.cache is None or self.cache_block != start:
            return Forward(self.member, self.ids[None], need=need, store=True, blocks=blocks)
        stop = self.layout.total_len if settings.cache == "prefix" else plan.block.stop
        query = torch.arange(start, stop)  # the member adds the positions the logits are read at
        return Forward(self.member, self.ids[None], need=need, caches=[self.cache], query=[query], blocks=blocks)

    def _keep_cache(self, cache, plan: StepPlan) -> None:
        self.cache, self.cache_block = cache, self.layout.block_start(plan.block)
        if self.round_cache is None:  # verify scores this round's commitments against this canvas
            self.round_cache, self.round_cache_ids = cache, self.ids.clone()

    def run_blocks(self, settings: DecodeSettings, blocks: int, on_step=None) -> None:
        run(self.advance(settings, blocks, on_step))


@dataclass(frozen=True)
class StepPlan:
    masked: torch.Tensor
    block: slice
    cand: torch.Tensor  # positions this step may commit
    watched: torch.Tensor  # positions whose predictions TCC and scoring watch
    editable: torch.Tensor | None = None  # committed positions token editing may replace (None: no editing)


def _gumbel_argmax(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """LLaDA's Gumbel-max in float64, restricted to the positions that can be committed."""
    z = logits.to(torch.float64)
    noise = torch.rand(z.shape, dtype=torch.float64, generator=generator)
    return (z.exp() / (-torch.log(noise)) ** temperature).argmax(-1)


def llada2_share(block_size: int, steps: int, step: int) -> int:
    """LLaDA2's minimum for step `step` of a block: the even split of the block over `steps` steps (block //
    steps each, the first block % steps one more), and at least one (LLaDA2.1 commits at least one a step)."""
    base, extra = divmod(block_size, max(1, steps))
    return max(1, base + (1 if step < extra else 0))


@functools.lru_cache(maxsize=64)
def _dream_timesteps(steps: int, eps: float) -> torch.Tensor:
    return torch.linspace(1, eps, steps + 1, dtype=torch.float32)


def dream_transfer_count(masked: int, step: int, steps: int, eps: float) -> int:
    """How many of `masked` positions Dream's diffusion_generate commits at step `step` of `steps`: in float32,
    int(masked * (1 - s / t)) with t, s = timesteps[step], timesteps[step + 1]; all of them at the last step."""
    if step >= steps - 1:
        return masked
    t = _dream_timesteps(steps, float(eps))
    share = 1 - t[step + 1] / t[step]
    return int(torch.tensor(masked, dtype=torch.float32) * share)


def commit_confidence(policy: str, logits: torch.Tensor, x0: torch.Tensor, generator: torch.Generator,
                      dream: bool = False) -> torch.Tensor:
    """How sure the member is of committing `x0` at each position that can be committed (`logits`: those
    positions' rows), higher first, in float64 whatever the logits' dtype. A float32 probability is exactly
    1.0 once the top logit leads the rest by about 17, which real models reach often: ranking in float32
    then leaves the order to ties. Fast-dLLM's samplers rank a float64 softmax, as this does; over the
    candidates alone (a block, not the canvas) it costs little. Unmasking policies added later rank through
    this too (with `most_confident`), so every policy and cache mode ranks in the same precision."""
    if policy == "random":  # float32 draws, as the reference samplers draw them
        return torch.rand(x0.shape, generator=generator).to(torch.float64)
    probs = torch.softmax(logits.to(torch.float64), dim=-1)
    if policy in ("margin", "topk_margin"):
        top2 = probs.topk(min(2, probs.shape[-1]), dim=-1).values
        return top2[:, 0] - (top2[:, 1] if top2.shape[1] > 1 else 0)
    if policy == "entropy":  # negative entropy: higher is surer
        if dream:
            return (probs * torch.log(probs + DREAM_ENTROPY_EPS)).sum(-1)
        return (probs * probs.clamp_min(1e-300).log()).sum(-1)
    return probs.gather(-1, x0[:, None])[:, 0]  # low_confidence, maskgit_plus, threshold, topk


def most_confident(confidence: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the `count` highest confidences. Exact ties (rare in float64: logits leading by more than
    about 37) go leftmost first, a fixed order where the reference samplers leave it to torch.topk."""
    return torch.sort(confidence, descending=True, stable=True).indices[:count]
