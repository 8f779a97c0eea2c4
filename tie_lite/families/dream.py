"""Dream (Dream-org/Dream-v0-Instruct-7B; DreamCoder, DiffuCoder): shifted logits, Qwen chat template.

The architecture is the project's own (tie_lite/models/dream.py), so no remote code runs. The hub
tokenizer is remote code too (`DreamTokenizer` in tokenization_dream.py): Qwen2's byte-level BPE over
vocab.json + merges.txt. It is loaded here as transformers' own Qwen2Tokenizer from the same files (or from
tokenizer.json when a checkpoint ships one), with the special tokens and chat template of its
tokenizer_config.json.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerFast, Qwen2Tokenizer
from transformers.models.auto.tokenization_auto import get_tokenizer_config
from transformers.utils import cached_file

from .base import Family, tokenizer_errors

DREAM_TOKENIZER_CLASSES = ("DreamTokenizer", "DreamTokenizerFast")


def _tokenizer_config(source: str) -> dict:
    try:
        return get_tokenizer_config(source) or {}
    except Exception:  # no tokenizer_config.json: let the plain loader say what is missing
        return {}


def _has_file(source: str, name: str) -> bool:
    try:
        return cached_file(source, name, _raise_exceptions_for_missing_entries=False) is not None
    except Exception:
        return False


@dataclass(frozen=True)
class DreamFamily(Family):
    def load_tokenizer(self, source: str, trust_remote_code: bool = False):
        """Dream's hub tokenizer without its remote code; any other tokenizer class as the base family loads it."""
        config = _tokenizer_config(source)
        if config.get("tokenizer_class") not in DREAM_TOKENIZER_CLASSES:
            return super().load_tokenizer(source, trust_remote_code=trust_remote_code)
        with tokenizer_errors(source):  # a missing or damaged vocab.json, merges.txt, ...: one line naming it
            if _has_file(source, "tokenizer.json"):
                tokenizer = PreTrainedTokenizerFast.from_pretrained(source)
            else:
                tokenizer = Qwen2Tokenizer.from_pretrained(source)
        _check_added_ids(tokenizer, config)
        return tokenizer


def _check_added_ids(tokenizer, config: dict) -> None:
    """Every added token of tokenizer_config.json at its own id (the mask and EOS ids are facts of the family)."""
    for index, entry in (config.get("added_tokens_decoder") or {}).items():
        content = entry.get("content") if isinstance(entry, dict) else None
        if content is not None and tokenizer.convert_tokens_to_ids(content) != int(index):
            raise ValueError(
                f"Dream tokenizer puts {content} at id {tokenizer.convert_tokens_to_ids(content)}, but its "
                f"tokenizer_config.json says {index} (vocab.json and the added tokens do not line up)"
            )


# The Dream README's diffusion_generate() call (max_new_tokens=512, steps=512, alg="entropy", eps 1e-3), greedy:
# its temperature 0.2 with top_p 0.95 is nucleus sampling, which tie-lite does not implement. No answer marker.
DREAM_RECIPE = (("gen_length", 512), ("schedule", "dream"), ("unmask", "entropy"), ("eps", 1e-3), ("temperature", 0.0),
                ("answer_length", None))

DREAM = DreamFamily(
    name="dream",
    model_types=("Dream", "dream"),
    auto_class="AutoModel",
    trust_remote_code=False,
    mask_token_id=151666,
    eos_token_ids=(151643, 151645),  # <|endoftext|> (also pad), <|im_end|>
    shift_logits=True,  # the prediction for position i is the output at i-1
    hub_examples=("Dream-org/Dream-v0-Instruct-7B", "apple/DiffuCoder-7B-Instruct"),
    native_module="tie_lite.models.dream",
    recipe=DREAM_RECIPE,
    recipe_source="the README's diffusion_generate(max_new_tokens=512, steps=512, alg='entropy'), greedy (its "
                  "temperature 0.2, top_p 0.95 sampling is not implemented)",
)
