"""LLaDA2.x (inclusionAI/LLaDA2.0-mini, LLaDA2.0-flash, LLaDA2.1-mini, ...): the architecture, implemented here
from its config (`model_type: llada2_moe`).

A Ling-2.0-style mixture-of-experts transformer decoded by block diffusion. Per layer: RMSNorm
(`input_layernorm`), one fused projection `attention.query_key_value` into H query, K key and K value heads
(in that order, head_dim each), RMSNorm over each query and key head (`query_layernorm`, `key_layernorm`) when
`use_qk_norm`, partial RoPE (only the first `head_dim * partial_rotary_factor` dimensions of each head rotate,
the rest pass through), attention, `attention.dense`, a residual; RMSNorm (`post_attention_layernorm`) and an
MLP: a dense SwiGLU (`gate_proj`, `up_proj`, `down_proj`) in the first `first_k_dense_replace` layers, a
mixture of experts after them; then `model.norm` and `lm_head`. No logit shift: output i predicts position i.

The router (`mlp.gate`), as the authors' LLaDA2MoeGate computes it: router logits `x @ W^T` in float32,
scores `sigmoid(logits)` (the only `score_function` they implement); the choice adds `expert_bias` (a buffer
in the checkpoint) to the scores and is group-limited: the experts split into `n_group` groups, a group's
score is the sum of its two best experts, the best `topk_group` groups stay and `num_experts_per_tok` experts
are picked among theirs; each picked expert weighs by its *unbiased* score divided by the picked scores' sum
(when more than one is picked) times `routed_scaling_factor`. The weighted sum is taken in float32 and cast
back; `shared_experts` (an MLP of width `moe_intermediate_size * num_shared_experts`) is always added.

Attention is bidirectional over the canvas unless the caller gives block structure (`block_size`, and per row
the position where block 0 starts): then it is block-causal, as LLaDA2 is trained and decoded: a position
sees every position of its own block and of earlier blocks, none of later ones. The authors' generate()
numbers blocks from position 0 of the canvas; tie-lite numbers them from where the response starts, so
prompt positions before it form blocks counted backwards (the two agree whenever the prompt length is a
multiple of the block size; scripts/reference/llada2.py checks such prompts). Because finished blocks never
see later ones, their keys and values are final: the block KV cache is exact (models/cache.py).

Numerics follow the authors' modeling_llada2_moe.py (transformers 4.57): RMSNorm in float32, cast back, times
the weight; rotary inverse frequencies `1 / theta ** (arange(0, rot, 2) / rot)` in float32 with rot =
`int(head_dim * partial_rotary_factor)`, cos/sin of `cat(freqs, freqs)` cast to the activations' dtype (unlike
LLaDA, the rotation runs in the model dtype), `rotate_half = cat(-x2, x1)` over the rotated part; attention
scale `head_dim ** -0.5`; logits cast to float32. Inference only: dropout is not applied.

Checked against the authors' code by scripts/reference/llada2.py and tests/test_native_llada2.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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
from .experts import SwiGLU, routed_expert_sum
from .layers import ACTIVATIONS, RMSNorm, attend, block_causal_mask, rope_type, rotary_cos_sin, rotate_partial

SCORE_FUNCTIONS = ("sigmoid",)  # what the authors' LLaDA2MoeGate computes; anything else is refused
ROUTER_DTYPES = ("fp32", "float32")  # the gate runs in float32 whatever the checkpoint says


class LLaDA2MoeConfig(PretrainedConfig):
    """The hub config of LLaDA2.x checkpoints (configuration_llada2_moe.py's keys, plus the router keys the
    hub configs carry: score_function, router_dtype, norm_topk_prob, moe_router_enable_expert_bias, and
    `rotary_dim`, which inclusionAI's LLaDA2-mini training config and copies of LLaDA2.1-mini's carry).

    Defaults are inclusionAI/LLaDA2.0-mini's, but for head_dim: absent, it is hidden_size / num_attention_heads,
    as the authors' config class has it (128 for the mini sizes). `rotary_dim` is read by no code of the
    authors' (their attention and transformers' RoPE rotate int(head_dim * partial_rotary_factor) dimensions):
    it is kept and ignored, as theirs is (inclusionAI's LLaDA2-mini training config says 16 where 8 rotate). Router settings
    the authors' code does not implement raise ValueError (a softmax score function, unnormalized top-k
    weights, another router dtype), as do sizes that do not fit together (groups that do not split the experts,
    more experts per token than the kept groups hold).
    """

    model_type = "llada2_moe"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 157184,
        hidden_size: int = 2048,
        intermediate_size: int | None = 5120,
        num_hidden_layers: int = 20,
        num_attention_heads: int = 16,
        num_key_value_heads: int = 4,
        hidden_act: str = "silu",
        use_qkv_bias: bool = False,
        use_qk_norm: bool = True,
        use_bias: bool = False,
        rms_norm_eps: float = 1e-6,
        norm_head: bool = False,
        tie_word_embeddings: bool = False,
        max_position_embeddings: int = 32768,
        rope_theta: float = 600000.0,
        rope_scaling: dict | None = None,
        partial_rotary_factor: float = 0.5,
        head_dim: int | None = None,
        num_experts: int | None = 256,
        num_shared_experts: int | None = 1,
        num_experts_per_tok: int = 8,
        n_group: int = 8,
        topk_group: int = 4,
        routed_scaling_factor: float = 2.5,
        moe_intermediate_size: int | None = 512,
        first_k_dense_replace: int = 1,
        score_function: str = "sigmoid",
        router_dtype: str = "fp32",
        norm_topk_prob: bool = True,
        moe_router_enable_expert_bias: bool = True,
        mask_token_id: int | None = 156895,
        eos_token_id: int | None = 156892,
        pad_token_id: int | None = 156892,
        rotary_dim: int | None = None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.hidden_act = str(hidden_act)
        self.use_qkv_bias = use_qkv_bias
        self.use_qk_norm = use_qk_norm
        self.use_bias = use_bias
        self.rms_norm_eps = rms_norm_eps
        self.norm_head = norm_head
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.rope_type = rope_type(rope_scaling)  # not kept as rope_scaling: transformers 5 reinterprets that key
        self.partial_rotary_factor = partial_rotary_factor
        self.head_dim = head_dim or hidden_size // num_attention_heads
        # what the authors' attention and transformers' default RoPE rotate; a given rotary_dim must say the same
        self.rotary_dim = rotary_dim  # kept as given: the authors' config class keeps it, no code of theirs reads it
        self.num_experts = num_experts
        self.num_shared_experts = num_shared_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.n_group = n_group
        self.topk_group = topk_group
        self.routed_scaling_factor = routed_scaling_factor
        self.moe_intermediate_size = moe_intermediate_size
        self.first_k_dense_replace = first_k_dense_replace
        self.score_function = str(score_function)
        self.router_dtype = str(router_dtype)
        self.norm_topk_prob = norm_topk_prob
        self.moe_router_enable_expert_bias = moe_router_enable_expert_bias
        self.mask_token_id = mask_token_id
        for dropped in ("embedding_dropout", "attention_dropout", "output_dropout", "use_cache",
                        "use_sliding_window", "sliding_window", "max_window_layers", "output_router_logits"):
            kwargs.pop(dropped, None)  # training or serving settings; the forward here applies none of them
        super().__init__(eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)
        self._check_supported()

    def _check_supported(self) -> None:
        def no(what: str) -> None:
            raise ValueError(f"LLaDA2 config {what}")

        if self.score_function not in SCORE_FUNCTIONS:
            no(f"has router score_function '{self.score_function}'; the LLaDA2 router is {', '.join(SCORE_FUNCTIONS)}")
        if self.router_dtype not in ROUTER_DTYPES:
            no(f"has router_dtype '{self.router_dtype}'; the LLaDA2 router computes in fp32")
        if self.norm_topk_prob is False:
            no("sets norm_topk_prob false; the LLaDA2 router always normalizes its top-k weights")
        if self.rope_type != "default":
            no(f"has rope_scaling of type '{self.rope_type}'; tie-lite implements LLaDA2's plain rotary embedding only")
        if self.hidden_act not in ACTIVATIONS:
            no(f"has hidden_act '{self.hidden_act}' (silu, gelu or relu)")
        if self.norm_head:
            no("sets norm_head; no LLaDA2 checkpoint does and the authors' forward ignores it")
        if not 0 < self.partial_rotary_factor <= 1 or int(self.head_dim * self.partial_rotary_factor) % 2:
            no(f"has partial_rotary_factor {self.partial_rotary_factor}, which rotates no even share of head_dim "
               f"{self.head_dim}")
        rotated = int(self.head_dim * self.partial_rotary_factor)
        if self.num_key_value_heads in (None, 0):
            self.num_key_value_heads = self.num_attention_heads  # the 2.1 configuration's reading of 0
        if self.num_attention_heads % self.num_key_value_heads:
            no(f"has {self.num_attention_heads} heads, which do not split into {self.num_key_value_heads} "
               f"key/value heads")
        if self.num_experts is not None:
            experts, groups = int(self.num_experts), int(self.n_group)
            if groups <= 0 or experts % groups:
                no(f"has {experts} experts, which do not split into n_group {groups}")
            if not 0 < self.topk_group <= groups:
                no(f"keeps topk_group {self.topk_group} of n_group {groups} expert groups")
            if experts // groups < 2:
                no(f"has groups of {experts // groups} expert; the router scores a group by its two best experts")
            if not 0 < self.num_experts_per_tok <= self.topk_group * (experts // groups):
                no(f"picks num_experts_per_tok {self.num_experts_per_tok} experts from {self.topk_group} groups of "
                   f"{experts // groups}")
            if not self.moe_intermediate_size:
                no("has experts but no moe_intermediate_size")
        if self.first_k_dense_replace > 0 and not self.intermediate_size:
            no("has dense layers (first_k_dense_replace) but no intermediate_size")

    @property
    def rotated_dims(self) -> int:
        """What each head rotates, as the authors' attention and transformers' default RoPE compute it (never
        `rotary_dim`, which a config may carry and no code of theirs reads)."""
        return int(self.head_dim * self.partial_rotary_factor)

    def is_moe_layer(self, index: int) -> bool:
        return self.num_experts is not None and index >= self.first_k_dense_replace


class Router(nn.Module):
    """`mlp.gate`: the weight (experts, hidden) and the `expert_bias` buffer that only steers the choice."""

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__()
        self.experts, self.top_k = int(config.num_experts), int(config.num_experts_per_tok)
        self.groups, self.keep_groups = int(config.n_group), int(config.topk_group)
        self.scale = float(config.routed_scaling_factor)
        self.weight = nn.Parameter(torch.empty(self.experts, config.hidden_size))
        self.register_buffer("expert_bias", torch.zeros(self.experts))  # persistent: hub checkpoints carry it

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(expert indices, float32 weights), each (tokens, top_k), for x of shape (tokens, hidden)."""
        scores = torch.sigmoid(F.linear(x.float(), self.weight.float()))
        biased = scores + self.expert_bias.float()
        tokens = biased.shape[0]
        per_group = biased.view(tokens, self.groups, -1)
        group_score = per_group.topk(2, dim=-1).values.sum(-1)
        kept = torch.zeros_like(group_score, dtype=torch.bool)
        kept.scatter_(1, group_score.topk(self.keep_groups, dim=-1, sorted=False).indices, True)
        allowed = kept[:, :, None].expand_as(per_group).reshape(tokens, -1)
        chosen = biased.masked_fill(~allowed, float("-inf")).topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, chosen)
        if self.top_k > 1:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return chosen, weights * self.scale


class MixtureOfExperts(nn.Module):
    """`mlp` of a MoE layer: `gate`, `experts.N`, `shared_experts`."""

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__()
        width, act = int(config.moe_intermediate_size), config.hidden_act
        self.gate = Router(config)
        self.experts = nn.ModuleList(SwiGLU(config.hidden_size, width, act) for _ in range(config.num_experts))
        shared = config.num_shared_experts
        self.shared_experts = SwiGLU(config.hidden_size, width * shared, act) if shared else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        chosen, weights = self.gate(flat)
        out = routed_expert_sum(self.experts, flat, chosen, weights, torch.float32).to(x.dtype).view(shape)
        return out + self.shared_experts(x) if self.shared_experts is not None else out


class LLaDA2Attention(nn.Module):
    """`attention`: query_key_value (fused), query_layernorm / key_layernorm, dense."""

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.query_key_value = nn.Linear(config.hidden_size, (self.heads + 2 * self.kv_heads) * self.head_dim,
                                         bias=bool(config.use_qkv_bias))
        if config.use_qk_norm:
            self.query_layernorm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.key_layernorm = RMSNorm(self.head_dim, config.rms_norm_eps)
        else:
            self.query_layernorm = self.key_layernorm = None
        self.dense = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=bool(config.use_bias))

    def forward(self, x: torch.Tensor, cos, sin, mask, kv) -> torch.Tensor:
        b, t, _ = x.shape
        qkv = self.query_key_value(x).view(b, t, self.heads + 2 * self.kv_heads, self.head_dim)
        q, k, v = (part.transpose(1, 2) for part in qkv.split([self.heads, self.kv_heads, self.kv_heads], dim=2))
        if self.query_layernorm is not None:
            q, k = self.query_layernorm(q), self.key_layernorm(k)
        q, k = rotate_partial(q, cos, sin), rotate_partial(k, cos, sin)
        k, v = kv(k, v)
        return self.dense(attend(q, k, v, mask, self.heads, self.kv_heads, scale=self.head_dim ** -0.5))


class LLaDA2Layer(nn.Module):
    def __init__(self, config: LLaDA2MoeConfig, index: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attention = LLaDA2Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        if config.is_moe_layer(index):
            self.mlp = MixtureOfExperts(config)
        else:
            self.mlp = SwiGLU(config.hidden_size, int(config.intermediate_size), config.hidden_act)

    def forward(self, x: torch.Tensor, cos, sin, mask, kv) -> torch.Tensor:
        x = x + self.attention(self.input_layernorm(x), cos, sin, mask, kv)
        return x + self.mlp(self.post_attention_layernorm(x))


class LLaDA2Backbone(nn.Module):
    """`model.*` of the hub checkpoints: word_embeddings, layers, norm."""

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LLaDA2Layer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LLaDA2MoeModelLM(EmbeddingAccessors, PreTrainedModel):
    """LLaDA2.x with its hub parameter names. forward(input_ids) returns `.logits` (float32), the prediction
    for position i at index i; `block_size` and `block_start` make attention block-causal."""

    config_class = LLaDA2MoeConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["LLaDA2Layer"]
    _tied_weights_keys = {"lm_head.weight": "model.word_embeddings.weight"}  # when tie_word_embeddings
    supports_gradient_checkpointing = False
    _supports_sdpa = True
    input_embeddings_at = "model.word_embeddings"
    block_causal = True  # tie-lite's sampler may reuse finished blocks' keys and values (models/cache.py)

    def __init__(self, config: LLaDA2MoeConfig):
        super().__init__(config)
        self.model = LLaDA2Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        std = getattr(self.config, "initializer_range", 0.02)
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, Router):
            nn.init.normal_(module.weight, std=std)
            module.expert_bias.zero_()

    def rotary(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (batch, 1, length, rotary_dim), computed in float32 and cast to `dtype`."""
        return rotary_cos_sin(position_ids, self.config.rotated_dims, self.config.rope_theta, dtype)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        canvas_cache: CanvasCache | None = None,
        store_cache: bool = False,
        logits_at: torch.Tensor | None = None,
        block_size: int | None = None,
        block_start: torch.Tensor | int | None = None,
        **kwargs,
    ) -> CanvasLMOutput:
        """Logits of a canvas (see models/cache.py for `canvas_cache`, `store_cache` and `logits_at`). With
        `block_size`, attention is block-causal with block 0 starting at `block_start` (per row; default 0)."""
        x = embedded(self.model.word_embeddings, input_ids, inputs_embeds)
        batch = x.shape[0]

        def block_causal(mask, positions, keys):  # padding and block-causality: a key must pass both
            start = torch.as_tensor(0 if block_start is None else block_start).expand(batch)
            causal = block_causal_mask(positions, keys, int(block_size), start)
            return causal if mask is None else (mask.to(torch.bool) & causal)

        x, kept = run_layers(self.model.layers, x, lambda p: self.rotary(p, x.dtype), attention_mask, position_ids,
                             canvas_cache, store_cache, block_causal if block_size is not None else None)
        logits = self.lm_head(self.model.norm(head_rows(x, logits_at))).float()
        return CanvasLMOutput(logits=logits, canvas_cache=kept)


AutoConfig.register(LLaDA2MoeConfig.model_type, LLaDA2MoeConfig, exist_ok=True)
AutoModel.register(LLaDA2MoeConfig, LLaDA2MoeModelLM, exist_ok=True)
AutoModelForMaskedLM.register(LLaDA2MoeConfig, LLaDA2MoeModelLM, exist_ok=True)
AutoModelForCausalLM.register(LLaDA2MoeConfig, LLaDA2MoeModelLM, exist_ok=True)  # the hub's auto_map names it
