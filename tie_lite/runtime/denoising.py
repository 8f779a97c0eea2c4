"""Uniform-noise members (DiffusionGemma): their sampler settings, and the forwards they answer."""

from __future__ import annotations

from tie_lite.engine.process import Row
from tie_lite.engine.uniform import Denoise, DenoisingSettings
from tie_lite.models.diffusion_gemma import denoiser_logits, encode, resolved_generation_config


def _ids(value) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))


def denoising_settings(model) -> DenoisingSettings:
    """The sampler a DiffusionGemma checkpoint's own generate() runs: its generation_config.json over
    transformers' defaults, and the canvas and vocabulary of its config."""
    g = resolved_generation_config(model)
    eos = _ids(g.eos_token_id) or _ids(model.config.get_text_config().eos_token_id)
    return DenoisingSettings(
        canvas_length=int(model.config.canvas_length),
        vocab_size=int(model.config.get_text_config().vocab_size),
        max_denoising_steps=int(g.max_denoising_steps),
        entropy_bound=float(g.sampler_config.entropy_bound),
        t_min=g.t_min,
        t_max=g.t_max,
        stability_threshold=g.stability_threshold,
        confidence_threshold=g.confidence_threshold,
        eos_ids=eos,
        pad_id=g.pad_token_id,
    )


def denoise(model, request: Denoise) -> list[Row]:
    """Answer a Denoise request: encode what the context lacks, then one decoder forward over the canvas."""
    device = model.device
    generation = resolved_generation_config(model)
    context = encode(model, generation, request.sequence.to(device), request.context, request.max_length)
    logits = denoiser_logits(model, context, request.canvas.to(device), request.self_conditioning)
    return [Row(logits.cpu(), context)]
