"""Fast-dLLM v2 (Efficient-Large-Model/Fast_dLLM_v2_7B, NVlabs): Qwen2.5 layers converted to block diffusion
(models/block_diffusion.py), blocks of the config's `bd_size` (32). Its logits keep the autoregressive shift: the
output at position i predicts position i + 1 (the family says so; the member reads one position to the left)."""

from __future__ import annotations

from transformers.models.qwen2 import Qwen2Config, Qwen2ForCausalLM

from .block_diffusion import CanvasForward, register


class FastDLLMQwenConfig(Qwen2Config):
    model_type = "Fast_dLLM_Qwen"

    def __init__(self, bd_size: int = 32, **kwargs):
        self.bd_size = bd_size
        super().__init__(**kwargs)


class FastDLLMQwenForCausalLM(CanvasForward, Qwen2ForCausalLM):
    config_class = FastDLLMQwenConfig
    _supports_sdpa = True


register(FastDLLMQwenConfig, FastDLLMQwenForCausalLM)
