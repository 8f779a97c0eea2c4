"""LLaDA-MoE (inclusionAI/LLaDA-MoE-7B-A1B-Base, LLaDA-MoE-7B-A1B-Instruct): the architecture, implemented here
from its config.

An OLMoE-style mixture-of-experts transformer run without a causal mask. Per layer: RMSNorm
(`input_layernorm`), separate `self_attn.q_proj` / `k_proj` / `v_proj` (biases when `attention_bias`), with
`qk_layernorm` an RMSNorm over each query and key head (`q_norm`, `k_norm`, head_dim wide), values clamped to
+-`clip_qkv` when set, RoPE over the first `head_dim * partial_rotary_factor` dimensions of each head,
bidirectional attention, `o_proj`, a residual; RMSNorm (`post_attention_layernorm`) and an MLP: a mixture of
experts where `moe_layer_freq[i]` is non-zero (every layer of the released checkpoints), a dense SwiGLU of
width `dense_intermediate_size` where it is 0; plus, on MoE layers, a `shared_expert` SwiGLU of width
`shared_expert_intermediate_size` when that is set (null in the released checkpoints). Then `model.norm`
and `lm_head` (tied to `model.embed_tokens` with `tie_word_embeddings`). No logit shift: output i predicts
position i. Each head is hidden_size / num_attention_heads wide, whatever the config says: the authors' attention
computes that width itself. A config's `head_dim` (the authors' config class keeps any key) is read by
transformers' default RoPE alone, which rotates int(head_dim * partial_rotary_factor) dimensions of each head
(hidden_size / num_attention_heads when absent), and so it is here; `rotary_dim` is read by no code of theirs.

The router (`mlp.gate`, a linear map without bias), as the authors' LLaDAMoESparseMoeBlock computes it:
router logits in the activations' dtype, `softmax` over the experts in float32, plus `mlp.expert_bias` (a
buffer in the checkpoint, only when `moe_router_enable_expert_bias`) which moves both the choice and the
weights; the `num_experts_per_tok` largest are picked and weigh by those values, **not renormalized** (the
authors' block sets norm_topk_prob False whatever the config says), cast to the activations' dtype; each
expert's output times its weight is summed in the activations' dtype. The authors' code reads neither
`norm_topk_prob`, `routed_scaling_factor` nor the router group fields, and computes softmax whatever
`moe_router_score_function` says: a config whose score function is not softmax, or whose scaling factor
is not 1, asks for a router that code does not compute, and is refused.

Numerics follow the authors' modeling_lladamoe.py (the dllm library's copy, transformers 4.57): RMSNorm in
float32, cast back, times the weight; rotary inverse frequencies `1 / theta ** (arange(0, rot, 2) / rot)` in
float32, cos/sin of `cat(freqs, freqs)` cast to the activations' dtype (the rotation runs in the model dtype),
`rotate_half = cat(-x2, x1)`; attention scale `head_dim ** -0.5`; logits in the model dtype. The released
config says `model_type: llada` (the dllm library asks users to edit it to `lladamoe`); this class takes
either and the family tells it from dense LLaDA by its expert fields (families/llada_moe.py). Inference only:
dropout is not applied.

Checked against the authors' code by scripts/reference/llada_moe.py and tests/test_native_llada_moe.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, PretrainedConfig, PreTrainedModel

from .cache import CanvasCache, CanvasLMOutput, EmbeddingAccessors, embedded, head_rows, run_layers
from .experts import SwiGLU, routed_expert_sum
from .layers import ACTIVATIONS, RMSNorm, attend, rope_type, rotary_cos_sin, rotate_partial

SCORE_FUNCTIONS = (None, "softmax")  # what the authors' LLaDAMoESparseMoeBlock computes; anything else is refused
MODEL_TYPES = ("llada", "lladamoe")  # the released config's and the one the dllm library asks users to write


class LLaDAMoEConfig(PretrainedConfig):
    """The hub config of LLaDA-MoE checkpoints (configuration_lladamoe.py's keys). Defaults are the released
    LLaDA-MoE-7B-A1B's. Settings the authors' code does not implement raise ValueError: a router score function
    other than softmax, a routed scaling factor other than 1, rope scaling, sizes that do not fit together.

    `head_dim` and `rotary_dim` (keys the authors' class keeps without reading): `head_dim` is the width
    transformers' default RoPE reads (int(head_dim * partial_rotary_factor) dimensions of each head rotate;
    `head_width`, hidden_size / num_attention_heads, is the heads' own width, as in the authors' attention); a
    RoPE wider than a head is refused (the authors' forward fails on it). `rotary_dim` is kept and ignored, as
    it is in theirs."""

    model_type = "lladamoe"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 157184,
        hidden_size: int = 2048,
        dense_intermediate_size: int | None = 8192,
        expert_intermediate_size: int = 1024,
        shared_expert_intermediate_size: int | None = None,
        num_hidden_layers: int = 16,
        num_attention_heads: int = 16,
        num_key_value_heads: int | None = None,
        hidden_act: str = "silu",
        max_position_embeddings: int = 8192,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        rope_theta: float = 50000.0,
        partial_rotary_factor: float = 1.0,
        rope_scaling: dict | None = None,
        attention_bias: bool = False,
        clip_qkv: float | None = None,
        qk_layernorm: bool = True,
        num_experts: int = 64,
        num_experts_per_tok: int = 8,
        moe_layer_freq: list | None = None,  # None: every layer a mixture of experts
        moe_router_enable_expert_bias: bool | None = None,
        moe_router_score_function: str | None = "softmax",
        norm_topk_prob: bool | None = None,  # read by no code of the authors': the top-k weights are never renormalized
        routed_scaling_factor: float | None = 1,
        tie_word_embeddings: bool = False,
        mask_token_id: int | None = 156895,
        eos_token_id: int | None = 156892,
        pad_token_id: int | None = 156892,
        head_dim: int | None = None,
        rotary_dim: int | None = None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.dense_intermediate_size = dense_intermediate_size
        self.expert_intermediate_size = expert_intermediate_size
        self.shared_expert_intermediate_size = shared_expert_intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads if num_key_value_heads is not None else num_attention_heads
        self.hidden_act = str(hidden_act)
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.partial_rotary_factor = partial_rotary_factor
        # transformers' default RoPE reads head_dim (hidden_size / num_attention_heads when absent); the attention
        # does not (head_width)
        self.head_dim = head_dim if head_dim is not None else (hidden_size // num_attention_heads
                                                               if num_attention_heads else 0)
        self.rotary_dim = rotary_dim  # kept as given: the authors' config class keeps it, no code of theirs reads it
        self.rope_type = rope_type(rope_scaling)  # not kept as rope_scaling: transformers 5 reinterprets that key
        self.attention_bias = attention_bias
        self.clip_qkv = clip_qkv
        self.qk_layernorm = qk_layernorm
        self.num_experts = num_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.moe_layer_freq = list(moe_layer_freq) if moe_layer_freq is not None else [1] * int(num_hidden_layers)
        self.moe_router_enable_expert_bias = moe_router_enable_expert_bias
        self.moe_router_score_function = moe_router_score_function
        self.norm_topk_prob = norm_topk_prob
        self.routed_scaling_factor = routed_scaling_factor
        self.mask_token_id = mask_token_id
        for dropped in ("attention_dropout", "use_cache", "output_router_logits", "router_aux_loss_coef",
                        "router_num_group", "router_topk_group"):
            kwargs.pop(dropped, None)  # training settings, or router fields the authors' forward never reads
        super().__init__(eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)
        self._check_supported()

    def _check_supported(self) -> None:
        def no(what: str) -> None:
            raise ValueError(f"LLaDA-MoE config {what}")

        if self.moe_router_score_function not in SCORE_FUNCTIONS:
            no(f"has moe_router_score_function '{str(self.moe_router_score_function)[:40]}'; the LLaDA-MoE router "
               f"is softmax (the authors' code computes nothing else)")
        if self.routed_scaling_factor not in (None, 1):
            no(f"has routed_scaling_factor {self.routed_scaling_factor}; the LLaDA-MoE router does not scale its "
               f"weights (the authors' code reads no such factor)")
        if self.rope_type != "default":
            no(f"has rope_scaling of type '{self.rope_type}'; tie-lite implements LLaDA-MoE's plain rotary embedding only")
        if self.hidden_act not in ACTIVATIONS:
            no(f"has hidden_act '{self.hidden_act}' (silu, gelu or relu)")
        if min(self.hidden_size, self.num_attention_heads, self.num_hidden_layers, self.vocab_size) <= 0:
            no("lacks its sizes (hidden_size, num_attention_heads, num_hidden_layers, vocab_size)")
        if self.hidden_size % self.num_attention_heads:
            no(f"has hidden_size {self.hidden_size}, which does not split into {self.num_attention_heads} heads")
        if self.num_key_value_heads <= 0 or self.num_attention_heads % self.num_key_value_heads:
            no(f"has {self.num_attention_heads} heads, which do not split into {self.num_key_value_heads} "
               f"key/value heads")
        rotated = int(self.head_dim * self.partial_rotary_factor)
        if not 0 < self.partial_rotary_factor <= 1 or rotated % 2:
            no(f"has partial_rotary_factor {self.partial_rotary_factor}, which rotates no even share of head_dim "
               f"{self.head_dim}")
        if rotated > self.head_width:
            no(f"has head_dim {self.head_dim}, so its rotary embedding spans {rotated} dimensions, more than its heads "
               f"have (hidden_size {self.hidden_size} / {self.num_attention_heads} heads = {self.head_width}); the "
               f"authors' attention is that wide whatever head_dim says")
        if len(self.moe_layer_freq) != self.num_hidden_layers:
            no(f"has moe_layer_freq for {len(self.moe_layer_freq)} layers but num_hidden_layers "
               f"{self.num_hidden_layers}")
        if any(self.is_moe_layer(i) for i in range(self.num_hidden_layers)):
            if not 0 < self.num_experts_per_tok <= self.num_experts:
                no(f"picks num_experts_per_tok {self.num_experts_per_tok} of num_experts {self.num_experts}")
            if not self.expert_intermediate_size or self.expert_intermediate_size <= 0:
                no("has experts but no expert_intermediate_size")
            shared = self.shared_expert_intermediate_size
            if shared is not None and (isinstance(shared, bool) or not isinstance(shared, int) or shared <= 0):
                no(f"has shared_expert_intermediate_size {shared!r} (a width, or null for no shared expert)")
        if not all(self.is_moe_layer(i) for i in range(self.num_hidden_layers)) and not (
                self.dense_intermediate_size and self.dense_intermediate_size > 0):
            no("has dense layers (moe_layer_freq 0) but no dense_intermediate_size")

    @classmethod
    def get_config_dict(cls, *args, **kwargs):
        """config.json as a dict, its model_type read as this class's when it is either LLaDA-MoE name (the
        released "llada" is LLaDA-MoE here, not a mismatch to warn about)."""
        config_dict, kwargs = super().get_config_dict(*args, **kwargs)
        if config_dict.get("model_type") in MODEL_TYPES:
            config_dict = {**config_dict, "model_type": cls.model_type}
        return config_dict, kwargs

    @property
    def head_width(self) -> int:
        """Each attention head's width: hidden_size / num_attention_heads, as the authors' attention computes it."""
        return self.hidden_size // self.num_attention_heads

    @property
    def rotated_dims(self) -> int:
        """What each head rotates, as the authors' attention and transformers' default RoPE compute it (never
        `rotary_dim`, which a config may carry and no code of theirs reads)."""
        return int(self.head_dim * self.partial_rotary_factor)

    def is_moe_layer(self, index: int) -> bool:
        return self.moe_layer_freq[index] != 0


class RouterGate(nn.Module):
    """`mlp.gate`: the router's (experts, hidden) weight. Not an nn.Linear, so that quantization (bitsandbytes
    replaces linear layers) leaves the routing in the checkpoint's precision, as LLaDA2's router is kept."""

    def __init__(self, hidden: int, experts: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(experts, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype))


class SoftmaxRouter(nn.Module):
    """`mlp` of a MoE layer: `gate` (experts, hidden), the optional `expert_bias` buffer, and `experts.N`."""

    def __init__(self, config: LLaDAMoEConfig):
        super().__init__()
        self.top_k = int(config.num_experts_per_tok)
        self.gate = RouterGate(config.hidden_size, config.num_experts)
        self.experts = nn.ModuleList(SwiGLU(config.hidden_size, int(config.expert_intermediate_size), config.hidden_act)
                                     for _ in range(config.num_experts))
        if config.moe_router_enable_expert_bias:
            self.register_buffer("expert_bias", torch.zeros(config.num_experts))  # persistent: checkpoints carry it
        else:
            self.expert_bias = None

    def route(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(expert indices, float32 weights), each (tokens, top_k): softmax in float32 (+ expert bias), top-k."""
        scores = F.softmax(self.gate(flat), dim=-1, dtype=torch.float32)
        if self.expert_bias is not None:
            scores = scores + self.expert_bias.to(scores.device)
        weights, chosen = scores.topk(self.top_k, dim=-1)
        return chosen, weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        chosen, weights = self.route(flat)
        return routed_expert_sum(self.experts, flat, chosen, weights.to(x.dtype), x.dtype).view(x.shape)


class LLaDAMoEAttention(nn.Module):
    """`self_attn`: q_proj, k_proj, v_proj, o_proj, and q_norm / k_norm with qk_layernorm."""

    def __init__(self, config: LLaDAMoEConfig):
        super().__init__()
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_width  # hidden_size / heads, as the authors' attention has it (not config.head_dim)
        d, bias = config.hidden_size, bool(config.attention_bias)
        self.q_proj = nn.Linear(d, self.heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, d, bias=bias)
        if config.qk_layernorm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None
        self.clip = config.clip_qkv

    def forward(self, x: torch.Tensor, cos, sin, mask, kv) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim)
        if self.q_norm is not None:  # over each head, before the clamp, as the authors' code orders them
            q, k = self.q_norm(q), self.k_norm(k)
        if self.clip is not None:
            q, k, v = (z.clamp(-self.clip, self.clip) for z in (q, k, v))
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))
        q, k = rotate_partial(q, cos, sin), rotate_partial(k, cos, sin)
        k, v = kv(k, v)
        return self.o_proj(attend(q, k, v, mask, self.heads, self.kv_heads, scale=self.head_dim ** -0.5))


class LLaDAMoELayer(nn.Module):
    def __init__(self, config: LLaDAMoEConfig, index: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LLaDAMoEAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        moe = config.is_moe_layer(index)
        if moe:
            self.mlp = SoftmaxRouter(config)
        else:
            self.mlp = SwiGLU(config.hidden_size, int(config.dense_intermediate_size), config.hidden_act)
        shared = config.shared_expert_intermediate_size
        self.shared_expert = SwiGLU(config.hidden_size, int(shared), config.hidden_act) if moe and shared else None

    def forward(self, x: torch.Tensor, cos, sin, mask, kv) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, kv)
        h = self.post_attention_layernorm(x)
        out = self.mlp(h)
        return x + (out + self.shared_expert(h) if self.shared_expert is not None else out)


class LLaDAMoEBackbone(nn.Module):
    """`model.*` of the hub checkpoints: embed_tokens, layers, norm."""

    def __init__(self, config: LLaDAMoEConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LLaDAMoELayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LLaDAMoEModelLM(EmbeddingAccessors, PreTrainedModel):
    """LLaDA-MoE with its hub parameter names. forward(input_ids) returns `.logits` (model dtype), the prediction
    for position i at index i."""

    config_class = LLaDAMoEConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["LLaDAMoELayer"]
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}  # when tie_word_embeddings
    supports_gradient_checkpointing = False
    _supports_sdpa = True

    def __init__(self, config: LLaDAMoEConfig):
        super().__init__(config)
        self.model = LLaDAMoEBackbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding, RouterGate)):
            nn.init.normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, SoftmaxRouter) and module.expert_bias is not None:
            module.expert_bias.zero_()

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
        x, kept = run_layers(self.model.layers, x, lambda p: rotary_cos_sin(p, self.config.rotated_dims,
                                                                             self.config.rope_theta, x.dtype),
                             attention_mask, position_ids, canvas_cache, store_cache)
        logits = self.lm_head(self.model.norm(head_rows(x, logits_at)))
        return CanvasLMOutput(logits=logits, canvas_cache=kept)


AutoConfig.register(LLaDAMoEConfig.model_type, LLaDAMoEConfig, exist_ok=True)
AutoModel.register(LLaDAMoEConfig, LLaDAMoEModelLM, exist_ok=True)
AutoModelForMaskedLM.register(LLaDAMoEConfig, LLaDAMoEModelLM, exist_ok=True)
