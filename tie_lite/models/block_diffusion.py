"""Autoregressive models converted to block diffusion (SDAR, TraDo, Fast-dLLM v2): transformers' own decoder
layers, attention bidirectional within a block and causal across blocks.

The layers are transformers' own (Qwen2, Qwen3, Qwen3-MoE), with the hub's parameter names: nothing of them is
written here. What is: the forward over a canvas that tie-lite's sampler drives, the same for every native model
(models/cache.py): the block-causal mask (blocks numbered from position 0 of the sequence, as the authors train
and decode), keys and values kept and reused through the layers' own `cache.update` hook, and logits at chosen
positions only.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

from .cache import CanvasLMOutput, EmbeddingAccessors, embedded, head_rows, positions_and_kv
from .layers import block_causal_mask, sdpa_mask


class LayerCache:
    """The `cache` transformers' attention layers call (`update(keys, values, layer_idx)` -> what to attend over),
    backed by tie-lite's canvas cache (models/cache.py LayerKV)."""

    def __init__(self, kv):
        self.kv = kv

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args, **kwargs):
        return self.kv(layer_idx, keys, values)


class CanvasForward(EmbeddingAccessors):
    """The canvas forward of every model here (mixed in before transformers' causal LM class): forward(input_ids) returns `.logits` (float32),
    the prediction for position i at index i; attention is block-causal with blocks of `block_size` (per row,
    block 0 starting at `block_start`)."""

    block_causal = True  # tie-lite's sampler may reuse finished blocks' keys and values (models/cache.py)

    @property
    def trained_block(self) -> int:
        """The block a forward told none attends by: the config's (SDAR's `block_size`, Fast-dLLM v2's `bd_size`),
        else SDAR's 4."""
        return int(getattr(self.config, "block_size", None) or getattr(self.config, "bd_size", None) or 4)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        canvas_cache=None,
        store_cache: bool = False,
        logits_at: torch.Tensor | None = None,
        block_size: int | None = None,
        block_start: torch.Tensor | int | None = None,
        **kwargs,
    ) -> CanvasLMOutput:
        x = embedded(self.model.embed_tokens, input_ids, inputs_embeds)
        b, t = x.shape[:2]
        position_ids, kv = positions_and_kv(x, position_ids, canvas_cache, store_cache, x.device)
        keys = t if canvas_cache is None else canvas_cache.length
        padding = sdpa_mask(attention_mask, b, keys)
        start = torch.as_tensor(0 if block_start is None else block_start).expand(b)
        mask = block_causal_mask(position_ids, keys, int(block_size or self.trained_block), start).to(x.device)
        if padding is not None:  # a key must pass both
            mask = mask & padding.to(device=x.device, dtype=torch.bool)
        cos, sin = self.model.rotary_emb(x, position_ids)
        cache = LayerCache(kv)
        for layer in self.model.layers:
            x = layer(x, attention_mask=mask, position_ids=position_ids, cache=cache, position_embeddings=(cos, sin))
        logits = self.lm_head(self.model.norm(head_rows(x, logits_at))).float()
        return CanvasLMOutput(logits=logits, canvas_cache=kv.kept)


def register(config_class, model_class) -> None:
    """Make transformers' Auto classes build `model_class` for `config_class` (the hub's auto_map names the causal
    LM class: every Auto class a loader may ask)."""
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    for auto in (AutoModel, AutoModelForMaskedLM, AutoModelForCausalLM):
        auto.register(config_class, model_class, exist_ok=True)
