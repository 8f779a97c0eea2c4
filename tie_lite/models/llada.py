"""LLaDA (GSAI-ML/LLaDA-8B-Instruct, LLaDA-8B-Base, LLaDA-1.5): the architecture, implemented here from its config.

LLaDA is a Llama-style transformer run without a causal mask: per block RMSNorm (`attn_norm`), separate
q/k/v projections, RoPE, bidirectional attention, an output projection (`attn_out`), a residual, RMSNorm
(`ff_norm`) and a SwiGLU MLP (`ff_out(act(ff_proj(x)) * up_proj(x))`), then a final RMSNorm (`ln_f`) and an
output head (`ff_out`, or the embedding matrix when `weight_tying`). The prediction for position i is output
i (no shift). Parameter names and config keys are the hub checkpoints' own (`model.transformer.wte`,
`model.transformer.blocks.N.*`, `model.transformer.ln_f`, `model.transformer.ff_out`; `d_model`, `n_heads`,
`n_kv_heads`, `mlp_hidden_size`, `rope_theta`, ...), so `AutoModel.from_pretrained(folder)` loads a hub folder
without its remote code (the `auto_map` in its config.json is not followed: this module registers the
"llada" model type first). The authors' class does not load under transformers 5 (it never calls
`post_init`).

Numerics follow the authors' modeling_llada.py: RMSNorm in float32, cast back to the input dtype, then
`weight * x (+ bias)`; rotary frequencies `1 / theta ** (arange(0, head_dim, 2) / head_dim)` in float32, the
rotation `x * cos + rotate_half(x) * sin` with `rotate_half = cat(-x2, x1)` over the two halves of each head,
applied to q and k in float32 when `rope_full_precision` (the hub's setting), in the input dtype otherwise;
RoPE positions count from the first column even in a padded batch (the authors' code has no position ids).
The rotary tables are computed on first use, never kept in a buffer (transformers 5 builds models on the meta
device and does not restore non-persistent buffers). Inference only: dropout is not applied (the hub
configs set every dropout to 0).

Checked against the authors' code under transformers 4.46 by scripts/reference/llada.py and
tests/test_native_llada.py.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    PretrainedConfig,
    PreTrainedModel,
)

from .cache import CanvasCache, CanvasLMOutput, EmbeddingAccessors, embedded, head_rows, run_layers
from .layers import ACTIVATIONS, RMSNorm, attend, rotate_half



class LLaDAConfig(PretrainedConfig):
    """The hub config of LLaDA checkpoints (configuration_llada.py's keys).

    The defaults are GSAI-ML/LLaDA-8B-Instruct's config.json, not configuration_llada.py's `ModelConfig`
    defaults (GPT-2-like: a sequential block, LayerNorm, no RoPE, tied weights), which describe no checkpoint
    LLaDA shipped; every config the authors' save_pretrained writes carries all of its keys anyway. The two
    derived ones default as the authors' code derives them: n_kv_heads None (n_heads, or 1 with
    multi_query_attention) and embedding_size None (vocab_size). Options the authors' code has but no LLaDA
    checkpoint uses, and that tie-lite does not implement, raise ValueError.
    """

    model_type = "llada"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        d_model: int = 4096,
        n_heads: int = 32,
        n_kv_heads: int | None = None,  # None: n_heads (or 1 with multi_query_attention)
        n_layers: int = 32,
        mlp_ratio: int = 4,
        mlp_hidden_size: int | None = 12288,
        activation_type: str = "silu",
        block_type: str = "llama",
        block_group_size: int = 1,
        alibi: bool = False,
        alibi_bias_max: float = 8.0,
        rope: bool = True,
        rope_full_precision: bool = True,
        rope_theta: float = 500000.0,
        flash_attention: bool = False,
        attention_dropout: float = 0.0,
        multi_query_attention: bool | None = None,
        attention_layer_norm: bool = False,
        attention_layer_norm_with_affine: bool = True,
        residual_dropout: float = 0.0,
        embedding_dropout: float = 0.0,
        input_emb_norm: bool = False,
        layer_norm_type: str = "rms",
        layer_norm_with_affine: bool = True,
        rms_norm_eps: float = 1e-5,
        bias_for_layer_norm: bool | None = False,
        include_bias: bool = False,
        include_qkv_bias: bool | None = False,
        scale_logits: bool = False,
        vocab_size: int = 126464,
        embedding_size: int | None = None,  # None: vocab_size
        weight_tying: bool = False,
        max_sequence_length: int = 4096,
        mask_token_id: int | None = 126336,
        eos_token_id: int | None = 126081,
        pad_token_id: int | None = 126081,
        bos_token_id: int | None = None,
        init_device: str | None = None,
        init_fn: str = "mitchell",
        init_std: float = 0.02,
        init_cutoff_factor: float | None = None,
        precision: str | None = None,
        use_cache: bool = False,
        **kwargs,
    ):
        kwargs.pop("tie_word_embeddings", None)  # a transformers-side alias of weight_tying (see the property)
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.n_layers = n_layers
        self.mlp_ratio = mlp_ratio
        self.mlp_hidden_size = mlp_hidden_size
        self.activation_type = str(activation_type)
        self.block_type = str(block_type)
        self.block_group_size = block_group_size
        self.alibi = alibi
        self.alibi_bias_max = alibi_bias_max
        self.rope = rope
        self.rope_full_precision = rope_full_precision
        self.rope_theta = rope_theta
        self.flash_attention = flash_attention  # the same attention, computed by flash-attn: nothing to do here
        self.attention_dropout = attention_dropout
        self.multi_query_attention = multi_query_attention
        self.attention_layer_norm = attention_layer_norm
        self.attention_layer_norm_with_affine = attention_layer_norm_with_affine
        self.residual_dropout = residual_dropout
        self.embedding_dropout = embedding_dropout
        self.input_emb_norm = input_emb_norm
        self.layer_norm_type = str(layer_norm_type)
        self.layer_norm_with_affine = layer_norm_with_affine
        self.rms_norm_eps = rms_norm_eps
        self.bias_for_layer_norm = bias_for_layer_norm
        self.include_bias = include_bias
        self.include_qkv_bias = include_qkv_bias
        self.scale_logits = scale_logits
        self.vocab_size = vocab_size
        self.embedding_size = embedding_size
        self.weight_tying = weight_tying
        self.max_sequence_length = max_sequence_length
        self.mask_token_id = mask_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.init_device = init_device
        self.init_fn = init_fn
        self.init_std = init_std
        self.init_cutoff_factor = init_cutoff_factor
        self.precision = precision
        self.use_cache = use_cache
        self._check_supported()
        super().__init__(**kwargs)

    def _check_supported(self) -> None:
        def no(what: str) -> None:
            raise ValueError(f"LLaDA config {what}; tie-lite implements LLaDA's hub architecture only "
                             f"(block_type llama, RoPE, RMSNorm, no ALiBi, no QK norm)")

        if self.block_type != "llama":
            no(f"has block_type '{self.block_type}'")
        if self.alibi or not self.rope:
            no(f"has alibi {self.alibi} and rope {self.rope}")
        if self.layer_norm_type != "rms":
            no(f"has layer_norm_type '{self.layer_norm_type}'")
        if not self.layer_norm_with_affine:
            no("sets layer_norm_with_affine false")
        if self.attention_layer_norm:
            no("sets attention_layer_norm (QK norm)")
        if self.block_group_size != 1:
            no(f"has block_group_size {self.block_group_size} (its parameters are named block_groups.N.M)")
        if self.activation_type not in ACTIVATIONS:
            no(f"has activation_type '{self.activation_type}' (the llama block takes silu, gelu or relu)")
        if self.d_model % self.n_heads:
            raise ValueError(f"LLaDA config: d_model {self.d_model} does not split into n_heads {self.n_heads}")
        kv = self.num_key_value_heads  # raises on a contradictory multi_query_attention
        if self.n_heads % kv:
            raise ValueError(f"LLaDA config: n_heads {self.n_heads} does not split into {kv} key/value heads")
        if self.embedding_size is not None and self.embedding_size < self.vocab_size:
            raise ValueError(f"LLaDA config: embedding_size {self.embedding_size} < vocab_size {self.vocab_size}")

    # transformers-style names for the same facts (accelerate, the memory plan and tools read them)
    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def num_attention_heads(self) -> int:
        return self.n_heads

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layers

    @property
    def num_key_value_heads(self) -> int:
        """configuration_llada.py's effective_n_kv_heads: n_kv_heads, or 1 / n_heads from multi_query_attention."""
        mqa = self.multi_query_attention
        if self.n_kv_heads is None:
            return 1 if mqa is True else self.n_heads
        if mqa is None:
            return self.n_kv_heads
        expected = 1 if mqa else self.n_heads
        if self.n_kv_heads != expected:
            raise ValueError("LLaDA config sets both multi_query_attention and a different n_kv_heads")
        return expected

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def intermediate_size(self) -> int:
        return self.mlp_hidden_size if self.mlp_hidden_size is not None else self.mlp_ratio * self.d_model

    @property
    def rows(self) -> int:
        """Rows of the embedding and the output head (embedding_size, else vocab_size)."""
        return self.embedding_size or self.vocab_size

    @property
    def tie_word_embeddings(self) -> bool:
        return bool(self.weight_tying)

    @tie_word_embeddings.setter
    def tie_word_embeddings(self, value: bool) -> None:
        self.weight_tying = bool(value)


def rope_frequencies(config: LLaDAConfig, device=None) -> torch.Tensor:
    """1 / theta ** (arange(0, head_dim, 2) / head_dim), in float32, as the authors compute it."""
    dim = config.head_dim
    return 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))


def _norm(config: LLaDAConfig) -> RMSNorm:
    bias = config.bias_for_layer_norm if config.bias_for_layer_norm is not None else config.include_bias
    return RMSNorm(config.d_model, config.rms_norm_eps, bool(bias))


class LLaDABlock(nn.Module):
    """LLaDA's "llama" block with its parameter names: attn_norm, q/k/v_proj, attn_out, ff_norm, ff_proj,
    up_proj, ff_out."""

    def __init__(self, config: LLaDAConfig):
        super().__init__()
        d, hd = config.d_model, config.head_dim
        self.heads, self.kv_heads, self.head_dim = config.n_heads, config.num_key_value_heads, hd
        bias, qkv_bias = bool(config.include_bias), bool(config.include_bias or config.include_qkv_bias)
        self.full_precision_rope = bool(config.rope_full_precision)
        self.attn_norm = _norm(config)
        self.q_proj = nn.Linear(d, self.heads * hd, bias=qkv_bias)
        self.k_proj = nn.Linear(d, self.kv_heads * hd, bias=qkv_bias)
        self.v_proj = nn.Linear(d, self.kv_heads * hd, bias=qkv_bias)
        self.attn_out = nn.Linear(d, d, bias=bias)
        self.ff_norm = _norm(config)
        self.ff_proj = nn.Linear(d, config.intermediate_size, bias=bias)
        self.up_proj = nn.Linear(d, config.intermediate_size, bias=bias)
        self.ff_out = nn.Linear(config.intermediate_size, d, bias=bias)
        self.act = ACTIVATIONS[config.activation_type]

    def _rotate(self, t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        dtype = t.dtype
        if self.full_precision_rope:
            t = t.float()
        else:
            cos, sin = cos.to(t.dtype), sin.to(t.dtype)
        return (t * cos + rotate_half(t) * sin).to(dtype)

    def attention(self, x: torch.Tensor, cos, sin, mask, kv) -> torch.Tensor:
        b, t, _ = x.shape

        def heads(z, n):
            return z.view(b, t, n, self.head_dim).transpose(1, 2)

        q = self._rotate(heads(self.q_proj(x), self.heads), cos, sin)
        k = self._rotate(heads(self.k_proj(x), self.kv_heads), cos, sin)
        v = heads(self.v_proj(x), self.kv_heads)
        k, v = kv(k, v)
        return self.attn_out(attend(q, k, v, mask, self.heads, self.kv_heads))

    def forward(self, x: torch.Tensor, cos, sin, mask, kv) -> torch.Tensor:
        x = x + self.attention(self.attn_norm(x), cos, sin, mask, kv)
        h = self.ff_norm(x)
        return x + self.ff_out(self.act(self.ff_proj(h)) * self.up_proj(h))


class LLaDABackbone(nn.Module):
    """`model.*` of the hub checkpoints: `model.transformer.{wte, blocks, ln_f, ff_out}`."""

    def __init__(self, config: LLaDAConfig):
        super().__init__()
        parts = dict(
            wte=nn.Embedding(config.rows, config.d_model),
            blocks=nn.ModuleList(LLaDABlock(config) for _ in range(config.n_layers)),
            ln_f=_norm(config),
        )
        # the output head; with weight_tying its weight is wte's (the tied-weights mapping below), and hub
        # checkpoints then carry no ff_out at all (the authors' forward uses F.linear(x, wte.weight))
        tied = bool(config.weight_tying)
        parts["ff_out"] = nn.Linear(config.d_model, config.rows, bias=bool(config.include_bias) and not tied)
        self.transformer = nn.ModuleDict(parts)


class LLaDAModelLM(EmbeddingAccessors, PreTrainedModel):
    """LLaDA with its hub parameter names. forward(input_ids) returns `.logits`, the prediction for position i
    at index i, over `embedding_size` rows."""

    config_class = LLaDAConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["LLaDABlock"]
    _tied_weights_keys = {"model.transformer.ff_out.weight": "model.transformer.wte.weight"}  # when weight_tying
    supports_gradient_checkpointing = False
    _supports_sdpa = True
    input_embeddings_at, output_embeddings_at = "model.transformer.wte", "model.transformer.ff_out"

    def __init__(self, config: LLaDAConfig):
        super().__init__(config)
        self.model = LLaDABackbone(config)
        self._rotary_tables: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # per device, never a buffer
        self.post_init()

    def _init_weights(self, module):
        std = self.config.init_std
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def rotary(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (batch, 1, length, head_dim) in float32. The table is computed on the CPU and moved,
        as the authors' module computes its cache on the CPU (init_device "cpu") and moves it to the input's
        device, so a GPU sees the same values."""
        device = position_ids.device
        need = int(position_ids.max()) + 1 if position_ids.numel() else 1
        table = self._rotary_tables.get(str(device))
        if table is None or table[0].shape[0] < need:
            length = max(need, int(self.config.max_sequence_length))
            angles = torch.arange(length, dtype=torch.float32)[:, None] * rope_frequencies(self.config)[None, :]
            emb = torch.cat((angles, angles), dim=-1)
            table = self._rotary_tables[str(device)] = (emb.cos().to(device), emb.sin().to(device))
        cos, sin = table
        return cos[position_ids][:, None], sin[position_ids][:, None]

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
        tr = self.model.transformer
        x = embedded(tr.wte, input_ids, inputs_embeds)
        if self.config.input_emb_norm:
            x = x * (self.config.d_model ** 0.5)
        x, kept = run_layers(tr.blocks, x, self.rotary, attention_mask, position_ids, canvas_cache, store_cache)
        logits = tr.ff_out(tr.ln_f(head_rows(x, logits_at)))
        if self.config.scale_logits:
            logits = logits * (1 / math.sqrt(self.config.d_model))
        return CanvasLMOutput(logits=logits, canvas_cache=kept)


AutoConfig.register(LLaDAConfig.model_type, LLaDAConfig, exist_ok=True)
AutoModel.register(LLaDAConfig, LLaDAModelLM, exist_ok=True)
AutoModelForMaskedLM.register(LLaDAConfig, LLaDAModelLM, exist_ok=True)
AutoModelForCausalLM.register(LLaDAConfig, LLaDAModelLM, exist_ok=True)  # the hub's auto_map names it too
