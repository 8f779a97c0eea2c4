"""Build small LLaDA- and Dream-style checkpoints the way their hub repos are laid out.

No machine here can download hub weights, so the family tests load these instead, through the same
`load_member` path a hub id takes. Each checkpoint reproduces its family's conventions:

- config.json with the family's `model_type`, its special ids and an `auto_map` pointing at remote
  code copied into the folder (tests/fixtures/modeling_tiny_*.py), so loading needs trust_remote_code;
- the full-size vocabulary (LLaDA 126464, Dream 152064 rows) so the mask/EOS ids are real ids, with a
  small hidden size (Dream 16: ~20 MB; LLaDA 64: ~66 MB, because bitsandbytes' 4-bit CPU kernel needs
  in_features to hold whole 64-blocks and out_features in multiples of 32, and the tests quantize LLaDA);
- a tokenizer whose vocabulary puts the family's special tokens at the family's ids, and the family's
  chat template (LLaDA: Llama-3 headers; Dream: Qwen ChatML);
- weights as model.safetensors, or (pickle variant) only pytorch_model.bin.

Words the templates and tests use sit at known ids (`WORD_IDS`), so a test can spell out the prompt ids
a template must produce without asking the tokenizer.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors

FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Ordinary words at fixed low ids (shared by both families' vocabularies); everything else is filler.
WORDS = ["<unk>", "user", "assistant", "system", "hi", "hello", "You", "are", "a", "helpful", ".", "Answer", ":",
         "?", "!", ",", "the", "is", "what", "+", "*", "=", "(", ")"] + [str(d) for d in range(10)]
WORD_IDS = {w: i for i, w in enumerate(WORDS)}

# GSAI-ML/LLaDA-8B-Instruct: tokenizer.json / config.json ids.
LLADA_SPECIALS = {
    "<|startoftext|>": 126080,
    "<|endoftext|>": 126081,
    "<|mdm_mask|>": 126336,
    "<|start_header_id|>": 126346,
    "<|end_header_id|>": 126347,
    "<|eot_id|>": 126348,
}
LLADA_VOCAB = 126464  # config vocab_size / embedding_size; the tokenizer covers ids 0..126348
LLADA_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Dream-org/Dream-v0-Instruct-7B (Qwen2.5 vocabulary plus <|beginoftext|> and <|mask|>).
DREAM_SPECIALS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|beginoftext|>": 151665,
    "<|mask|>": 151666,
}
DREAM_VOCAB = 152064  # config vocab_size; the tokenizer covers ids 0..151666
DREAM_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- else %}{{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    family: str
    mask_id: int
    eos_ids: tuple[int, ...]
    shifted: bool


def _fixture_module(name: str):
    """Import a fixture's remote-code module under a private name (never registered with the Auto classes)."""
    spec = importlib.util.spec_from_file_location(f"_tie_lite_fixture_{name}", FIXTURES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tokenizer(specials: dict[str, int], size: int, bos: str | None):
    """WordLevel tokenizer over `size` ids: WORDS first, the specials at their ids, fillers elsewhere."""
    from transformers import PreTrainedTokenizerFast

    tokens = [f"tok{i}" for i in range(size)]
    for token, idx in {**WORD_IDS, **specials}.items():
        tokens[idx] = token
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos is not None:  # Llama-3-style: encode() adds BOS unless add_special_tokens=False
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, specials[bos])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def _finish(folder: Path, module: str, auto_map: dict, tokenizer_auto_map: dict | None = None) -> None:
    """Copy the remote code in and point config.json (and tokenizer_config.json) at it."""
    shutil.copy(FIXTURES / f"{module}.py", folder / f"{module}.py")
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = auto_map
    config_path.write_text(json.dumps(config, indent=2))
    if tokenizer_auto_map:
        path = folder / "tokenizer_config.json"
        tok_config = json.loads(path.read_text())
        tok_config.update(tokenizer_auto_map)
        path.write_text(json.dumps(tok_config, indent=2))


def _save_pickle_variant(source: Path, model, target: Path) -> None:
    """The same checkpoint with its weights only as pytorch_model.bin (older hub repos look like this)."""
    target.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, target / f.name)
    torch.save(model.state_dict(), target / "pytorch_model.bin")


def build_llada(root: Path, *, seed: int = 0, pickle_copy: bool = False) -> dict[str, Checkpoint]:
    """tiny-llada (safetensors) and, with pickle_copy, tiny-llada-pickle (the same weights as .bin only)."""
    mod = _fixture_module("modeling_tiny_llada")
    torch.manual_seed(seed)
    config = mod.LLaDAConfig(architectures=["LLaDAModelLM"])
    model = mod.LLaDAModelLM(config).eval()
    folder = Path(root) / "tiny-llada"
    model.save_pretrained(folder)
    tokenizer = _tokenizer(LLADA_SPECIALS, max(LLADA_SPECIALS.values()) + 1, bos="<|startoftext|>")
    tokenizer.add_special_tokens({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                                  "pad_token": "<|endoftext|>", "mask_token": "<|mdm_mask|>",
                                  "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    tokenizer.chat_template = LLADA_TEMPLATE
    tokenizer.save_pretrained(folder)
    auto = {"AutoConfig": "modeling_tiny_llada.LLaDAConfig", "AutoModel": "modeling_tiny_llada.LLaDAModelLM",
            "AutoModelForCausalLM": "modeling_tiny_llada.LLaDAModelLM"}
    _finish(folder, "modeling_tiny_llada", auto)
    facts = dict(family="llada", mask_id=126336, eos_ids=(126081, 126348), shifted=False)
    out = {"llada": Checkpoint(folder, **facts)}
    if pickle_copy:
        target = Path(root) / "tiny-llada-pickle"
        _save_pickle_variant(folder, model, target)
        out["llada_pickle"] = Checkpoint(target, **facts)
    return out


def build_dream(root: Path, *, seed: int = 1) -> Checkpoint:
    mod = _fixture_module("modeling_tiny_dream")
    torch.manual_seed(seed)
    config = mod.DreamConfig(architectures=["DreamModel"])
    model = mod.DreamModel(config).eval()
    folder = Path(root) / "tiny-dream"
    model.save_pretrained(folder)
    tokenizer = _tokenizer(DREAM_SPECIALS, max(DREAM_SPECIALS.values()) + 1, bos=None)
    tokenizer.add_special_tokens({"bos_token": "<|beginoftext|>", "eos_token": "<|endoftext|>",
                                  "pad_token": "<|endoftext|>", "mask_token": "<|mask|>",
                                  "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = DREAM_TEMPLATE
    tokenizer.save_pretrained(folder)
    _finish(folder, "modeling_tiny_dream",
            {"AutoConfig": "modeling_tiny_dream.DreamConfig", "AutoModel": "modeling_tiny_dream.DreamModel"},
            {"tokenizer_class": "DreamTokenizer",
             "auto_map": {"AutoTokenizer": [None, "modeling_tiny_dream.DreamTokenizer"]}})
    return Checkpoint(folder, family="dream", mask_id=151666, eos_ids=(151643, 151645), shifted=True)
