"""SDAR and TraDo (JetAstra/SDAR, Gen-Verse/TraDo), dense and mixture of experts: Qwen3 layers converted to block
diffusion, attention bidirectional within a block and causal across blocks.

The layers are transformers' own Qwen3 (and Qwen3-MoE) modules, with the hub's parameter names: nothing of them is
written here. What is: the forward over a canvas that tie-lite's sampler drives, the same for every native model
(models/cache.py): the block-causal mask (blocks numbered from position 0 of the sequence, as the authors train
and decode), keys and values kept and reused through the layers' own `cache.update` hook, and logits at chosen
positions only.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.models.qwen3 import Qwen3Config, Qwen3ForCausalLM
from transformers.models.qwen3_moe import Qwen3MoeConfig, Qwen3MoeForCausalLM

from .cache import CanvasLMOutput, EmbeddingAccessors, embedded, head_rows, positions_and_kv
from .layers import sdpa_mask
from .llada2_moe import block_causal_mask

DEFAULT_BLOCK = 4  # the authors' generate.py default block length, where a forward is told none


class SDARConfig(Qwen3Config):
    model_type = "sdar"


class SDARMoeConfig(Qwen3MoeConfig):
    model_type = "sdar_moe"


class LayerCache:
    """The `cache` the Qwen3 attention layers call (`update(keys, values, layer_idx)` -> what to attend over),
    backed by tie-lite's canvas cache (models/cache.py LayerKV)."""

    def __init__(self, kv):
        self.kv = kv

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args, **kwargs):
        return self.kv(layer_idx, keys, values)


class CanvasForward(EmbeddingAccessors):
    """The canvas forward shared by the dense and the MoE model: forward(input_ids) returns `.logits` (float32),
    the prediction for position i at index i; attention is block-causal with blocks of `block_size` (per row,
    block 0 starting at `block_start`)."""

    block_causal = True  # tie-lite's sampler may reuse finished blocks' keys and values (models/cache.py)

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
        mask = block_causal_mask(position_ids, keys, int(block_size or DEFAULT_BLOCK), start).to(x.device)
        if padding is not None:  # a key must pass both
            mask = mask & padding.to(device=x.device, dtype=torch.bool)
        cos, sin = self.model.rotary_emb(x, position_ids)
        cache = LayerCache(kv)
        for layer in self.model.layers:
            x = layer(x, attention_mask=mask, position_ids=position_ids, cache=cache, position_embeddings=(cos, sin))
        logits = self.lm_head(self.model.norm(head_rows(x, logits_at))).float()
        return CanvasLMOutput(logits=logits, canvas_cache=kv.kept)


class SDARForCausalLM(CanvasForward, Qwen3ForCausalLM):
    config_class = SDARConfig
    _supports_sdpa = True


class SDARMoeForCausalLM(CanvasForward, Qwen3MoeForCausalLM):
    config_class = SDARMoeConfig
    _supports_sdpa = True


# The hub checkpoints keep one tensor per expert (`mlp.experts.E.gate_proj.weight`); transformers' Qwen3-MoE fuses
# them on load by its model_type's conversion: the same for this one
if get_checkpoint_conversion_mapping(SDARMoeConfig.model_type) is None:
    register_checkpoint_conversion_mapping(SDARMoeConfig.model_type, get_checkpoint_conversion_mapping("qwen3_moe"))

for _config, _model in ((SDARConfig, SDARForCausalLM), (SDARMoeConfig, SDARMoeForCausalLM)):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    for _auto in (AutoModel, AutoModelForMaskedLM, AutoModelForCausalLM):  # the hub's auto_map names the causal one
        _auto.register(_config, _model, exist_ok=True)
