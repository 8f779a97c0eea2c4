"""Tiny checkpoints with the real LLaDA / Dream configs, rebuilt from reference fixtures (`build_llada`,
`build_dream`): what the family tests, the scheduler tests and the CLI tests load.

`scripts/reference/*.py` build these checkpoints with the model authors' own code (in a scratch
virtualenv with the transformers they used), fill every tensor with `deterministic_tensor`, and keep
what the authors' code wrote and computed under `tests/fixtures/reference/<family>/`:
`config.json` (as their save_pretrained wrote it), `tensors.json` (each tensor's name, shape, dtype)
and the figures (logits, greedy ids). The tests rebuild the identical weights here from those
fixtures, without the authors' code, and check the project's native classes against the figures.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors

REFERENCE = Path(__file__).resolve().parent / "fixtures" / "reference"


# A checkpoint whose predictions vary by position and saturate (scripts/reference/fast_dllm.py): query and key
# projections 3x, so attention depends on position and masked positions predict different tokens; the output
# head 40x, so the top logit often leads by tens and float32 confidences are exactly 1.0, as a real model's are.
SATURATING_GAINS = {"q_proj.weight": 3.0, "k_proj.weight": 3.0, "transformer.ff_out.weight": 40.0}


def deterministic_tensor(name: str, shape, dtype: torch.dtype = torch.float32, seed: int = 0,
                         gains: dict[str, float] | None = None) -> torch.Tensor:
    """The value every builder gives tensor `name`: seeded by its name, so the authors' model and ours get
    the same weights without shipping them. Norm weights near 1, other vectors small, matrices scaled by
    1/sqrt(fan-in) so that logits are peaked (greedy decoding has no near-ties to flip on rounding), times
    `gains[key]` for a matrix whose name ends with `key` (sharper attention, saturated output: see
    SATURATING_GAINS)."""
    gen = torch.Generator().manual_seed((zlib.crc32(name.encode()) ^ seed) & 0x7FFFFFFF)
    shape = tuple(int(s) for s in shape)
    values = torch.randn(shape, generator=gen, dtype=torch.float32)
    if len(shape) >= 2:
        values = values / math.sqrt(shape[-1])
        values = values * next((g for key, g in (gains or {}).items() if name.endswith(key)), 1.0)
    elif "norm" in name or "ln_f" in name:
        values = 1.0 + 0.1 * values
    else:
        values = 0.1 * values
    return values.to(dtype)


def fill_deterministic(model: torch.nn.Module, seed: int = 0, gains: dict[str, float] | None = None) -> None:
    """Overwrite every parameter and persistent buffer of `model` by name (the reference scripts call this on
    the authors' model before save_pretrained)."""
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            tensor.copy_(deterministic_tensor(name, tensor.shape, tensor.dtype, seed, gains))


def tensor_table(path: Path) -> list[dict]:
    """name, shape, dtype of every tensor in a checkpoint folder's safetensors files (for tensors.json)."""
    from safetensors import safe_open

    rows = []
    for f in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for key in st.keys():
                t = st.get_slice(key)
                rows.append({"name": key, "shape": list(t.get_shape()), "dtype": t.get_dtype()})
    return sorted(rows, key=lambda r: r["name"])


_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64,
           "I64": torch.int64, "I32": torch.int32, "BOOL": torch.bool}


def write_weights(folder: Path, table: list[dict], seed: int = 0, shards: int = 2,
                  gains: dict[str, float] | None = None) -> None:
    """The tensors of `table`, deterministically filled, as `shards` safetensors files plus the
    model.safetensors.index.json that hub checkpoints carry."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    groups = [table[k::shards] for k in range(shards)]
    weight_map, total = {}, 0
    for k, group in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {r["name"]: deterministic_tensor(r["name"], r["shape"], _DTYPES[r["dtype"]], seed, gains)
                   for r in group}
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        save_file(tensors, str(folder / fname), metadata={"format": "pt"})
        weight_map.update({name: fname for name in tensors})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def reference_dir(family: str) -> Path:
    return REFERENCE / family


def load_figures(family: str) -> dict:
    """The figures the authors' code produced (figures.json of the family's fixtures)."""
    return json.loads((reference_dir(family) / "figures.json").read_text())


# --- tokenizers in the hub layouts -------------------------------------------------------------------

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

def word_tokenizer(specials: dict[str, int], size: int, bos: str | None):
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


# Dream: a byte-level BPE vocabulary (vocab.json + merges.txt, as the hub ships it) below the real special ids.
FIRST_SPECIAL = 151643
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("u", "s"), ("e", "r"), ("us", "er"), ("Ġ", "a"), ("1", "2"),
          ("Ċ", "Ċ"), ("Ġ", "Ġ"), ("'", "s"), ("i", "m"), ("Ġ", "h"), ("Ġh", "i")]
def byte_symbols() -> list[str]:
    """GPT-2 / Qwen byte-level alphabet: one printable character per byte value."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + k) for k in range(len(rest))]


def write_tokenizer_files(folder: Path, tokenizer_config: dict) -> None:
    """vocab.json, merges.txt and tokenizer_config.json of a hub-style Dream tokenizer."""
    vocab = {sym: i for i, sym in enumerate(byte_symbols())}
    for a, b in MERGES:
        vocab.setdefault(a + b, len(vocab))
    for i in range(len(vocab), FIRST_SPECIAL):
        vocab[f"<filler{i}>"] = i
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False),
                                                  encoding="utf-8")


# --- whole checkpoint folders ------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    family: str
    mask_id: int
    eos_ids: tuple[int, ...]
    shifted: bool
    remote_code_marker: Path  # written if any of the folder's remote-code files ever runs


def _decoy_code(folder: Path, names: tuple[str, ...]) -> Path:
    """The hub folder ships the authors' code beside the weights: files that would leave a marker if run."""
    marker = folder.parent / "remote-code-ran"
    for name in names:
        (folder / name).write_text(f"open({str(marker)!r}, 'w').close()\n")
    return marker


def build_llada(root: Path, variant: str = "instruct", name: str | None = None,
                gains: dict[str, float] | None = None) -> Checkpoint:
    """A tiny LLaDA with the real GSAI-ML/LLaDA-8B-Instruct config (or a recorded variant: gqa, tied, biased),
    the authors' parameter names and the weights their reference run used (times `gains`, see
    deterministic_tensor)."""
    ref = reference_dir("llada")
    if variant == "instruct":
        config, tensors = "config.json", "tensors.json"
    else:
        v = load_figures("llada")["variants"][variant]
        config, tensors = v["config"], v["tensors"]
    folder = Path(root) / (name or f"tiny-llada-{variant}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text((ref / config).read_text())
    write_weights(folder, json.loads((ref / tensors).read_text()), gains=gains)
    hub = json.loads((ref / "tokenizer_config.json").read_text())  # the hub tokenizer's template and specials
    tokenizer = word_tokenizer(LLADA_SPECIALS, max(LLADA_SPECIALS.values()) + 1, bos=hub["bos_token"])
    tokenizer.add_special_tokens({"bos_token": hub["bos_token"], "eos_token": hub["eos_token"],
                                  "pad_token": hub["pad_token"], "mask_token": "<|mdm_mask|>",
                                  "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    tokenizer.chat_template = hub["chat_template"]
    tokenizer.save_pretrained(folder)
    marker = _decoy_code(folder, ("configuration_llada.py", "modeling_llada.py"))
    return Checkpoint(folder, "llada", 126336, (126081, 126348), False, marker)


def build_dream(root: Path, name: str = "tiny-dream-v0") -> Checkpoint:
    """A tiny Dream with the real Dream-org/Dream-v0-Instruct-7B config, the hub's tokenizer_config.json over a
    small byte-level vocabulary, the authors' parameter names and the weights their reference run used."""
    ref = reference_dir("dream")
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text((ref / "config.json").read_text())
    write_weights(folder, json.loads((ref / "tensors.json").read_text()))
    write_tokenizer_files(folder, json.loads((ref / "tokenizer_config.json").read_text()))
    marker = _decoy_code(folder, ("configuration_dream.py", "modeling_dream.py", "generation_utils.py",
                                  "tokenization_dream.py"))
    return Checkpoint(folder, "dream", 151666, (151643, 151645), True, marker)


# inclusionAI/LLaDA2.0-mini: the hub tokenizer's special ids (<|endoftext|>, <|mask|>) and Ling's role tags at
# ids of this small vocabulary's own choosing (the hub tokenizer cannot be fetched here).
LLADA2_SPECIALS = {
    "<|endoftext|>": 156892,
    "<|mask|>": 156895,
    "<role>": 156897,
    "</role>": 156898,
    "<|role_end|>": 156900,
    "SYSTEM": 500,
    "HUMAN": 501,
    "ASSISTANT": 502,
    "detailed": 503,
    "thinking": 504,
    "off": 505,
}


def build_llada2(root: Path, name: str = "tiny-llada2-mini", tensors: list[dict] | None = None,
                 config: dict | None = None) -> Checkpoint:
    """A tiny LLaDA2 with the LLaDA2.0-mini config (sizes cut down), the authors' parameter names and the
    weights their reference run used; `tensors` / `config` replace the recorded ones (damaged checkpoints)."""
    ref = reference_dir("llada2")
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config) if config is not None else (ref / "config.json").read_text())
    write_weights(folder, tensors if tensors is not None else json.loads((ref / "tensors.json").read_text()))
    tokenizer = word_tokenizer(LLADA2_SPECIALS, max(LLADA2_SPECIALS.values()) + 1, bos=None)
    tokenizer.add_special_tokens({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "mask_token": "<|mask|>",
                                  "additional_special_tokens": ["<role>", "</role>", "<|role_end|>"]})
    tokenizer.save_pretrained(folder)
    marker = _decoy_code(folder, ("configuration_llada2_moe.py", "modeling_llada2_moe.py"))
    return Checkpoint(folder, "llada2", 156895, (156892, 156900), False, marker)


def build_llada_moe(root: Path, name: str = "tiny-llada-moe-7b-a1b", variant: str | None = None,
                    tensors: list[dict] | None = None, config: dict | None = None) -> Checkpoint:
    """A tiny LLaDA-MoE with the LLaDA-MoE-7B-A1B config (sizes cut down, model_type "llada" as released), the
    authors' parameter names and the weights their reference run used; `variant` "variant" is the recorded
    config that turns on the expert bias, a shared expert, a dense layer...; `tensors` / `config` replace the
    recorded ones (damaged checkpoints). The tokenizer is Ling's, as LLaDA2's (build_llada2)."""
    ref = reference_dir("llada_moe")
    suffix = f"-{variant}" if variant else ""
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config) if config is not None
                                        else (ref / f"config{suffix}.json").read_text())
    write_weights(folder, tensors if tensors is not None else json.loads((ref / f"tensors{suffix}.json").read_text()))
    tokenizer = word_tokenizer(LLADA2_SPECIALS, max(LLADA2_SPECIALS.values()) + 1, bos=None)
    tokenizer.add_special_tokens({"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "mask_token": "<|mask|>",
                                  "additional_special_tokens": ["<role>", "</role>", "<|role_end|>"]})
    tokenizer.save_pretrained(folder)
    marker = _decoy_code(folder, ("configuration_lladamoe.py", "modeling_lladamoe.py"))
    return Checkpoint(folder, "llada-moe", 156895, (156892, 156900), False, marker)


# JetAstra/SDAR's Qwen3 tokenizer: its special ids (<|endoftext|>, <|im_start|>, <|im_end|>, <|MASK|>) and the
# chat template's words at ids of this small vocabulary's own choosing (the hub tokenizer cannot be fetched here)
SDAR_SPECIALS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|MASK|>": 151669,
                 "<think>": 151667, "</think>": 151668}


def build_sdar(root: Path, variant: str = "dense", name: str | None = None) -> Checkpoint:
    """A tiny SDAR (dense: SDAR's Qwen3 layers; "moe": SDAR-MoE's) with the config and the weights the authors'
    reference run used (scripts/reference/sdar.py), and Qwen3's chat template over a small vocabulary."""
    ref = reference_dir("sdar")
    suffix = "" if variant == "dense" else "-moe"
    folder = Path(root) / (name or f"tiny-sdar{suffix}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text((ref / f"config{suffix}.json").read_text())
    figures = load_figures("sdar")
    write_weights(folder, json.loads((ref / f"tensors{suffix}.json").read_text()), gains=figures["gains"])
    tokenizer = word_tokenizer(SDAR_SPECIALS, 151936, bos=None)
    tokenizer.add_special_tokens({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "mask_token": "<|MASK|>",
                                  "additional_special_tokens": ["<|im_start|>", "<think>", "</think>"]})
    tokenizer.chat_template = figures["chat_template"]
    tokenizer.save_pretrained(folder)
    marker = _decoy_code(folder, ("configuration_sdar.py", "modeling_sdar.py", "configuration_sdar_moe.py",
                                  "modeling_sdar_moe.py"))
    return Checkpoint(folder, "sdar", 151669, (151645, 151643), False, marker)


# Qwen2.5's special ids as Fast-dLLM v2's tokenizer has them, and its mask token
FAST_DLLM_V2_SPECIALS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "|<MASK>|": 151665}


def build_fast_dllm_v2(root: Path, name: str = "tiny-fast-dllm-v2") -> Checkpoint:
    """A tiny Fast-dLLM v2 with the config and the weights its authors' reference run used
    (scripts/reference/fast_dllm_v2.py), and Qwen2.5's chat template over a small vocabulary."""
    ref = reference_dir("fast_dllm_v2")
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text((ref / "config.json").read_text())
    figures = load_figures("fast_dllm_v2")
    write_weights(folder, json.loads((ref / "tensors.json").read_text()), gains=figures["gains"])
    tokenizer = word_tokenizer(FAST_DLLM_V2_SPECIALS, 152064, bos=None)
    tokenizer.add_special_tokens({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "mask_token": "|<MASK>|",
                                  "additional_special_tokens": ["<|im_start|>"]})
    tokenizer.chat_template = json.loads((ref / "tokenizer_config.json").read_text())["chat_template"]
    tokenizer.save_pretrained(folder)
    marker = _decoy_code(folder, ("configuration.py", "modeling.py"))
    return Checkpoint(folder, "fast-dllm-v2", 151665, (151645,), True, marker)


def max_logit_delta(logits: torch.Tensor, positions: list[dict], fixed_ids: list[int]) -> float:
    """The largest |difference| between a canvas's logits and the authors' figures at their positions (top-5 ids,
    logits, and the logits of `fixed_ids`); the top-5 ids must be theirs."""
    worst = 0.0
    for fig in positions:
        got = logits[fig["position"]]
        assert got.topk(5).indices.tolist() == fig["top5_ids"]
        want = torch.tensor(fig["top5_logits"] + fig["fixed_logits"])
        worst = max(worst, float((got[fig["top5_ids"] + fixed_ids] - want).abs().max()))
    return worst
