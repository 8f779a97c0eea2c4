"""LLaDA-MoE (inclusionAI/LLaDA-MoE-7B-A1B-Base, LLaDA-MoE-7B-A1B-Instruct): mixture of experts, bidirectional
like LLaDA, no logit shift, Ling's tokenizer and role-tag chat template.

The architecture is the project's own (tie_lite/models/llada_moe.py), so no remote code runs. The released
config says `model_type: llada`, like dense LLaDA; its expert fields (`num_experts`, `expert_intermediate_size`,
`moe_layer_freq`) tell it apart without any edit, and `lladamoe` (what the dllm library asks users to write)
is taken too. Special ids are the Ling tokenizer's, as LLaDA2's: <|mask|> 156895 (llama.cpp's converter and the
dllm tokenizer set-up name it; the config does not), <|endoftext|> 156892; a turn ends with <|role_end|>, read
from the tokenizer. Its sampler is LLaDA's generate(): low-confidence remasking in semi-autoregressive blocks,
32 tokens a block in the model card's example.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from tie_lite.models.llada_moe import LLaDAMoEConfig, LLaDAMoEModelLM

from .llada import LLADA_RECIPE
from .llada2 import LingFamily

# Ling's role tags without LLaDA2's "detailed thinking off" system turn, for a tokenizer that carries no template
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}<role>SYSTEM</role>{{ m['content'] }}<|role_end|>"
    "{% elif m['role'] == 'user' %}<role>HUMAN</role>{{ m['content'] }}<|role_end|>"
    "{% else %}<role>ASSISTANT</role>{{ m['content'] }}<|role_end|>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<role>ASSISTANT</role>{% endif %}"
)
EXPERT_FIELDS = ("num_experts", "expert_intermediate_size", "moe_layer_freq")  # what dense LLaDA configs never have


def is_llada_moe(model_type, config: dict | None) -> bool:
    """Whether a config is LLaDA-MoE's: model_type lladamoe, or llada with expert fields."""
    if model_type == "lladamoe":
        return True
    return model_type == "llada" and any((config or {}).get(f) not in (None, 0, -1, []) for f in EXPERT_FIELDS)


def model_config(config: dict) -> LLaDAMoEConfig:
    """The architecture's config for a checkpoint's config.json (either model_type)."""
    return LLaDAMoEConfig(**{k: v for k, v in config.items() if k != "model_type"})


@dataclass(frozen=True)
class LLaDAMoEFamily(LingFamily):
    embedding_weight: ClassVar[str] = "model.embed_tokens.weight"

    def model_loader(self):
        """The class itself: the released config's model_type "llada" would make the Auto classes build dense LLaDA."""
        self.register()
        return LLaDAMoEModelLM

    def tokenizer_options(self, source: str) -> dict:
        """Its own config: AutoTokenizer would otherwise read config.json through AutoConfig, which builds dense
        LLaDA's config from the released model_type "llada" once that family is registered (and fails)."""
        return {"config": LLaDAMoEConfig.from_pretrained(source)}

    def architecture_config(self, config: dict) -> LLaDAMoEConfig:
        return model_config(config)

    def layer_tensors(self, cfg: LLaDAMoEConfig, n: int, p: str, dt: str, table: dict, mlp) -> None:
        h, hd, heads, kv = cfg.hidden_size, cfg.head_width, cfg.num_attention_heads, cfg.num_key_value_heads
        for proj, rows in (("q_proj", heads * hd), ("k_proj", kv * hd), ("v_proj", kv * hd), ("o_proj", h)):
            table[f"{p}.self_attn.{proj}.weight"] = (dt, (rows, heads * hd if proj == "o_proj" else h))
            if cfg.attention_bias:
                table[f"{p}.self_attn.{proj}.bias"] = (dt, (rows,))
        if cfg.qk_layernorm:
            table[f"{p}.self_attn.q_norm.weight"] = table[f"{p}.self_attn.k_norm.weight"] = (dt, (hd,))
        if not cfg.is_moe_layer(n):
            mlp(f"{p}.mlp", int(cfg.dense_intermediate_size))
            return
        table[f"{p}.mlp.gate.weight"] = (dt, (cfg.num_experts, h))
        if cfg.moe_router_enable_expert_bias:
            table[f"{p}.mlp.expert_bias"] = ("F32", (cfg.num_experts,))
        for e in range(cfg.num_experts):
            mlp(f"{p}.mlp.experts.{e}", int(cfg.expert_intermediate_size))
        if cfg.shared_expert_intermediate_size:
            mlp(f"{p}.shared_expert", int(cfg.shared_expert_intermediate_size))


LLADA_MOE = LLaDAMoEFamily(
    name="llada-moe",
    model_types=("lladamoe",),  # and "llada" with expert fields: family_for tells them apart
    auto_class="AutoModel",
    trust_remote_code=False,
    mask_token_id=156895,
    eos_token_ids=(156892,),
    shift_logits=False,
    hub_examples=("inclusionAI/LLaDA-MoE-7B-A1B-Instruct", "inclusionAI/LLaDA-MoE-7B-A1B-Base"),
    native_module="tie_lite.models.llada_moe",
    recipe=LLADA_RECIPE,
    recipe_source="the model card's call of LLaDA's generate(): steps=128, gen_length=128, block_length=32, "
                  "temperature=0, remasking='low_confidence'",
    fallback_chat_template=CHAT_TEMPLATE,
)
