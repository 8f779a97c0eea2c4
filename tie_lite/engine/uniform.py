"""A trajectory over a uniform-noise canvas (DiffusionGemma), with the interface the TIE loop and scoring use.

DiffusionGemma does not denoise from masks. Its canvas of `canvas_length` positions starts as random tokens;
each step the model predicts every position (with the previous step's logits as self-conditioning), a token
is sampled everywhere, the entropy-bound sampler *accepts* the lowest-entropy positions and every other
position is re-noised with fresh random tokens; a canvas ends when its argmax is stable and confident (or
after `max_denoising_steps`), its argmax is appended to the sequence, and the next canvas follows
block-autoregressively. This module runs exactly that loop, one step per forward, with transformers' own
sampler, temperature schedule and stopping rule (transformers.models.diffusion_gemma), so that one member
decoded here gives the tokens of the model's own `generate()` with the same seed.

How TIE's notions map (README, "TIE over a uniform-noise canvas"):

- state: the finished canvases (the sequence after the prompt) plus, within a canvas, its accepted set;
- watched positions: the positions of the current canvas not accepted at the previous step; `tcc` counts
  top-1 changes there (end-of-text predictions excluded), as the masked case does at still-masked ones;
- a "block" is a canvas: rounds end on canvas boundaries, where relays land (id for id between members
  with one tokenizer, through text otherwise) and a relay costs the receiver one encoder prefill;
- `verify`: what a trajectory added during the round is re-noised (a fresh noise canvas after the round's
  starting text) and every member says how likely those tokens are;
- the answer: DiffusionGemma writes left to right, so the answer layout's marker is read from its text.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
    EntropyBoundSampler,
    EntropyBoundSamplerConfig,
    LinearTemperatureScheduleLogitsProcessor,
    StableAndConfidentStoppingCriteria,
)

from tie_lite.engine.judge import _confidence_stat
from tie_lite.engine.layout import FREE_ANSWER_POSITIONS, PAPER_ANSWER_MARKER, TextState, _span, check_context
from tie_lite.engine.process import run

JUDGE_NOISE_SEED = 0  # the noise canvas a judge scores on: fixed, so scores repeat and no trajectory's RNG moves


@dataclass(frozen=True)
class DenoisingSettings:
    """A uniform-noise member's sampler, from its checkpoint (generation_config.json over transformers'
    defaults); runtime/loading.py builds it. None of tie-lite's masked-sampler flags apply to it."""

    canvas_length: int
    vocab_size: int
    max_denoising_steps: int
    entropy_bound: float
    t_min: float | None
    t_max: float | None
    stability_threshold: int | None
    confidence_threshold: float | None
    eos_ids: tuple[int, ...]
    pad_id: int | None


@dataclass
class Denoise:
    """One decoder forward a uniform-noise member computes: logits over `canvas` after `sequence`, whose first
    `context.length` tokens the member has already encoded (its opaque `context`; None: encode them all).
    The answer is one Row: float32 logits (1, canvas_length, vocab) on the CPU, and the extended context."""

    member: object
    sequence: torch.Tensor  # (1, n): prompt and finished canvases
    context: object
    canvas: torch.Tensor  # (1, canvas_length)
    self_conditioning: torch.Tensor | None = None  # the previous step's processed logits
    max_length: int = 0  # the longest sequence this decode reaches (a static cache is sized by it)
    caches = None  # drivers that batch Forward requests (runtime/drive.py) see a request of its own kind

    @property
    def ids(self) -> torch.Tensor:
        return self.canvas

    @property
    def kind(self) -> tuple:
        return ("denoise", id(self))


@contextlib.contextmanager
def _seeded_global_rng(generator: torch.Generator):
    """transformers' sampler draws from torch's global generator; run it on the trajectory's own generator
    (same stream as torch.manual_seed(seed) before generate()) and leave the global one untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(generator.get_state())
        yield
        generator.set_state(torch.get_rng_state())


@dataclass(frozen=True)
class UniformLayout:
    """Where a uniform-noise trajectory writes: after the prompt, `gen_length` tokens in canvases."""

    prompt_len: int
    gen_length: int
    canvas_length: int
    eos_ids: tuple[int, ...]
    marker_text: str = ""  # the answer marker, read from the text (empty: free layout)

    @property
    def has_answer(self) -> bool:
        return bool(self.marker_text)

    @property
    def block_size(self) -> int:
        return self.canvas_length

    @property
    def num_blocks(self) -> int:
        return math.ceil(self.gen_length / self.canvas_length)

    def parse_answer(self, text: str) -> str | None:
        if not self.has_answer or self.marker_text not in text:
            return None
        return text.rsplit(self.marker_text, 1)[1].strip()

    def char_owners(self, tokenizer, ids: torch.Tensor, owners: torch.Tensor) -> tuple[list[int], list[int]]:
        """Per character of the reasoning and answer texts, the member that committed it (Layout.char_owners),
        for a masked member that adopts this trajectory through text."""
        chars: list[int] = []
        text = ""
        for t, owner in zip(ids.tolist(), owners.tolist()):
            if t in self.eos_ids:
                break
            piece = tokenizer.decode([t], skip_special_tokens=True)
            text += piece
            chars += [int(owner)] * len(piece)
        if not self.has_answer or self.marker_text not in text:
            return chars, []
        at = text.index(self.marker_text)
        answer = text[at + len(self.marker_text):]
        skip = len(answer) - len(answer.lstrip())
        return chars[:at], chars[at + len(self.marker_text) + skip:]


# The masked samplers' settings (DecodeSettings names) a uniform-noise member does not read: its own sampler runs
NOT_READ = ("block_size", "steps", "temperature", "unmask", "threshold", "topk", "schedule", "eps", "cache",
            "edit_threshold", "edit_steps", "sub_block")


@dataclass
class UniformTrajectory:
    """One uniform-noise member's decode: the sequence it has finished, the canvas it is denoising (with its
    accepted set), and what scoring needs from its recent steps."""

    member: object
    layout: UniformLayout
    prompt_ids: list[int]
    sampling: DenoisingSettings
    generator: torch.Generator
    generated: torch.Tensor  # finished canvases (and relayed text), after the prompt
    committed_by: torch.Tensor  # per generated position, the member that committed it (-1: unknown)
    finished: bool = False  # an end-of-text was written
    context: object = None  # the member's encoding of prompt + generated (an opaque handle; None: re-encode)
    canvas: torch.Tensor | None = None  # the canvas being denoised (None between canvases)
    accepted: torch.Tensor | None = None  # its positions accepted at the latest step
    forwards: int = 0
    round_start: torch.Tensor | None = None  # `generated` when the round began
    round_start_finished: bool = False
    prev_top1: torch.Tensor | None = None
    round_tcc: float = 0.0
    round_steps: int = 0
    total_tcc: float = 0.0
    total_steps: int = 0
    total_top1: float = 0.0
    watch: bool = True
    index: int = 0

    @classmethod
    def start(cls, member, messages: list[dict], settings) -> UniformTrajectory:
        sampling = member.denoising
        prompt = member.prompt_ids(messages)
        canvases = math.ceil(settings.gen_length / sampling.canvas_length)
        check_context(len(prompt), settings.gen_length, member.max_length,
                      len(prompt) + canvases * sampling.canvas_length)
        marker = "" if settings.answer_length is None else (settings.answer_marker or PAPER_ANSWER_MARKER)
        layout = UniformLayout(len(prompt), settings.gen_length, sampling.canvas_length, sampling.eos_ids, marker)
        empty = torch.zeros(0, dtype=torch.long)
        traj = cls(member, layout, prompt, sampling, torch.Generator().manual_seed(settings.seed), empty,
                   empty.clone())
        traj.begin_round()
        return traj

    # --- state ------------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.finished or self.generated.numel() >= self.layout.gen_length

    @property
    def ids(self) -> torch.Tensor:
        """The generated tokens (what a masked member's adopt reads with `committed_by`)."""
        return self.generated

    def settings_run(self, decode) -> dict:
        """What this member's decode ran with (--json, the API's trace): its checkpoint's sampler, and which of
        the masked samplers' settings it does not read."""
        s = self.sampling
        return {"sampler": "entropy-bound (the checkpoint's generation_config.json)", "canvas_length": s.canvas_length,
                "canvases": math.ceil(self.layout.gen_length / s.canvas_length),
                "max_denoising_steps": s.max_denoising_steps, "entropy_bound": s.entropy_bound, "confidence_threshold": s.confidence_threshold,
                "stability_threshold": s.stability_threshold, "seed": decode.seed,
                "layout": "answer" if self.layout.has_answer else "free", "ignored": list(NOT_READ)}

    def response_ids(self) -> list[int]:
        """What --json's token_ids reports: every generated id, the finished canvases after the prompt (the
        padding after the end-of-text included), as generate()'s sequences after the prompt. `ids` already
        starts after the prompt: no prompt length is cut off it."""
        return self.generated.tolist()

    @property
    def tokenizer_key(self) -> str:
        return self.member.tokenizer_key

    def same_canvas(self, other) -> bool:
        return other.tokenizer_key == self.tokenizer_key and isinstance(other, UniformTrajectory)

    def sequence(self) -> torch.Tensor:
        return torch.cat([torch.tensor(self.prompt_ids, dtype=torch.long), self.generated])

    def _written(self, generated: torch.Tensor) -> list[int]:
        """The generated tokens up to the first end-of-text."""
        out = []
        for t in generated.tolist():
            if t in self.layout.eos_ids:
                break
            out.append(t)
        return out

    def _state_of(self, generated: torch.Tensor, finished: bool) -> TextState:
        text = self.member.tokenizer.decode(self._written(generated), skip_special_tokens=True)
        done = finished or generated.numel() >= self.layout.gen_length
        lay = self.layout
        if not lay.has_answer:
            return TextState(text, done)
        if lay.marker_text in text:
            reasoning, answer = text.split(lay.marker_text, 1)
            return TextState(reasoning.rstrip(), True, answer.lstrip(), done)
        return TextState(text, done, "", done)

    def state(self) -> TextState:
        return self._state_of(self.generated, self.finished)

    def round_start_state(self) -> TextState:
        return self._state_of(self.round_start, self.round_start_finished)

    def text(self) -> str:
        state = self.state()
        if self.layout.has_answer and (state.answer or self.layout.marker_text in self._decoded()):
            return f"{state.reasoning.strip()}\n{self.layout.marker_text} {state.answer.strip()}".strip()
        return state.reasoning.strip()

    def _decoded(self) -> str:
        return self.member.tokenizer.decode(self._written(self.generated), skip_special_tokens=True)

    def pieces(self) -> list[tuple[str, int | None]]:
        """(text, committing member) pieces: the finished tokens, then the canvas being denoised, its accepted
        positions with their tokens and this member, and its not yet accepted (random or re-noised) positions
        as the token each holds now with None for the member (never empty text, which means a mask)."""
        tok = self.member.tokenizer
        out: list[tuple[str, int | None]] = []
        for t, owner in zip(self._written(self.generated), self.committed_by.tolist()):
            out.append((tok.decode([t], skip_special_tokens=True), int(owner)))
        if self.canvas is not None and not self.done:
            for t, ok in zip(self.canvas.tolist(), self.accepted.tolist()):
                if ok:
                    out.append((tok.decode([t], skip_special_tokens=True), self.index))
                else:  # a special token decodes to nothing: show its name
                    out.append((tok.decode([t], skip_special_tokens=True) or str(tok.convert_ids_to_tokens(t)), None))
        return out

    def render(self, mask_symbol: str = "░") -> str:
        return "".join(mask_symbol if owner is None else text for text, owner in self.pieces())

    # --- rounds and relays ---------------------------------------------------------------------------

    def begin_round(self) -> None:
        self.round_start = self.generated.clone()
        self.round_start_finished = self.finished
        self.round_tcc = 0.0
        self.round_steps = 0

    def _text_tokens(self, state: TextState) -> tuple[list[int], bool]:
        """`state` (any member's text) as this member's tokens, and whether it ends the response."""
        lay = self.layout
        if lay.has_answer and state.reasoning_done:
            text = f"{state.reasoning.rstrip()}\n{lay.marker_text}" + (f" {state.answer.strip()}" if state.answer.strip() else "")
            finished = state.answer_done
        else:
            text, finished = state.reasoning, state.reasoning_done and not lay.has_answer
        tokens = self.member.tokenizer.encode(text, add_special_tokens=False) if text else []
        return tokens, finished

    def adopt(self, other) -> None:
        """Relay at a canvas boundary: take `other`'s response so far, id for id from a uniform-noise member with
        this tokenizer, else through its text; this member re-encodes it at its next step."""
        if other is self:
            return
        if self.same_canvas(other):
            self.generated, self.committed_by = other.generated.clone(), other.committed_by.clone()
            self.finished = other.finished
        else:
            tokens, finished = self._text_tokens(other.state())
            tokens = tokens[: self.layout.gen_length]
            owners_of_chars = None
            owners = getattr(other, "committed_by", None)
            if owners is not None:
                owners_of_chars = other.layout.char_owners(other.member.tokenizer, other.ids, owners)
            self.committed_by = self._owners(tokens, owners_of_chars)
            if finished and len(tokens) < self.layout.gen_length:
                tokens.append(self.layout.eos_ids[0])
                self.committed_by = torch.cat([self.committed_by, torch.tensor([-1])])
            self.generated = torch.tensor(tokens, dtype=torch.long)
            self.finished = finished
        self.context = self.canvas = self.accepted = self.prev_top1 = None

    def _owners(self, tokens: list[int], char_owners) -> torch.Tensor:
        """Per token of a text relay, the member that committed its first character (-1 unknown)."""
        owners = torch.full((len(tokens),), -1, dtype=torch.long)
        if char_owners is None:
            return owners
        reasoning, answer = char_owners
        glue = len(f"\n{self.layout.marker_text} ") if answer else 0
        chars = reasoning + [-1] * glue + answer
        at = 0
        for k, t in enumerate(tokens):
            if at < len(chars):
                owners[k] = chars[at]
            at += len(self.member.tokenizer.decode([t], skip_special_tokens=True))
        return owners

    # --- decoding -----------------------------------------------------------------------------------

    def _max_length(self) -> int:
        return len(self.prompt_ids) + self.layout.num_blocks * self.sampling.canvas_length + self.sampling.canvas_length

    def advance(self, settings, blocks: int, on_step=None):
        """Process: denoise `blocks` more canvases (or until done), one forward a step (see process.py)."""
        for _ in range(blocks):
            if self.done:
                return
            yield from self._denoise_canvas(on_step)

    def _denoise_canvas(self, on_step):
        """One canvas, step for step as DiffusionGemmaGenerationMixin.generate() runs it."""
        s = self.sampling
        sampler = EntropyBoundSampler(EntropyBoundSamplerConfig(entropy_bound=s.entropy_bound), s.canvas_length,
                                      s.vocab_size, s.max_denoising_steps)
        temperature = None
        if s.t_min is not None and s.t_max is not None:
            temperature = LinearTemperatureScheduleLogitsProcessor(s.t_min, s.t_max, s.max_denoising_steps)
        stopper = None
        if s.stability_threshold is not None and s.confidence_threshold is not None:
            stopper = StableAndConfidentStoppingCriteria(s.stability_threshold, s.confidence_threshold)
        with _seeded_global_rng(self.generator):
            canvas = sampler.initialize_canvas(batch_size=1, device=torch.device("cpu"))
        self.canvas, self.accepted, self.prev_top1 = canvas[0], torch.zeros(s.canvas_length, dtype=torch.bool), None
        argmax, self_conditioning = canvas, None
        # generate() counts steps down, N..1: the temperature schedule reads the steps remaining
        for remaining in reversed(range(1, s.max_denoising_steps + 1)):
            request = Denoise(self.member, self.sequence()[None], self.context, canvas, self_conditioning,
                              self._max_length())
            row = (yield request)[0]
            self.context = row.cache
            self.forwards += 1
            step = torch.tensor(remaining, dtype=torch.int32)  # as generate() passes it (float32 arithmetic)
            processed = temperature(None, row.logits, cur_step=step) if temperature is not None else row.logits
            with _seeded_global_rng(self.generator):
                probs = torch.softmax(processed, dim=-1, dtype=torch.float32)
                sampled = torch.multinomial(probs.view(-1, probs.shape[-1]), num_samples=1).view(1, -1)
                new_argmax = torch.argmax(processed, dim=-1)
                accepted_canvas = sampler.accept_canvas(canvas, sampled, processed, step)
                canvas = sampler.renoise_canvas(accepted_canvas, step)
            stop = stopper is not None and bool(stopper(new_argmax, processed)[0])
            if self.watch:
                self._record(probs[0], new_argmax[0], ~self.accepted)
            argmax, self_conditioning = new_argmax, processed
            self.canvas, self.accepted = canvas[0], sampler.accepted_token_mask[0].clone()
            if on_step is not None:
                on_step(self)
            if stop:
                break
        self._finish_canvas(argmax[0].clone())

    def _finish_canvas(self, tokens: torch.Tensor) -> None:
        """Append a finished canvas's argmax; an end-of-text ends the response and what follows it becomes
        padding (generate()'s EOS stopping criterion and padding)."""
        eos = torch.isin(tokens, torch.tensor(self.layout.eos_ids))
        if bool(eos.any()):
            first = int(eos.nonzero()[0])
            if self.sampling.pad_id is not None:
                tokens[first + 1:] = self.sampling.pad_id
            self.finished = True
        self.generated = torch.cat([self.generated, tokens])
        self.committed_by = torch.cat([self.committed_by, torch.full_like(tokens, self.index)])
        self.canvas = self.accepted = None

    def _record(self, probs: torch.Tensor, top: torch.Tensor, watched: torch.Tensor) -> None:
        """Token change count at the canvas positions not yet accepted (end-of-text predictions excluded),
        normalized per step, and their mean top-1 probability (final selection's tie-break)."""
        positions = watched.nonzero().flatten()
        top_w = top[positions]
        keep = ~torch.isin(top_w, torch.tensor(self.layout.eos_ids))
        positions, top_w = positions[keep], top_w[keep]
        tcc = 0.0
        if positions.numel():
            if self.prev_top1 is not None:
                prev = self.prev_top1[positions]
                tcc = float(((prev >= 0) & (prev != top_w)).sum()) / positions.numel()
            self.total_top1 += float(probs[positions, top_w].mean())
        full = torch.full((top.numel(),), -1, dtype=torch.long)
        full[positions] = top_w
        self.prev_top1 = full
        self.round_tcc += tcc
        self.round_steps += 1
        self.total_tcc += tcc
        self.total_steps += 1

    def run_blocks(self, settings, blocks: int, on_step=None) -> None:
        run(self.advance(settings, blocks, on_step))

    # --- judging -------------------------------------------------------------------------------------

    def _round_tokens(self, t) -> tuple[list[int], list[int]]:
        """`t`'s response at the round's start and now, as this member's tokens (the second extends the first)."""
        if self.same_canvas(t):
            return t.round_start.tolist(), t.generated.tolist()
        before, before_done = self._text_tokens(t.round_start_state())
        after_tokens, after_done = self._text_tokens(t.state())
        tok = self.member.tokenizer
        old, added = _span(tok, tok.decode(before), tok.decode(after_tokens))
        if after_done and not before_done:
            added = added + [self.layout.eos_ids[0]]
        return old, old + added

    def _noise_canvas(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(JUDGE_NOISE_SEED)
        return torch.randint(0, self.sampling.vocab_size, (1, self.sampling.canvas_length), generator=gen)

    def _logits_after(self, prefix: list[int]):
        """Process: this member's raw logits over a fresh noise canvas after prompt + `prefix`."""
        sequence = torch.tensor(self.prompt_ids + prefix, dtype=torch.long)[None]
        row = (yield Denoise(self.member, sequence, None, self._noise_canvas(), None,
                             sequence.shape[1] + self.sampling.canvas_length))[0]
        self.forwards += 1
        return row.logits[0]

    def judge(self, trajs: list, kind: str):
        """Process: this member's cross-model scores of every trajectory. verify: what `t` added during the round,
        re-noised canvas by canvas after the round's starting text, scored by mean log-probability (end-of-text
        padding after the first end-of-text is not scored); top1/entropy/margin: the confidence at the first
        positions of a noise canvas after `t`'s text."""
        out = []
        length = self.sampling.canvas_length
        for t in trajs:
            before, after = self._round_tokens(t)
            if kind != "verify":
                logits = yield from self._logits_after(after)
                out.append(_confidence_stat(self, logits[: min(FREE_ANSWER_POSITIONS, length)], kind))
                continue
            added = after[len(before):]
            eos = [k for k, tok in enumerate(added) if tok in self.layout.eos_ids]
            if eos:
                added = added[: eos[0] + 1]
            logps = []
            for start in range(0, len(added), length):
                chunk = added[start : start + length]
                logits = yield from self._logits_after(before + added[:start])
                logp = torch.log_softmax(logits[: len(chunk)], dim=-1).gather(-1, torch.tensor(chunk)[:, None])
                logps.append(logp.flatten())
            out.append(float(torch.cat(logps).mean()) if logps else 0.0)
        return out

