"""The block KV cache the native models share, and logits at chosen positions only.

A full forward of a canvas can keep every layer's keys and values (`store_cache=True`). A later forward
passes `canvas_cache` and only some positions' tokens (`position_ids` says where they sit): each layer
computes keys and values for those positions, writes them over the cached ones, and attends over the whole
canvas (and keeps the rewritten canvas when it also stores: block-causal members extend their cache so). Which positions are recomputed is the caller's choice: everything after the committed prefix
(Fast-dLLM's prefix cache) or only the current block and the watched positions (its dual cache). With
`logits_at`, the output head runs only at those indices of the input, never over canvas x vocabulary.

The rest of the forward plumbing those models share sits here too: the input embedding, the layer loop
over a (cached) canvas, and transformers' embedding accessors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

from .layers import sdpa_mask


@dataclass
class CanvasCache:
    """Keys and values of every layer for whole canvases: (batch, kv_heads, length, head_dim) each."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    @property
    def length(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    @staticmethod
    def stack(caches: list[CanvasCache], width: int | None = None) -> CanvasCache:
        """One cache for canvases stacked into a batch; shorter ones right-padded with zeros to `width` (default:
        the longest), keys the forward's attention mask hides."""
        width = max(c.length for c in caches) if width is None else width
        if len(caches) == 1 and caches[0].length == width:
            return caches[0]

        def joined(tensors):
            return torch.cat([torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[2])) for t in tensors])

        return CanvasCache([joined(ks) for ks in zip(*(c.keys for c in caches))],
                           [joined(vs) for vs in zip(*(c.values for c in caches))])

    def rows(self, lengths: list[int] | None = None) -> list[CanvasCache]:
        """One cache per canvas of the batch (views, no copies), each cut to its canvas's length."""
        n = self.keys[0].shape[0] if self.keys else 0
        lengths = lengths or [None] * n
        return [CanvasCache([k[i : i + 1, :, : lengths[i]] for k in self.keys],
                            [v[i : i + 1, :, : lengths[i]] for v in self.values]) for i in range(n)]


@dataclass
class CanvasLMOutput(ModelOutput):
    logits: torch.Tensor | None = None
    canvas_cache: CanvasCache | None = None


class LayerKV:
    """What each attention layer attends over: its own fresh keys/values, or those written into a cached
    canvas at `positions`; and, when storing, what it keeps for later forwards."""

    def __init__(self, cache: CanvasCache | None = None, positions: torch.Tensor | None = None, store: bool = False):
        if cache is not None and positions is None:
            raise ValueError("a canvas_cache forward needs position_ids: where its tokens sit in the canvas")
        self.cache, self.store = cache, store
        self.kept = CanvasCache([], []) if store else None
        self._index = None
        if cache is not None:
            self._index = positions.to(cache.keys[0].device)[:, None, :, None]  # (batch, 1, q, 1) for scatter

    def __call__(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cache is None:
            if self.store:
                self.kept.keys.append(k)
                self.kept.values.append(v)
            return k, v
        index = self._index.expand(-1, k.shape[1], -1, k.shape[3])
        full_k = self.cache.keys[layer].to(k.dtype).scatter(2, index, k)
        full_v = self.cache.values[layer].to(v.dtype).scatter(2, index, v)
        if self.store:  # a cached forward that keeps the result: the old canvas with these positions rewritten
            self.kept.keys.append(full_k)
            self.kept.values.append(full_v)
        return full_k, full_v


def positions_and_kv(inputs, position_ids, canvas_cache, store_cache, device):
    """(position_ids, LayerKV) for a native model's forward over `inputs` (batch, length, ...); position_ids
    default to 0..length-1."""
    b, t = inputs.shape[:2]
    if position_ids is None:
        if canvas_cache is not None:
            raise ValueError("a canvas_cache forward needs position_ids: where its tokens sit in the canvas")
        position_ids = torch.arange(t, device=device)[None].expand(b, t)
    return position_ids.to(device), LayerKV(canvas_cache, position_ids, store_cache)


def head_rows(x: torch.Tensor, logits_at: torch.Tensor | None) -> torch.Tensor:
    """The hidden states the output head reads: all of them, or those at `logits_at` (batch, n) indices."""
    if logits_at is None:
        return x
    index = logits_at.to(x.device)[:, :, None].expand(-1, -1, x.shape[-1])
    return x.gather(1, index)


def embedded(embed, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> torch.Tensor:
    """A forward's input vectors: `embed(input_ids)`, or `inputs_embeds` as given (exactly one of the two)."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids and inputs_embeds")
    return embed(input_ids) if inputs_embeds is None else inputs_embeds


def run_layers(layers, x: torch.Tensor, rotary, attention_mask, position_ids, canvas_cache: CanvasCache | None,
               store_cache: bool, restrict=None) -> tuple[torch.Tensor, CanvasCache | None]:
    """The native models' layer loop over a canvas: (hidden states, the kept CanvasCache or None). Each layer
    is called as layer(x, cos, sin, mask, kv) with `rotary(position_ids)` -> (cos, sin); the padding mask spans
    the whole cached canvas when there is one. `restrict(mask, position_ids, keys)`, when given, narrows the
    on-device mask (LLaDA2's block-causal attention)."""
    b, t = x.shape[:2]
    position_ids, kv = positions_and_kv(x, position_ids, canvas_cache, store_cache, x.device)
    keys = t if canvas_cache is None else canvas_cache.keys[0].shape[2]
    mask = sdpa_mask(attention_mask, b, keys)
    if mask is not None:
        mask = mask.to(x.device)
    if restrict is not None:
        mask = restrict(mask, position_ids, keys)
    cos, sin = rotary(position_ids)
    for i, layer in enumerate(layers):
        x = layer(x, cos, sin, mask, lambda k, v, i=i: kv(i, k, v))
    return x, kv.kept


class EmbeddingAccessors:
    """transformers' get/set_input/output_embeddings for a model whose embeddings sit at the dotted attribute
    paths `input_embeddings_at` and `output_embeddings_at` (its hub parameter names). Listed before
    PreTrainedModel among the bases, so that these accessors are the ones used."""

    input_embeddings_at: str = "model.embed_tokens"
    output_embeddings_at: str = "lm_head"

    def _module_at(self, path: str):
        """(the module holding the attribute at `path`, the attribute's name)."""
        parents, _, name = path.rpartition(".")
        owner = self
        for part in parents.split(".") if parents else ():
            owner = getattr(owner, part)
        return owner, name

    def get_input_embeddings(self):
        owner, name = self._module_at(self.input_embeddings_at)
        return getattr(owner, name)

    def set_input_embeddings(self, value):
        owner, name = self._module_at(self.input_embeddings_at)
        setattr(owner, name, value)

    def get_output_embeddings(self):
        owner, name = self._module_at(self.output_embeddings_at)
        return getattr(owner, name)

    def set_output_embeddings(self, value):
        owner, name = self._module_at(self.output_embeddings_at)
        setattr(owner, name, value)
