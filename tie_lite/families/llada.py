"""LLaDA (GSAI-ML/LLaDA-8B-Instruct, LLaDA-1.5): no logit shift, Llama-style chat template.

The architecture is the project's own (tie_lite/models/llada.py), so no remote code runs; the hub tokenizer
is a plain PreTrainedTokenizerFast (tokenizer.json), which the base family loads.
"""

from .base import Family

# generate.py's main() call, as LLaDA's README and chat.py use it: 128 new tokens in blocks of 32, one token a
# step, low-confidence remasking, greedy; its generate() has no answer marker
LLADA_RECIPE = (("gen_length", 128), ("block_size", 32), ("unmask", "low_confidence"), ("temperature", 0.0),
                ("answer_length", None))

LLADA = Family(
    name="llada",
    model_types=("llada",),
    auto_class="AutoModel",
    trust_remote_code=False,
    mask_token_id=126336,
    eos_token_ids=(126081, 126348),  # <|endoftext|> (also pad), <|eot_id|>
    shift_logits=False,
    hub_examples=("GSAI-ML/LLaDA-8B-Instruct", "GSAI-ML/LLaDA-1.5"),
    native_module="tie_lite.models.llada",
    recipe=LLADA_RECIPE,
    recipe_source="generate.py's main(): generate(steps=128, gen_length=128, block_length=32, temperature=0, "
                  "remasking='low_confidence')",
)
