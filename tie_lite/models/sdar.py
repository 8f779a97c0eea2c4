"""SDAR and TraDo (JetAstra/SDAR, Gen-Verse/TraDo), dense and mixture of experts: Qwen3 layers converted to block
diffusion (models/block_diffusion.py), blocks of the config's `block_size` (4 as released)."""

from __future__ import annotations

from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.models.qwen3 import Qwen3Config, Qwen3ForCausalLM
from transformers.models.qwen3_moe import Qwen3MoeConfig, Qwen3MoeForCausalLM

from .block_diffusion import CanvasForward, register


class SDARConfig(Qwen3Config):
    model_type = "sdar"


class SDARMoeConfig(Qwen3MoeConfig):
    model_type = "sdar_moe"


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

register(SDARConfig, SDARForCausalLM)
register(SDARMoeConfig, SDARMoeForCausalLM)
