"""DiffusionGemma (google/diffusiongemma-26B-A4B-it): uniform-noise block diffusion, in transformers itself.

No mask token: a canvas of `canvas_length` positions starts as random tokens and the entropy-bound sampler
accepts positions and re-noises the rest (engine/uniform.py). The model is transformers' own
`DiffusionGemmaForBlockDiffusion` (no remote code); the sampler's settings come from the checkpoint's
generation_config.json, which is therefore required. The prompt is the tokenizer's own (Gemma) chat template.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from transformers.utils import cached_file

from ..errors import UserError
from .base import Family

NO_MASK = -1  # uniform noise has no mask token; nothing compares a canvas id with this


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
        canvas = config.get("canvas_length", 256)
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


DIFFUSION_GEMMA = DiffusionGemmaFamily(
    name="diffusion-gemma",
    model_types=("diffusion_gemma",),
    auto_class="DiffusionGemmaForBlockDiffusion",
    trust_remote_code=False,
    shift_logits=False,
    hub_examples=("google/diffusiongemma-26B-A4B-it",),
    uniform_noise=True,
)
