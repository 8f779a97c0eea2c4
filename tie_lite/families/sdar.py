"""SDAR (JetAstra/SDAR-1.7B/4B/8B-Chat, SDAR-30B-A3B-Chat) and TraDo (Gen-Verse/TraDo-4B/8B-Instruct, SDAR's
architecture): Qwen3 converted to block diffusion; no logit shift, Qwen3's chat template and tokenizer.

The layers are transformers' own Qwen3 / Qwen3-MoE modules (tie_lite/models/sdar.py), so no remote code runs.
Attention is block-causal, blocks numbered from position 0 of the sequence; the block size is the checkpoint's
`block_size` (4 as released; the MoE config names none, and its authors' code uses 4). <|MASK|> is 151669 (the
MoE config names no `mask_token_id` either); a response ends at <|im_end|> 151645 or <|endoftext|> 151643, the
generation config's stop ids.
"""

from __future__ import annotations

import json

from .base import Family, checkpoint_file

MASK_ID = 151669
DEFAULT_BLOCK = 4  # the authors' generate.py and evaluation sampler, and the released configs that name one
# The authors' evaluation sampler (opencompass huggingface_bd3.py, as their reported scores ran): blocks of the
# checkpoint's size, one step a token, every position above 0.95 (at least the step's share), greedy (top_k 1),
# stopping after the block where an end-of-text appears; no answer marker.
SDAR_RECIPE = (("gen_length", 2048), ("unmask", "llada2"), ("threshold", 0.95), ("temperature", 0.0),
               ("answer_length", None), ("stop_at_eos", True))


def block_size_of(source: str) -> int:
    """The checkpoint's `block_size` from its config.json (4 where it names none, as the MoE's does not)."""
    path = checkpoint_file(source, "config.json")
    try:
        value = json.loads(path.read_text()).get("block_size") if path is not None else None
    except (OSError, ValueError, AttributeError):
        value = None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else DEFAULT_BLOCK


class SDARFamily(Family):
    def checkpoint_recipe(self, source: str) -> dict:
        return {"block_size": block_size_of(source)} | super().checkpoint_recipe(source)


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
    recipe_source="the authors' evaluation sampler (huggingface_bd3.py: blocks of the checkpoint's block_size, "
                  "threshold 0.95, greedy, stop after the block with an end-of-text); generate.py's greedy top_k=1 "
                  "makes every confidence 1.0 and commits whole blocks at once",
)
