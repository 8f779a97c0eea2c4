"""DiffusionGemma (transformers' own `DiffusionGemmaForBlockDiffusion`): one denoising forward at a time.

transformers ships the model and its `generate()`, which runs every canvas to the end in one call. TIE needs
to stop after any step and read the per-position distributions, so this module exposes the two forwards
`generate()` makes, built from the same pieces it uses (its cache, its encoder inputs and masks, its
decoder mask, the model's own forward):

- the encoder forward that appends tokens (the prompt, then each finished canvas) to the KV cache, and
- the decoder forward over a canvas that reads that cache (it never writes to it), with the previous
  step's logits as self-conditioning.

Everything random (the noise canvas, the sampled tokens, the re-noising) is the engine's (engine/uniform.py),
so the model code here is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class EncodedContext:
    """The encoder's KV cache over the first `length` tokens of a sequence (prompt and finished canvases)."""

    cache: object
    length: int


def resolved_generation_config(model):
    """The generation config `generate()` would run with when given no overrides: the checkpoint's
    generation_config.json over transformers' global defaults."""
    config, _ = model._prepare_generation_config(None)
    return config


@torch.no_grad()
def encode(model, generation_config, sequence: torch.Tensor, context: EncodedContext | None,
           max_length: int) -> EncodedContext:
    """`context` extended over `sequence` (1, n): the tokens past `context.length` go through the encoder, as
    generate() prefills the prompt and then encodes each finished canvas. No context: a fresh cache of the kind
    generate() makes (the generation config's `cache_implementation`; a static one holds `max_length`)."""
    total = sequence.shape[1]
    if context is None:
        cache = model._prepare_cache_for_generation(generation_config, batch_size=1, max_length=max_length)
        context = EncodedContext(cache, 0)
    if context.length == total:
        return context
    new = sequence[:, context.length :]
    attention_mask = torch.ones((1, total), dtype=torch.bool, device=sequence.device)
    positions = torch.arange(context.length, total, dtype=torch.int32, device=sequence.device).unsqueeze(0)
    # is_prefill=True: the inputs are exactly the uncached tokens (generate() slices its last canvas itself)
    inputs, masks = model._prepare_encoder_inputs(input_ids=new, attention_mask=attention_mask,
                                                  encoder_position_ids=positions, cache=context.cache, is_prefill=True,
                                                  canvas_length=model.config.canvas_length, batch_size=1)
    out = model.model.encoder(input_ids=inputs, attention_mask=masks, cache=context.cache, position_ids=positions)
    return EncodedContext(out.cache, total)


@torch.no_grad()
def denoiser_logits(model, context: EncodedContext, canvas: torch.Tensor,
                    self_conditioning: torch.Tensor | None) -> torch.Tensor:
    """float32 logits (1, canvas_length, vocab) of the decoder over `canvas` (1, canvas_length), after the
    `context.length` encoded tokens; `self_conditioning`: the previous step's processed logits (None at a
    canvas's first step), cast as generate() casts them, to the embeddings' dtype."""
    length = canvas.shape[1]
    device = canvas.device
    attention_mask = torch.ones((1, context.length + length), dtype=torch.bool, device=device)
    masks = model.model.decoder.create_diffusion_decoder_attention_mask(
        config=model.config, inputs_embeds=canvas.unsqueeze(-1), cache=context.cache,
        decoder_attention_mask=attention_mask)
    positions = torch.arange(context.length, context.length + length, dtype=torch.int32, device=device).unsqueeze(0)
    if self_conditioning is not None:
        self_conditioning = self_conditioning.to(device=device, dtype=model.model.decoder.embed_tokens.weight.dtype)
    out = model(decoder_input_ids=canvas, self_conditioning_logits=self_conditioning, decoder_attention_mask=masks,
                cache=context.cache, decoder_position_ids=positions)
    return out.logits.float()
