"""LLaDA2.x (inclusionAI/LLaDA2.0-mini, LLaDA2.0-flash, LLaDA2.1-mini, LLaDA2.1-flash): mixture of experts,
block diffusion, no logit shift, Ling's role-tag chat template.

The architecture is the project's own (tie_lite/models/llada2_moe.py), so no remote code runs. Attention is
block-causal: the member is given the canvas's block size and where its blocks start with every forward.
Special ids are the hub tokenizer's: <|mask|> 156895, <|endoftext|> 156892 (also pad); a turn ends with
<|role_end|>, read from the tokenizer. Decoding defaults are the authors' generate(): blocks of 32, LLaDA2's
threshold decoding (`--unmask llada2`) at 0.95; LLaDA2.1 adds token editing (`--edit-threshold`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from tie_lite.errors import UserError
from tie_lite.models.llada2_moe import LLaDA2MoeConfig

from .base import Family, checkpoint_file, generation_recipe

# The prompt the authors' examples and the serving engines that run LLaDA2 build (sglang, dInfer): a system turn
# saying "detailed thinking off" unless one is given, then the turns, then the assistant's tag. Used when a
# checkpoint's tokenizer carries no chat template of its own.
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<role>SYSTEM</role>detailed thinking off<|role_end|>{% endif %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}<role>SYSTEM</role>{{ m['content'] }}<|role_end|>"
    "{% elif m['role'] == 'user' %}<role>HUMAN</role>{{ m['content'] }}<|role_end|>"
    "{% else %}<role>ASSISTANT</role>{{ m['content'] }}<|role_end|>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<role>ASSISTANT</role>{% endif %}"
)
ROLE_END = "<|role_end|>"


@dataclass(frozen=True)
class LingFamily(Family):
    """What the inclusionAI MoE families (LLaDA2.x, LLaDA-MoE) share: Ling's tokenizer (<|mask|> 156895,
    <|endoftext|> 156892, role tags ending a turn with <|role_end|>) and the routed experts' weight names
    (`model.layers.N.mlp.experts.E.*`, counted by `num_experts` / `num_experts_per_tok`)."""

    fallback_chat_template: str = CHAT_TEMPLATE  # when a checkpoint's tokenizer carries no template of its own
    embedding_weight: ClassVar[str] = "model.word_embeddings.weight"  # the input embedding's hub name

    def load_tokenizer(self, source: str, trust_remote_code: bool = False):
        tokenizer = super().load_tokenizer(source, trust_remote_code=trust_remote_code)
        if not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = self.fallback_chat_template
        return tokenizer

    def eos_ids(self, tokenizer) -> tuple[int, ...]:
        """<|endoftext|>, and <|role_end|> where the tokenizer has it (a turn's end ends a response too)."""
        role_end = tokenizer.convert_tokens_to_ids(ROLE_END) if ROLE_END in tokenizer.get_vocab() else None
        return self.eos_token_ids + ((role_end,) if role_end is not None else ())

    def routed_experts(self, config: dict) -> tuple[int, int] | None:
        if not config.get("num_experts"):
            return None
        return int(config.get("num_experts_per_tok", 8)), int(config["num_experts"])

    def is_routed_expert(self, tensor_name: str) -> bool:
        return ROUTED_EXPERT.search(tensor_name) is not None

    def architecture_config(self, config: dict):
        """The architecture's config for a checkpoint's config.json; ValueError or TypeError where it is none."""
        raise NotImplementedError

    def layer_tensors(self, cfg, n: int, prefix: str, dt: str, table: dict, mlp) -> None:
        """Adds layer n's attention and MLP weights to `table`; `mlp(prefix, width)` adds a SwiGLU's three."""
        raise NotImplementedError

    def config_tensors(self, config: dict) -> dict | None:
        """The architecture's weight table for this config, written out from the layout (instantiating 16B
        parameters even on the meta device takes half a minute); a test checks it against the model's own."""
        try:
            cfg = self.architecture_config(config)
        except (ValueError, TypeError):
            return None
        dt = {"float32": "F32", "float16": "F16"}.get(str(config.get("dtype", config.get("torch_dtype"))), "BF16")
        h, v = cfg.hidden_size, cfg.vocab_size
        table = {self.embedding_weight: (dt, (v, h)), "model.norm.weight": (dt, (h,))}
        if not cfg.tie_word_embeddings:
            table["lm_head.weight"] = (dt, (v, h))

        def mlp(prefix: str, width: int) -> None:
            table.update({f"{prefix}.gate_proj.weight": (dt, (width, h)), f"{prefix}.up_proj.weight": (dt, (width, h)),
                          f"{prefix}.down_proj.weight": (dt, (h, width))})

        for n in range(cfg.num_hidden_layers):
            p = f"model.layers.{n}"
            table[f"{p}.input_layernorm.weight"] = table[f"{p}.post_attention_layernorm.weight"] = (dt, (h,))
            self.layer_tensors(cfg, n, p, dt, table, mlp)
        return table

    def check_checkpoint(self, config: dict, source: str, tensors, name: str) -> None:
        """The config's router and sizes are ones the architecture implements, and every MoE layer's weights
        hold exactly the experts the config names."""
        try:
            cfg = self.architecture_config(config)
        except (ValueError, TypeError) as exc:
            raise UserError(f"model '{name}': {str(exc).splitlines()[0]}") from None
        if cfg.num_experts is None:  # dense: no expert weights to count
            return
        table = tensors()
        if table is not None:
            check_experts(cfg, table, name)


@dataclass(frozen=True)
class LLaDA2Family(LingFamily):

    def checkpoint_recipe(self, source: str, config=None) -> dict:
        """LLaDA2.1's folder has LLaDA2.0's config.json; its modeling file's generate() edits tokens: where the
        checkpoint's modeling file has `editing_threshold`, the recipe edits with that file's own defaults."""
        recipe = super().checkpoint_recipe(source, config)
        path = checkpoint_file(source, MODELING_FILE)
        try:
            code = path.read_text(errors="replace") if path is not None else ""
        except OSError:
            code = ""
        if "editing_threshold" in code:
            editing = dict(LLADA21_EDITING)
            for key, field_name, kind in (("editing_threshold", "edit_threshold", float),
                                          ("max_post_steps", "edit_steps", int)):
                found = re.search(rf"\b{key}\s*:\s*\w+\s*=\s*([0-9.]+)", code)
                if found:
                    editing[field_name] = kind(found.group(1))
            generation = generation_recipe(source)  # the checkpoint's generation_config.json still has the last word
            recipe |= {k: v for k, v in editing.items() if k not in generation}
        return recipe

    def architecture_config(self, config: dict) -> LLaDA2MoeConfig:
        return LLaDA2MoeConfig(**{k: v for k, v in config.items() if k != "model_type"})

    def layer_tensors(self, cfg: LLaDA2MoeConfig, n: int, p: str, dt: str, table: dict, mlp) -> None:
        h, hd, heads, kv = cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
        table[f"{p}.attention.query_key_value.weight"] = (dt, ((heads + 2 * kv) * hd, h))
        if cfg.use_qkv_bias:
            table[f"{p}.attention.query_key_value.bias"] = (dt, ((heads + 2 * kv) * hd,))
        if cfg.use_qk_norm:
            table[f"{p}.attention.query_layernorm.weight"] = table[f"{p}.attention.key_layernorm.weight"] = (dt, (hd,))
        table[f"{p}.attention.dense.weight"] = (dt, (h, heads * hd))
        if cfg.use_bias:
            table[f"{p}.attention.dense.bias"] = (dt, (h,))
        if not cfg.is_moe_layer(n):
            mlp(f"{p}.mlp", int(cfg.intermediate_size))
            return
        experts, width = int(cfg.num_experts), int(cfg.moe_intermediate_size)
        table[f"{p}.mlp.gate.weight"] = (dt, (experts, h))
        table[f"{p}.mlp.gate.expert_bias"] = ("F32", (experts,))
        for e in range(experts):
            mlp(f"{p}.mlp.experts.{e}", width)
        if cfg.num_shared_experts:
            mlp(f"{p}.mlp.shared_experts", width * int(cfg.num_shared_experts))


ROUTED_EXPERT = re.compile(r"\.mlp\.experts\.\d+\.")  # a routed expert's weight (never the shared experts)
_EXPERT = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
EXPERT_PARTS = 3  # gate_proj, up_proj, down_proj


def check_experts(cfg, tensors: dict, name: str) -> None:
    """One line when the weights disagree with the config's expert count, or some shard lacks experts. `cfg` is
    a config with num_experts, num_hidden_layers and is_moe_layer(i) (LLaDA2's or LLaDA-MoE's: both name the
    router `model.layers.N.mlp.gate` and the experts `model.layers.N.mlp.experts.E.*`)."""
    parts: dict[tuple[int, int], set[str]] = {}
    for key in tensors:
        m = _EXPERT.match(key)
        if m:
            parts.setdefault((int(m.group(1)), int(m.group(2))), set()).add(m.group(3))
    found: dict[int, set[int]] = {}  # per layer: the experts with any weight
    complete: dict[int, set[int]] = {}  # per layer: the experts with all three
    for (layer, expert), held in parts.items():
        found.setdefault(layer, set()).add(expert)
        if len(held) == EXPERT_PARTS:
            complete.setdefault(layer, set()).add(expert)
    experts = int(cfg.num_experts)
    for layer in range(cfg.num_hidden_layers):
        if not cfg.is_moe_layer(layer):
            continue
        gate = tensors.get(f"model.layers.{layer}.mlp.gate.weight")
        held = found.get(layer, set())
        rows = gate[1][0] if gate is not None else None
        if (rows is not None and rows != experts) or (held and max(held) >= experts):
            count = rows if rows is not None and rows != experts else max(held) + 1
            raise UserError(f"model '{name}': config.json says num_experts {experts}, but the weights of layer "
                            f"{layer} hold {count}; the config and the weights are from different checkpoints")
        missing = sorted(set(range(experts)) - complete.get(layer, set()))
        if missing:
            shown = ", ".join(map(str, missing[:6])) + (" ..." if len(missing) > 6 else "")
            raise UserError(f"model '{name}': the weight files hold no weights for {len(missing)} of the {experts} "
                            f"experts of layer {layer} (experts {shown}); a shard is missing or incomplete, "
                            f"re-download the checkpoint")


# The authors' LLaDA2.0 generate(): blocks of 32 numbered from the sequence start, 32 steps a block, every position
# above 0.95 (at least the step's share), greedy, 2048 new tokens, no answer marker. LLaDA2.1's adds token editing.
LLADA20_RECIPE = (("gen_length", 2048), ("block_size", 32), ("unmask", "llada2"), ("threshold", 0.95),
                  ("temperature", 0.0), ("answer_length", None))
LLADA21_EDITING = {"edit_threshold": 0.9, "edit_steps": 16}  # generate()'s editing_threshold and max_post_steps
MODELING_FILE = "modeling_llada2_moe.py"


LLADA2 = LLaDA2Family(
    name="llada2",
    model_types=("llada2_moe",),
    auto_class="AutoModel",
    trust_remote_code=False,
    mask_token_id=156895,
    eos_token_ids=(156892,),
    shift_logits=False,
    hub_examples=("inclusionAI/LLaDA2.0-mini", "inclusionAI/LLaDA2.1-mini", "inclusionAI/LLaDA2.0-flash"),
    native_module="tie_lite.models.llada2_moe",
    block_causal=True,
    recipe=LLADA20_RECIPE,
    recipe_source="the authors' generate() defaults (modeling_llada2_moe.py); a LLaDA2.1 folder, told apart by its "
                  "modeling file, adds token editing above 0.9, at most 16 passes",
)
