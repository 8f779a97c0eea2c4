"""DiffusionGemma (google/diffusiongemma-26B-A4B-it): uniform-noise block diffusion, in transformers itself.

No mask token: a canvas of `canvas_length` positions starts as random tokens and the entropy-bound sampler
accepts positions and re-noises the rest (engine/uniform.py). The model is transformers' own
`DiffusionGemmaForBlockDiffusion` (no remote code); the sampler's settings come from the checkpoint's
generation_config.json, which is therefore required. The prompt is the tokenizer's own (Gemma) chat template.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion
from transformers.utils import cached_file

from ..errors import UserError
from .base import Family

NO_MASK = -1  # uniform noise has no mask token; nothing compares a canvas id with this
DEFAULT_CANVAS = 256  # DiffusionGemmaConfig's canvas_length when config.json gives none
# A routed expert's weights: each text layer's `experts` module holds all of them as two 3-D tensors
ROUTED_EXPERT = re.compile(r"\.layers\.\d+\.experts\.")
# What bitsandbytes quantizes when this model loads at 4 or 8 bits (transformers 5.25): it replaces nn.Linear
# layers only, so the experts' 3-D tensors keep their dtype, and it skips every tied weight
# (get_keys_to_not_convert); the encoder's text layers share all their weights with the decoder's, so the whole
# text stack, the embeddings and the head stay unquantized too. The linear layers of the vision tower, of the
# vision embedder and of the decoder's self-conditioning are what is left to quantize.
QUANTIZED_LINEAR = re.compile(r"\.(?:vision_tower|embed_vision|self_conditioning)\..*\.weight$")
_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def _has_generation_config(source: str) -> bool:
    path = Path(source)
    if path.is_dir():
        return (path / "generation_config.json").is_file()
    try:  # a hub id: the HF cache, or the hub when reachable
        return cached_file(source, "generation_config.json", _raise_exceptions_for_missing_entries=False) is not None
    except Exception:
        return True  # unreachable: let loading say what is missing


@dataclass(frozen=True)
class DiffusionGemmaFamily(Family):
    def mask_id(self, config) -> int:
        return NO_MASK

    def check_checkpoint(self, config: dict, source: str, tensors, name: str) -> None:
        """What tie-lite needs of a DiffusionGemma checkpoint beyond its sizes: a canvas the model has
        positions for, and the generation config its sampler reads."""
        text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
        canvas = config.get("canvas_length", DEFAULT_CANVAS)
        positions = text.get("max_position_embeddings", 131072)
        if isinstance(canvas, bool) or not isinstance(canvas, int) or canvas <= 0:
            raise UserError(f"model '{name}': config.json gives canvas_length {json.dumps(canvas)[:40]}, not a "
                            f"positive whole number; re-download or re-save the checkpoint")
        if isinstance(positions, int) and canvas > positions:
            raise UserError(f"model '{name}': its canvas_length {canvas} is longer than the model's "
                            f"{positions} positions (text_config.max_position_embeddings); fix config.json")
        if not _has_generation_config(source):
            raise UserError(f"model '{name}' has no generation_config.json, which holds DiffusionGemma's sampler "
                            f"settings (denoising steps, entropy bound, temperatures); copy it from the released "
                            f"checkpoint")


    def config_tensors(self, config: dict) -> dict | None:
        """The model's own weight table for this config: transformers' class built on the meta device (fused
        experts make that a tenth of a second), each shared weight once, as the loaded model holds it, and the
        buffers a checkpoint saves."""
        try:
            cfg = DiffusionGemmaConfig(**{k: v for k, v in config.items() if k != "model_type"})
            with torch.device("meta"):
                model = DiffusionGemmaForBlockDiffusion(cfg)
        except (ValueError, TypeError, KeyError):
            return None
        dt = _DTYPES.get(str(config.get("dtype", config.get("torch_dtype"))), "BF16")
        saved = model.state_dict(keep_vars=True)
        tensors = [*model.named_parameters(), *((n, b) for n, b in model.named_buffers() if n in saved)]
        return {name: (dt, tuple(t.shape)) for name, t in tensors}

    def routed_experts(self, config: dict) -> tuple[int, int] | None:
        text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
        if not text.get("num_experts"):
            return None
        return int(text.get("top_k_experts", 8)), int(text["num_experts"])

    def is_routed_expert(self, tensor_name: str) -> bool:
        return ROUTED_EXPERT.search(tensor_name) is not None

    def step_positions(self, config: dict) -> int | None:
        """The decoder computes the whole canvas at every denoising step."""
        return int(config.get("canvas_length", DEFAULT_CANVAS))

    def quantized_weight(self, tensor_name: str, shape: tuple[int, ...]) -> bool | None:
        return len(shape) == 2 and QUANTIZED_LINEAR.search(tensor_name) is not None


DIFFUSION_GEMMA = DiffusionGemmaFamily(
    name="diffusion-gemma",
    model_types=("diffusion_gemma",),
    auto_class="DiffusionGemmaForBlockDiffusion",
    trust_remote_code=False,
    shift_logits=False,
    hub_examples=("google/diffusiongemma-26B-A4B-it",),
    uniform_noise=True,
    recipe=(("answer_length", None),),  # and generation_config.json's max_new_tokens: its generate()'s length
    recipe_source="the checkpoint's own generate() (generation_config.json)",
)
