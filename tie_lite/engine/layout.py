"""Canvas construction: where the prompt, reasoning, answer marker and answer sit, for any tokenizer.

Answer layout (reasoning-as-infilling): prompt · R reasoning masks · marker · A answer masks, with
R + len(marker) + A == gen_length. The marker is the task's (the paper's "Answer:" unless a task gives
another, e.g. a code fence); the engine only places it. Free layout (plain chat): prompt · gen_length masks.

A trajectory's content can also be read as text (`TextState`): relaying between members with different
tokenizers goes through it. Relays happen on block boundaries, where the committed part of each region
is a prefix, so the text is exact for everything committed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tie_lite.checks import CHARS_PER_TOKEN, MAX_LENGTH
from tie_lite.engine.answer import PAPER_ANSWER_MARKER
from tie_lite.errors import UserError


def _span(tokenizer, before: str, after: str) -> tuple[list[int], list[int]]:
    """(tokens of the old text, tokens of the new text) as this tokenizer writes them."""
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False) if s else []  # noqa: E731
    if not after.startswith(before):
        return [], enc(after)
    return enc(before), enc(after[len(before) :])


FREE_ANSWER_POSITIONS = 8  # free layout: how many masked positions past the current block are watched


@dataclass(frozen=True)
class TextState:
    reasoning: str = ""
    reasoning_done: bool = False  # an end-of-text was committed in the reasoning region, or it is full
    answer: str = ""
    answer_done: bool = False


@dataclass(frozen=True)
class Layout:
    prompt_len: int
    gen_length: int
    reasoning_len: int  # == gen_length in the free layout
    marker_ids: tuple[int, ...]  # empty in the free layout
    block_size: int
    mask_id: int
    eos_ids: tuple[int, ...]
    marker_text: str = ""  # the marker as text (empty in the free layout)
    # Blocks numbered from position 0 of the sequence (block diffusion, as LLaDA2 trains and decodes): the first
    # block of the response is short by this many positions, which the prompt's tail fills (prompt_len % block)
    block_offset: int = 0

    @property
    def total_len(self) -> int:
        return self.prompt_len + self.gen_length

    @property
    def has_answer(self) -> bool:
        return bool(self.marker_ids)

    @property
    def reasoning(self) -> slice:
        return slice(self.prompt_len, self.prompt_len + self.reasoning_len)

    @property
    def marker(self) -> slice:
        start = self.reasoning.stop
        return slice(start, start + len(self.marker_ids))

    @property
    def answer(self) -> slice:
        return slice(self.marker.stop, self.total_len)

    @property
    def answer_len(self) -> int:
        return self.total_len - self.marker.stop

    @property
    def num_blocks(self) -> int:
        return (self.gen_length + self.block_offset) // self.block_size

    @property
    def block_origin(self) -> tuple[int, int]:
        """(where a block starts at or before the response, block size): what a block-causal member's attention
        follows (blocks before it, over the prompt, are counted backwards from it)."""
        return self.prompt_len - self.block_offset, self.block_size

    def block(self, index: int) -> slice:
        """The response positions of block `index` (the first one is short by `block_offset`)."""
        start = self.prompt_len - self.block_offset + index * self.block_size
        return slice(max(start, self.prompt_len), start + self.block_size)

    def block_at(self, offset: int) -> int:
        """The block holding response position `offset` (0: the first position after the prompt)."""
        return (offset + self.block_offset) // self.block_size

    def block_start(self, block: slice) -> int:
        """Where `block` (a `block()` slice) starts in the sequence: the first one within the prompt's tail."""
        return block.start - self.block_offset if block.start == self.prompt_len else block.start

    def watched_positions(self, masked: torch.Tensor, block: slice) -> torch.Tensor:
        """Positions whose predictions are watched: masked answer positions, or (free layout) the next
        FREE_ANSWER_POSITIONS masked positions past the current block (the block's own if none are left)."""
        if self.has_answer:
            idx = torch.arange(self.answer.start, self.answer.stop)
            return idx[masked[self.answer]]
        after = masked.clone()
        after[: block.stop] = False
        idx = after.nonzero().flatten()[:FREE_ANSWER_POSITIONS]
        if idx.numel() == 0:
            inside = masked.clone()
            inside[: block.start] = False
            idx = inside.nonzero().flatten()[:FREE_ANSWER_POSITIONS]
        return idx

    # --- text view -------------------------------------------------------------------------------

    def _region_text(self, tokenizer, ids: torch.Tensor, region: slice) -> tuple[str, bool]:
        """Decode the committed prefix of a region; done when it is full or holds an end-of-text."""
        tokens = ids[region].tolist()
        prefix = []
        for t in tokens:
            if t == self.mask_id:
                break
            prefix.append(t)
        done = len(prefix) == len(tokens) or any(t in self.eos_ids for t in prefix)
        kept = [t for t in prefix if t not in self.eos_ids]
        return tokenizer.decode(kept, skip_special_tokens=True), done

    def read_state(self, tokenizer, ids: torch.Tensor) -> TextState:
        reasoning, r_done = self._region_text(tokenizer, ids, self.reasoning)
        if not self.has_answer:
            return TextState(reasoning, r_done)
        answer, a_done = self._region_text(tokenizer, ids, self.answer)
        return TextState(reasoning, r_done, answer, a_done)

    def _fill(self, tokens: list[int], length: int, done: bool) -> list[int]:
        tokens = tokens[:length]
        filler = self.eos_ids[0] if done else self.mask_id
        return tokens + [filler] * (length - len(tokens))

    def write_state(self, tokenizer, prompt_ids: list[int], state: TextState) -> torch.Tensor:
        """This layout's canvas holding `state`, re-encoded with this member's tokenizer."""
        enc = lambda s: tokenizer.encode(s, add_special_tokens=False) if s else []  # noqa: E731
        ids = list(prompt_ids) + self._fill(enc(state.reasoning), self.reasoning_len, state.reasoning_done)
        if self.has_answer:
            ids += list(self.marker_ids) + self._fill(enc(state.answer), self.answer_len, state.answer_done)
        return torch.tensor(ids, dtype=torch.long)

    def write_span(self, tokenizer, prompt_ids, before: TextState, after: TextState):
        """Canvas holding `before`, then masks where `after` adds text (as this tokenizer splits it), then
        masks for the rest; returns (canvas, positions of the added tokens, the added tokens)."""
        ids = list(prompt_ids)
        positions: list[int] = []
        tokens: list[int] = []
        regions = [(self.reasoning_len, before.reasoning, before.reasoning_done, after.reasoning, after.reasoning_done)]
        if self.has_answer:
            regions.append((self.answer_len, before.answer, before.answer_done, after.answer, after.answer_done))
        for index, (length, old, old_done, new, new_done) in enumerate(regions):
            if index == 1:
                ids += list(self.marker_ids)
            kept, added = _span(tokenizer, old, new)
            if old_done:
                ids += self._fill(kept, length, True)
                continue
            region = (kept + added)[:length]
            if new_done:  # the round also ended this region: its end-of-text padding was committed too
                region = self._fill(region, length, True)
            for offset in range(len(kept), len(region)):
                positions.append(len(ids) + offset)
                tokens.append(region[offset])
            ids += [t if k < len(kept) else self.mask_id for k, t in enumerate(region)]
            ids += [self.mask_id] * (length - len(region))
        return torch.tensor(ids), torch.tensor(positions, dtype=torch.long), torch.tensor(tokens, dtype=torch.long)

    def text(self, tokenizer, ids: torch.Tensor) -> str:
        """The response as a user reads it: reasoning, then the marker and the answer."""
        state = self.read_state(tokenizer, ids)
        if not self.has_answer:
            return state.reasoning.strip()
        return f"{state.reasoning.strip()}\n{self.marker_text} {state.answer.strip()}".strip()

    def parse_answer(self, text: str) -> str | None:
        """The answer in a response this layout wrote (`text()`): what follows the last marker, stripped;
        None in the free layout or when the marker is missing."""
        if not self.has_answer or self.marker_text not in text:
            return None
        return text.rsplit(self.marker_text, 1)[1].strip()

    def pieces(self, tokenizer, ids: torch.Tensor, owners: torch.Tensor | None = None) -> list[tuple[str, int | None]]:
        """The generated canvas as (text, owner) pieces for views: a committed token's text and the member that
        committed it (-1 unknown), None for a still-masked position, a line break (owner -1) before the marker;
        end-of-text is left out."""
        out: list[tuple[str, int | None]] = []
        for pos, t in enumerate(ids.tolist()[self.prompt_len :], start=self.prompt_len):
            if self.has_answer and pos == self.marker.start:
                out.append(("\n", -1))
            if t == self.mask_id:
                out.append(("", None))
            elif t not in self.eos_ids:
                out.append((tokenizer.decode([t], skip_special_tokens=True), -1 if owners is None else int(owners[pos])))
        return out

    def render(self, tokenizer, ids: torch.Tensor, mask_symbol: str = "░") -> str:
        """The canvas with still-masked positions shown as `mask_symbol` (for streaming views)."""
        return "".join(mask_symbol if owner is None else text for text, owner in self.pieces(tokenizer, ids))

    # --- provenance: which member committed each token, carried across a text relay ----------------------

    def char_owners(self, tokenizer, ids: torch.Tensor, owners: torch.Tensor) -> tuple[list[int], list[int]]:
        """Per character of the reasoning and answer texts (`read_state`), the member that committed it."""
        regions = [self.reasoning] + ([self.answer] if self.has_answer else [])
        out = []
        for region in regions:
            chars: list[int] = []
            for pos in range(region.start, region.stop):
                t = int(ids[pos])
                if t == self.mask_id:
                    break
                if t not in self.eos_ids:
                    chars += [int(owners[pos])] * len(tokenizer.decode([t], skip_special_tokens=True))
            out.append(chars)
        return out[0], (out[1] if len(out) > 1 else [])

    def owners_of(self, tokenizer, ids: torch.Tensor, char_owners: tuple[list[int], list[int]]) -> torch.Tensor:
        """Per position of canvas `ids` (written by `write_state`), the member that committed its token, from the
        owners of the characters it spells (-1 where unknown: masks, padding, the prompt, the marker)."""
        owners = torch.full((ids.numel(),), -1, dtype=torch.long)
        regions = [self.reasoning] + ([self.answer] if self.has_answer else [])
        for region, chars in zip(regions, char_owners):
            at = 0
            for pos in range(region.start, region.stop):
                t = int(ids[pos])
                if t == self.mask_id or t in self.eos_ids:
                    break
                if at < len(chars):
                    owners[pos] = chars[at]
                at += len(tokenizer.decode([t], skip_special_tokens=True))
        return owners

    # --- log-probabilities of committed tokens, carried across a text relay the same way -----------------

    def char_logprobs(self, tokenizer, ids: torch.Tensor, logp: torch.Tensor) -> tuple[list[float], list[float]]:
        """Per character of the reasoning and answer texts, the log-probability of the token that committed it,
        on the token's first character (0 on the others), so that any re-tokenization keeps the total."""
        regions = [self.reasoning] + ([self.answer] if self.has_answer else [])
        out = []
        for region in regions:
            chars: list[float] = []
            for pos in range(region.start, region.stop):
                t = int(ids[pos])
                if t == self.mask_id:
                    break
                if t not in self.eos_ids:
                    width = len(tokenizer.decode([t], skip_special_tokens=True))
                    chars += [float(logp[pos])] + [0.0] * (width - 1) if width else []
            out.append(chars)
        return out[0], (out[1] if len(out) > 1 else [])

    def logprobs_of(self, tokenizer, ids: torch.Tensor, char_logprobs: tuple[list[float], list[float]]) -> torch.Tensor:
        """Per position of canvas `ids` (written by `write_state`), the summed log-probability of the characters
        its token spells (`char_logprobs`); 0 elsewhere."""
        logp = torch.zeros(ids.numel())
        regions = [self.reasoning] + ([self.answer] if self.has_answer else [])
        for region, chars in zip(regions, char_logprobs):
            at = 0
            for pos in range(region.start, region.stop):
                t = int(ids[pos])
                if t == self.mask_id or t in self.eos_ids:
                    break
                width = len(tokenizer.decode([t], skip_special_tokens=True))
                logp[pos] = sum(chars[at : at + width])
                at += width
        return logp


def check_prompt_chars(messages: list[dict], max_length: int | None, name: str = "the model") -> None:
    """Refuse, untokenized, a conversation too long for a context of `max_length` tokens at any tokenization
    (no declared context: the longest any model has, MAX_LENGTH)."""
    chars = sum(len(m.get("content") or "") for m in messages)
    context = max_length or MAX_LENGTH
    if chars > context * CHARS_PER_TOKEN:
        raise UserError(f"the prompt has {chars:,} characters, more than {name}'s context of {context:,} tokens can "
                        f"hold ({context * CHARS_PER_TOKEN:,} characters at most); shorten it")


def response_length(prompt_len: int, gen_length: int, block_size: int, blocks_from_start: bool) -> int:
    """The canvas after the prompt: gen_length, or with blocks numbered from the sequence's start, on to the end of
    the block where it ends (as a block-diffusion model's authors lay it out)."""
    return gen_length + ((-(prompt_len + gen_length)) % block_size if blocks_from_start else 0)


def check_context(prompt_len: int, gen_length: int, max_length: int | None, total_len: int | None = None) -> None:
    if max_length is not None and (total_len or prompt_len + gen_length) > max_length:
        raise UserError(
            f"prompt ({prompt_len} tokens) plus --gen-length {gen_length} exceeds the model's context of "
            f"{max_length} tokens; shorten the prompt or lower --gen-length"
        )


def make_layout(
    tokenizer,
    prompt_ids: list[int],
    *,
    gen_length: int,
    block_size: int,
    mask_id: int,
    eos_ids: tuple[int, ...],
    answer_length: int | None,
    marker: str = PAPER_ANSWER_MARKER,
    max_length: int | None = None,
    blocks_from_start: bool = False,
) -> tuple[Layout, torch.Tensor]:
    """Build the layout and the all-masked starting canvas. `answer_length=None` selects the free layout;
    otherwise `marker` (text) separates the reasoning from the answer. `blocks_from_start`: blocks are numbered
    from position 0 of the sequence, as a block-diffusion model's authors decode it (LLaDA2's generate() and
    training mask): the first response block is what the prompt leaves of its block, and the canvas runs to the
    end of a whole block, as theirs does (up to block_size - 1 positions past gen_length, given to the reasoning)."""
    if gen_length <= 0 or block_size <= 0:
        raise UserError("--gen-length and --block-size must be positive")
    if gen_length % block_size:
        raise UserError(
            f"--gen-length {gen_length} is not a multiple of --block-size {block_size}; "
            f"use e.g. --gen-length {(gen_length // block_size + 1) * block_size}"
        )
    offset = len(prompt_ids) % block_size if blocks_from_start else 0
    gen_length = response_length(len(prompt_ids), gen_length, block_size, blocks_from_start)
    if answer_length is None:
        marker, marker_ids = "", ()
        reasoning_len = gen_length
    else:
        marker_ids = tuple(tokenizer.encode(marker, add_special_tokens=False))
        reasoning_len = gen_length - len(marker_ids) - answer_length
        if answer_length <= 0 or reasoning_len <= 0:
            raise UserError(
                f"--gen-length {gen_length} leaves no room for reasoning before a {answer_length}-token answer; "
                f"raise --gen-length or lower --answer-length"
            )
    layout = Layout(len(prompt_ids), gen_length, reasoning_len, marker_ids, block_size, mask_id, tuple(eos_ids), marker,
                    offset)
    check_context(layout.prompt_len, gen_length, max_length, layout.total_len)
    return layout, layout.write_state(tokenizer, prompt_ids, TextState())

