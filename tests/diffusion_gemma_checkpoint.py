"""Tiny DiffusionGemma checkpoints in the released model's shape (tests/fixtures/diffusion_gemma/config.json):
the real vocabulary of 262,144 ids with Gemma's special ids, few layers (one sliding, one full attention),
few experts, a small width, a small canvas, the released generation config with fewer denoising steps, and
a character-level tokenizer built to match (special tokens at their real ids, a Gemma-style chat template)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "diffusion_gemma"

# Gemma's special ids (pad 0, eos 1, bos 2, unk 3; a turn starts at 105 and ends at 106)
SPECIALS = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<start_of_turn>": 105, "<end_of_turn>": 106}
FIRST_CHARACTER = 1000  # printable ASCII and the line break from here: every text spells out exactly, and decodes back to itself
CHARACTERS = [chr(k) for k in range(32, 127)] + ["\n"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def tokenizer(vocab_size: int):
    from transformers import PreTrainedTokenizerFast

    tokens = [f"tok{i}" for i in range(vocab_size)]
    for token, idx in SPECIALS.items():
        tokens[idx] = token
    for k, char in enumerate(CHARACTERS):
        tokens[FIRST_CHARACTER + k] = char
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>",
                                   bos_token="<bos>")
    fast.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_diffusion_gemma(root: Path, name: str = "tiny-diffusion-gemma", *, canvas_length: int = 16,
                          steps: int = 6, seed: int = 0, max_positions: int = 512,
                          generation_config: bool = True, sharp: float = 40.0,
                          confidence_threshold: float | None = None, stability_threshold: int | None = None,
                          hidden: int = 32) -> Path:
    """A tiny random DiffusionGemma folder. `sharp` scales the embeddings (tied to the output head) so that its
    predictions are peaked enough for the entropy-bound sampler to accept several positions a step and for
    an end-of-text to come early, as a trained model's do. `confidence_threshold` replaces the released one
    (0.005), e.g. to let the adaptive stopping rule end canvases before the last step. `hidden`: the width (64 or
    more for bitsandbytes' 4-bit CPU kernel, which packs rows in blocks of 64)."""
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
        DiffusionGemmaGenerationConfig,
        EntropyBoundSamplerConfig,
    )

    released = json.loads((FIXTURE / "config.json").read_text())
    text = dict(released["text_config"])
    text.update(hidden_size=hidden, intermediate_size=hidden, moe_intermediate_size=hidden // 2, num_experts=4, top_k_experts=2,
                num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, num_global_key_value_heads=1,
                head_dim=16, global_head_dim=32, sliding_window=8, max_position_embeddings=max_positions,
                layer_types=["sliding_attention", "full_attention"])
    vision = {"model_type": "gemma4_vision", "hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 1,
              "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 8, "global_head_dim": 8}
    config = DiffusionGemmaConfig(text_config=text, vision_config=vision, canvas_length=canvas_length,
                                  boi_token_id=released["boi_token_id"], eoi_token_id=released["eoi_token_id"],
                                  image_token_id=released["image_token_id"], dtype="float32")
    torch.manual_seed(seed)
    model = DiffusionGemmaForBlockDiffusion(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Embedding) and module.weight.shape[0] == text["vocab_size"]:
                module.weight.mul_(sharp)
    gen = json.loads((FIXTURE / "generation_config.json").read_text())
    model.generation_config = DiffusionGemmaGenerationConfig(
        max_denoising_steps=steps, sampler_config=EntropyBoundSamplerConfig(gen["sampler_config"]["entropy_bound"]),
        t_min=gen["t_min"], t_max=gen["t_max"], stability_threshold=gen["stability_threshold"] if stability_threshold is None else stability_threshold,
        confidence_threshold=confidence_threshold or gen["confidence_threshold"], bos_token_id=gen["bos_token_id"],
        pad_token_id=gen["pad_token_id"], eos_token_id=gen["eos_token_id"])
    folder = Path(root) / name
    model.save_pretrained(folder)
    if not generation_config:
        (folder / "generation_config.json").unlink()
    tokenizer(text["vocab_size"]).save_pretrained(folder)
    return folder
