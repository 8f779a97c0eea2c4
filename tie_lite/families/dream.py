"""Dream (Dream-org/Dream-v0-Instruct-7B; DreamCoder, DiffuCoder): shifted logits, Qwen chat template."""

from .base import Family

DREAM = Family(
    name="dream",
    model_types=("Dream", "dream"),
    auto_class="AutoModel",
    trust_remote_code=True,
    mask_token_id=151666,
    eos_token_ids=(151643, 151645),  # <|endoftext|> (also pad), <|im_end|>
    shift_logits=True,  # the prediction for position i is the output at i-1
    hub_examples=("Dream-org/Dream-v0-Instruct-7B", "apple/DiffuCoder-7B-Instruct"),
)
