"""Fast-dLLM v2 (Efficient-Large-Model/Fast_dLLM_v2_7B, NVlabs): Qwen2.5-7B-Instruct converted to block diffusion;
Qwen2.5's tokenizer and chat template, |<MASK>| 151665, a response ends at <|im_end|> 151645.

The layers are transformers' own Qwen2 modules (tie_lite/models/fast_dllm_v2.py), so no remote code runs.
Attention is block-causal with blocks of the config's `bd_size` (32) numbered from position 0 of the sequence;
the logits keep the autoregressive shift (the output at i predicts i + 1). Its sampler is `--unmask fast_dllm_v2`:
a block's first position alone (its authors decode it autoregressively from the previous block's last output),
then sub-blocks of 8 left to right, every position above the threshold and at least one a step.
"""

from __future__ import annotations

from .base import Family

# The model card's generate() call: 512 new tokens, blocks of bd_size (32), sub-blocks of 8, threshold 0.9,
# greedy; its generate() ends the response at <|im_end|>. No answer marker.
FAST_DLLM_V2_RECIPE = (("gen_length", 512), ("unmask", "fast_dllm_v2"), ("sub_block", 8), ("threshold", 0.9),
                       ("temperature", 0.0), ("answer_length", None), ("stop_at_eos", True))

FAST_DLLM_V2 = Family(
    name="fast-dllm-v2",
    model_types=("Fast_dLLM_Qwen",),
    auto_class="AutoModelForCausalLM",
    trust_remote_code=False,
    mask_token_id=151665,
    eos_token_ids=(151645,),  # <|im_end|>: its generate()'s stop_token
    shift_logits=True,  # the prediction for position i is the output at i - 1
    hub_examples=("Efficient-Large-Model/Fast_dLLM_v2_7B",),
    native_module="tie_lite.models.fast_dllm_v2",
    block_causal=True,
    recipe=FAST_DLLM_V2_RECIPE,
    block_field=("bd_size", 32),
    recipe_source="the model card's generate(max_new_tokens=512, block_size=32, small_block_size=8, threshold=0.9), "
                  "greedy",
)
