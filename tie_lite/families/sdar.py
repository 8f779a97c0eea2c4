"""SDAR (JetAstra/SDAR-1.7B/4B/8B-Chat, SDAR-30B-A3B-Chat) and TraDo (Gen-Verse/TraDo-4B/8B-Instruct, SDAR's
architecture): Qwen3 converted to block diffusion; no logit shift, Qwen3's chat template and tokenizer.

The layers are transformers' own Qwen3 / Qwen3-MoE modules (tie_lite/models/sdar.py), so no remote code runs.
Attention is block-causal, blocks numbered from position 0 of the sequence; the block size is the checkpoint's
`block_size` (4 as released; the MoE config names none, and its authors' code uses 4). <|MASK|> is 151669 (the
MoE config names no `mask_token_id` either); a response ends at <|im_end|> 151645 or <|endoftext|> 151643, the
generation config's stop ids.
"""

from __future__ import annotations

from .base import Family

MASK_ID = 151669
DEFAULT_BLOCK = 4  # the authors' generate.py and evaluation sampler, and the released configs that name one
# The authors' evaluation (evaluation/opencompass/configs/eval_sdar_hf.py with huggingface_bd3.py's sampler): 4096
# new tokens in blocks of the checkpoint's size, one step a token, every position above 0.95 (at least the step's
# share; their other setting, 1.0, is one token a step), greedy (top_k 1), stopping after the block where an
# end-of-text appears; no answer marker.
SDAR_RECIPE = (("gen_length", 4096), ("unmask", "llada2"), ("threshold", 0.95), ("temperature", 0.0),
               ("answer_length", None), ("stop_at_eos", True))


class SDARFamily(Family):
    def routed_experts(self, config: dict) -> tuple[int, int] | None:
        if not config.get("num_experts"):
            return None
        return int(config.get("num_experts_per_tok", 8)), int(config["num_experts"])

    def is_routed_expert(self, tensor_name: str) -> bool:
        """A routed expert's weight: the hub's per-expert tensors, or transformers' fused ones once loaded."""
        return ".mlp.experts." in tensor_name

    def quantized_weight(self, tensor_name: str, shape: tuple[int, ...]) -> bool | None:
        """bitsandbytes quantizes linear layers; transformers' Qwen3-MoE keeps its experts as fused parameters,
        which stay in the compute dtype."""
        return False if self.is_routed_expert(tensor_name) else None

    def config_tensors(self, config: dict) -> dict | None:
        """The hub checkpoint's weights (Qwen3's names; per-expert tensors for the MoE) from config.json alone."""
        try:
            h, v, layers = int(config["hidden_size"]), int(config["vocab_size"]), int(config["num_hidden_layers"])
            heads, kv = int(config["num_attention_heads"]), int(config.get("num_key_value_heads", config["num_attention_heads"]))
            hd = int(config.get("head_dim") or h // heads)
            experts = int(config.get("num_experts") or 0)
            width = int(config["moe_intermediate_size"] if experts else config["intermediate_size"])
        except (KeyError, TypeError, ValueError):
            return None
        dt = {"float32": "F32", "float16": "F16"}.get(str(config.get("torch_dtype", config.get("dtype"))), "BF16")
        table = {"model.embed_tokens.weight": (dt, (v, h)), "model.norm.weight": (dt, (h,))}
        if not config.get("tie_word_embeddings", False):
            table["lm_head.weight"] = (dt, (v, h))
        for n in range(layers):
            p = f"model.layers.{n}"
            table[f"{p}.input_layernorm.weight"] = table[f"{p}.post_attention_layernorm.weight"] = (dt, (h,))
            for proj, shape in (("q_proj", (heads * hd, h)), ("k_proj", (kv * hd, h)), ("v_proj", (kv * hd, h)),
                                ("o_proj", (h, heads * hd))):
                table[f"{p}.self_attn.{proj}.weight"] = (dt, shape)
            table[f"{p}.self_attn.q_norm.weight"] = table[f"{p}.self_attn.k_norm.weight"] = (dt, (hd,))
            mlps = [f"{p}.mlp.experts.{e}" for e in range(experts)] if experts else [f"{p}.mlp"]
            if experts:
                table[f"{p}.mlp.gate.weight"] = (dt, (experts, h))
            for m in mlps:
                table.update({f"{m}.gate_proj.weight": (dt, (width, h)), f"{m}.up_proj.weight": (dt, (width, h)),
                              f"{m}.down_proj.weight": (dt, (h, width))})
        return table


SDAR = SDARFamily(
    name="sdar",
    model_types=("sdar", "sdar_moe"),
    auto_class="AutoModelForCausalLM",
    trust_remote_code=False,
    mask_token_id=MASK_ID,
    eos_token_ids=(151645, 151643),  # <|im_end|>, <|endoftext|>: generation_config.json's stop ids
    shift_logits=False,
    hub_examples=("JetLM/SDAR-1.7B-Chat", "JetLM/SDAR-4B-Chat", "JetLM/SDAR-30B-A3B-Chat", "Gen-Verse/TraDo-4B-Instruct"),
    native_module="tie_lite.models.sdar",
    block_causal=True,
    recipe=SDAR_RECIPE,
    block_field=("block_size", DEFAULT_BLOCK),
    recipe_source="the authors' evaluation (eval_sdar_hf.py, huggingface_bd3.py's sampler: 4096 tokens in blocks of "
                  "the checkpoint's block_size, threshold 0.95, greedy, stop after the block with an end-of-text); "
                  "generate.py's greedy top_k=1 makes every confidence 1.0 and commits whole blocks at once",
)
