"""Dream (Dream-org/Dream-v0-Instruct-7B, DiffuCoder): the architecture, implemented here from its config.

Dream is Qwen2.5's transformer run without a causal mask: RMSNorm before attention and MLP, grouped-query
attention with q/k/v biases, plain RoPE (theta from the config), a SwiGLU MLP and an untied `lm_head`. It is
a masked diffusion model whose output at position i predicts position i + 1 (the family adapter aligns it;
this class keeps the raw convention). Parameter names and config keys are the hub checkpoints' own, so
`AutoModel.from_pretrained(folder)` loads a hub folder without its remote code (the `auto_map` in its
config.json is not followed: this module registers the "Dream" model type first).

The rotary frequencies are computed in float32 from the config in forward (cached per device), never kept
in a buffer: transformers 5 builds models on the meta device and does not restore non-persistent buffers,
which is how the authors' own class ends up with uninitialised frequencies (silently wrong logits). They
are computed on the CPU and moved, as the authors' module computes them at construction.

Checked against the authors' code under transformers 4.46 by scripts/reference/dream.py and
tests/test_native_dream.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN

from .cache import CanvasCache, CanvasLMOutput, EmbeddingAccessors, embedded, head_rows, run_layers
from .layers import RMSNorm, rotate_half


class DreamConfig(PretrainedConfig):
    """The hub config of Dream checkpoints (configuration_dream.py's keys and defaults)."""

    model_type = "Dream"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 151936,
        hidden_size: int = 4096,
        intermediate_size: int = 22016,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        num_key_value_heads: int | None = 32,
        hidden_act: str = "silu",
        max_position_embeddings: int = 32768,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        use_cache: bool = False,
        tie_word_embeddings: bool = False,
        rope_theta: float = 10000.0,
        rope_scaling: dict | None = None,
        use_sliding_window: bool = False,
        sliding_window: int | None = 4096,
        max_window_layers: int = 28,
        attention_dropout: float = 0.0,
        mask_token_id: int = 151666,
        pad_token_id: int | None = 151643,
        **kwargs,
    ):
        if rope_scaling is not None:
            kind = rope_scaling.get("rope_type", rope_scaling.get("type")) if isinstance(rope_scaling, dict) else None
            if kind != "default" or set(rope_scaling) - {"rope_type", "type"}:
                raise ValueError(
                    f"Dream config has rope_scaling {rope_scaling!r}; tie-lite implements plain RoPE only "
                    f"(rope_scaling null, as Dream-v0 ships)"
                )
        if use_sliding_window:
            raise ValueError("Dream config sets use_sliding_window; tie-lite implements full attention only")
        if kwargs.get("use_mrope"):
            raise ValueError("Dream config sets use_mrope; tie-lite implements plain RoPE only")
        if num_key_value_heads is None:
            num_key_value_heads = num_attention_heads
        head_dim = kwargs.pop("head_dim", None)
        if head_dim is not None and head_dim * num_attention_heads != hidden_size:
            raise ValueError(f"Dream config has head_dim {head_dim}; tie-lite implements hidden_size / heads only")
        if hidden_size % num_attention_heads or num_attention_heads % num_key_value_heads:
            raise ValueError(
                f"Dream config: hidden_size {hidden_size} must split into num_attention_heads {num_attention_heads} "
                f"heads, and those into num_key_value_heads {num_key_value_heads} groups"
            )
        if hidden_act not in ACT2FN:
            raise ValueError(f"Dream config has hidden_act '{hidden_act}', which transformers does not know")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
        self.tie_word_embeddings = tie_word_embeddings
        self.rope_theta = rope_theta
        self.use_sliding_window = use_sliding_window
        self.sliding_window = None  # the hub config stores it only when use_sliding_window (never here)
        self.max_window_layers = max_window_layers
        self.attention_dropout = attention_dropout
        self.mask_token_id = mask_token_id
        self.pad_token_id = pad_token_id
        super().__init__(**kwargs)

    @property
    def rope_scaling(self):  # validated above: plain RoPE only
        return None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def rope_frequencies(config: DreamConfig) -> torch.Tensor:
    """theta ** (-2k / head_dim) for k < head_dim / 2, in float32 (the standard RoPE frequencies)."""
    dim = config.head_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(torch.float32) / dim
    return 1.0 / (float(config.rope_theta) ** exponents)


class DreamAttention(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        d, hd = config.hidden_size, config.head_dim
        self.heads, self.kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, hd
        self.q_proj = nn.Linear(d, self.heads * hd, bias=True)
        self.k_proj = nn.Linear(d, self.kv_heads * hd, bias=True)
        self.v_proj = nn.Linear(d, self.kv_heads * hd, bias=True)
        self.o_proj = nn.Linear(self.heads * hd, d, bias=False)
        self.dropout = config.attention_dropout

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None, kv) -> torch.Tensor:
        b, t, _ = x.shape

        def heads(z, n):
            return z.view(b, t, n, self.head_dim).transpose(1, 2)

        q = heads(self.q_proj(x), self.heads)
        k = heads(self.k_proj(x), self.kv_heads)
        v = heads(self.v_proj(x), self.kv_heads)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k, v = kv(k, v)
        group, keys = self.heads // self.kv_heads, k.shape[2]
        if group > 1:  # grouped-query attention: query head h reads key/value head h // group
            k = k[:, :, None].expand(b, self.kv_heads, group, keys, self.head_dim).reshape(b, self.heads, keys, self.head_dim)
            v = v[:, :, None].expand(b, self.kv_heads, group, keys, self.head_dim).reshape(b, self.heads, keys, self.head_dim)
        # bidirectional: no causal mask (a masked diffusion model reads the whole canvas)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class DreamMLP(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class DreamDecoderLayer(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = DreamAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = DreamMLP(config)

    def forward(self, x, cos, sin, mask, kv):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, kv)
        return x + self.mlp(self.post_attention_layernorm(x))


class DreamBackbone(nn.Module):
    """`model.*` of the hub checkpoints: embeddings, decoder layers, final norm."""

    def __init__(self, config: DreamConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=_padding_idx(config))
        self.layers = nn.ModuleList(DreamDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


def _padding_idx(config: DreamConfig) -> int | None:
    pad = config.pad_token_id
    return pad if isinstance(pad, int) and 0 <= pad < config.vocab_size else None


class DreamModel(EmbeddingAccessors, PreTrainedModel):
    """Dream with its hub parameter names: `model.embed_tokens`, `model.layers.N.{self_attn,mlp,...}`,
    `model.norm`, `lm_head`. forward returns `.logits` as the authors' model does (raw, shifted by one)."""

    config_class = DreamConfig
    base_model_prefix = "model"
    _no_split_modules = ["DreamDecoderLayer"]
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}  # only when tie_word_embeddings
    supports_gradient_checkpointing = False
    _supports_sdpa = True

    def __init__(self, config: DreamConfig):
        super().__init__(config)
        self.model = DreamBackbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self._frequencies: dict[str, torch.Tensor] = {}
        self.post_init()

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    def rotary(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (batch, 1, length, head_dim), computed in float32 and cast to `dtype`."""
        device = position_ids.device
        key = str(device)
        freqs = self._frequencies.get(key)
        if freqs is None:
            freqs = self._frequencies[key] = rope_frequencies(self.config).to(device)
        angles = position_ids.to(torch.float32)[:, :, None] * freqs[None, None, :]
        emb = torch.cat((angles, angles), dim=-1)
        return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        canvas_cache: CanvasCache | None = None,
        store_cache: bool = False,
        logits_at: torch.Tensor | None = None,
        **kwargs,
    ) -> CanvasLMOutput:
        """Logits of a canvas (see models/cache.py for `canvas_cache`, `store_cache` and `logits_at`)."""
        x = embedded(self.model.embed_tokens, input_ids, inputs_embeds)
        x, kept = run_layers(self.model.layers, x, lambda p: self.rotary(p, x.dtype), attention_mask, position_ids,
                             canvas_cache, store_cache)
        logits = self.lm_head(self.model.norm(head_rows(x, logits_at)))
        return CanvasLMOutput(logits=logits, canvas_cache=kept)


AutoConfig.register(DreamConfig.model_type, DreamConfig, exist_ok=True)
AutoModel.register(DreamConfig, DreamModel, exist_ok=True)
