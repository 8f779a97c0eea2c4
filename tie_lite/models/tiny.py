"""The project's own small MDLM: a bidirectional transformer registered with transformers' Auto classes.

It is a plain `PreTrainedModel` (no remote code), so the shipped checkpoints load through
`AutoModelForMaskedLM` like any hub model, and bitsandbytes/quanto can quantize its `nn.Linear` layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForMaskedLM,
    PretrainedConfig,
    PreTrainedModel,
)

from .cache import CanvasLMOutput, head_rows, run_layers


class TieTinyConfig(PretrainedConfig):
    model_type = "tie-tiny"

    def __init__(
        self,
        vocab_size: int = 128,
        hidden_size: int = 128,
        num_hidden_layers: int = 3,
        num_attention_heads: int = 4,
        intermediate_size: int = 384,
        max_position_embeddings: int = 256,  # context limit (rotary positions)
        mask_token_id: int | None = None,
        shift_logits: bool = False,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.mask_token_id = mask_token_id
        # Dream convention: the prediction for position i is read from the output at i-1.
        self.shift_logits = shift_logits
        super().__init__(**kwargs)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def rotary(position_ids: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary position angles, (batch, 1, length, head_dim / 2): attention sees relative offsets, which is
    what copying digits and lining up columns needs when the numbers sit at different places in differently
    worded prompts."""
    half = head_dim // 2
    freqs = 1.0 / (10000 ** (torch.arange(half, device=position_ids.device, dtype=torch.float32) / half))
    angles = position_ids.to(torch.float32)[:, :, None] * freqs[None, None]
    return angles.cos()[:, None], angles.sin()[:, None]


class _Block(nn.Module):
    def __init__(self, config: TieTinyConfig):
        super().__init__()
        d = config.hidden_size
        self.heads = config.num_attention_heads
        self.norm1 = nn.LayerNorm(d)
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.o_proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.up_proj = nn.Linear(d, config.intermediate_size)
        self.down_proj = nn.Linear(config.intermediate_size, d)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask, kv) -> torch.Tensor:
        b, t, d = x.shape
        h = self.norm1(x)

        def split(z):
            return z.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.q_proj(h)), split(self.k_proj(h)), split(self.v_proj(h))
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        k, v = kv(k, v)
        # No causal mask: masked diffusion models attend in both directions.
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.o_proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.down_proj(F.gelu(self.up_proj(self.norm2(x))))


class TieTinyForMaskedLM(PreTrainedModel):
    config_class = TieTinyConfig
    base_model_prefix = "tie_tiny"
    _no_split_modules = ["_Block"]

    def __init__(self, config: TieTinyConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(_Block(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def get_input_embeddings(self):
        return self.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids: torch.Tensor, position_ids=None, canvas_cache=None, store_cache: bool = False,
                logits_at=None, attention_mask=None, **_) -> CanvasLMOutput:
        """Logits of a canvas (see models/cache.py for `canvas_cache`, `store_cache` and `logits_at`)."""
        x = self.embed_tokens(input_ids)
        head_dim = self.config.hidden_size // self.config.num_attention_heads

        def angles(positions):
            cos, sin = rotary(positions, head_dim)
            return cos.to(x.dtype), sin.to(x.dtype)

        x, kept = run_layers(self.layers, x, angles, attention_mask, position_ids, canvas_cache, store_cache)
        logits = self.lm_head(self.norm(head_rows(x, logits_at)))
        return CanvasLMOutput(logits=logits, canvas_cache=kept)


AutoConfig.register(TieTinyConfig.model_type, TieTinyConfig, exist_ok=True)
AutoModelForMaskedLM.register(TieTinyConfig, TieTinyForMaskedLM, exist_ok=True)
