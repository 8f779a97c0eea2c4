"""Model spec -> loaded ensemble member: family facts, quantization, device placement, tokenizer."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer

from .errors import UserError
from .families import Family, family_for
from .registry import resolve

QUANTS = ("none", "8bit", "4bit")
BACKENDS = ("bitsandbytes", "quanto")


@dataclass
class Member:
    """One loaded ensemble member. `logits` hides the family's conventions from the engine."""

    name: str
    source: str
    family: Family
    model: torch.nn.Module
    tokenizer: object
    mask_id: int
    eos_ids: tuple[int, ...]
    shifted: bool
    device: torch.device
    quant: str
    max_length: int | None
    load_seconds: float
    footprint_bytes: int
    tokenizer_key: str = field(default="")

    @torch.no_grad()
    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """float32 logits for a (batch, length) canvas; the prediction for position i at index i."""
        out = self.model(input_ids=ids.to(self.device)).logits
        return self.family.align(out, self.shifted).float()

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return self.family.prompt_ids(self.tokenizer, messages)


def tokenizer_key(tokenizer) -> str:
    """Members with equal keys share a vocabulary, so canvases relay between them id for id."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha1(json.dumps(vocab).encode()).hexdigest()


def read_config(source: str, name: str) -> dict:
    """config.json of a local folder or a hub id (through the normal HF cache), without loading weights."""
    path = Path(source)
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise UserError(f"{source} is not a model folder (no config.json); pass a checkpoint folder or a hub id")
        return json.loads((path / "config.json").read_text())
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise UserError(
            f"model '{name}' is neither a known name, a folder, nor a hub id; see `tie-lite models` for known names"
        )
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(source, "config.json")).read_text())
    except Exception as exc:  # offline, unknown repo, gated, no network: all mean the same to the user
        raise UserError(
            f"cannot fetch model '{source}' ({type(exc).__name__}); download it first with "
            f"`huggingface-cli download {source}` on a connected machine, or pass a local folder"
        ) from None


def weight_files(source: str) -> list[str]:
    path = Path(source)
    if path.is_dir():
        return [p.name for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth")]
    try:
        from huggingface_hub import list_repo_files

        return list_repo_files(source)
    except Exception:
        return []  # offline with a cached copy: from_pretrained(use_safetensors=...) still guards pickle


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise UserError(f"unknown --device '{device}'; use cpu, cuda or auto")
    return torch.device(device)


def quantization_config(quant: str, backend: str, device: torch.device):
    if quant not in QUANTS:
        raise UserError(f"unknown --quant '{quant}'; use one of {', '.join(QUANTS)}")
    if backend not in BACKENDS:
        raise UserError(f"unknown --quant-backend '{backend}'; use one of {', '.join(BACKENDS)}")
    if quant == "none":
        return None
    if backend == "quanto":
        try:
            import optimum.quanto  # noqa: F401
        except ImportError:
            raise UserError("--quant-backend quanto needs optimum-quanto: pip install 'tie-lite[quanto]'") from None
        return transformers.QuantoConfig(weights="int8" if quant == "8bit" else "int4")
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:
        raise UserError(
            f"--quant {quant} needs bitsandbytes, which does not load here ({exc}); "
            f"use --quant none or --quant-backend quanto"
        ) from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"bitsandbytes cannot quantize on {device.type}; use --quant-backend quanto")
    if quant == "8bit":
        return transformers.BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if device.type == "cuda" else torch.float32
    return transformers.BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
    )


def load_member(
    spec: str,
    *,
    quant: str = "none",
    backend: str = "bitsandbytes",
    device: str = "cpu",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> Member:
    start = time.perf_counter()
    name, source = resolve(spec)
    config = read_config(source, name)
    family = family_for(config.get("model_type"), source=name)
    if family.trust_remote_code and not trust_remote_code:
        raise UserError(
            f"model '{name}' ({family.name} family) runs Python code shipped with its checkpoint; "
            f"pass --trust-remote-code if you trust its source"
        )
    files = weight_files(source)
    has_safetensors = any(f.endswith(".safetensors") for f in files)
    if files and not has_safetensors and not allow_pickle:
        raise UserError(
            f"model '{name}' has only pickle weights (.bin), which can run arbitrary code when loaded; "
            f"convert them to safetensors or pass --allow-pickle"
        )
    dev = resolve_device(device)
    qconfig = quantization_config(quant, backend, dev)
    kwargs = dict(trust_remote_code=family.trust_remote_code, use_safetensors=None if allow_pickle else True)
    if qconfig is not None:
        kwargs.update(quantization_config=qconfig, device_map={"": str(dev)})
    if dev.type == "cuda" and qconfig is None:
        kwargs["dtype"] = torch.bfloat16
    auto = getattr(transformers, family.auto_class)
    try:
        model = auto.from_pretrained(source, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=family.trust_remote_code)
    except UserError:
        raise
    except (OSError, ValueError, RuntimeError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load model '{name}' with --quant {quant}: {first}") from None
    if qconfig is None:
        model.to(dev)
    model.eval()
    hf_config = model.config
    max_length = getattr(hf_config, "max_position_embeddings", None) or getattr(hf_config, "max_sequence_length", None)
    member = Member(
        name=name,
        source=source,
        family=family,
        model=model,
        tokenizer=tokenizer,
        mask_id=family.mask_id(hf_config),
        eos_ids=family.eos_ids(tokenizer),
        shifted=family.shifted(hf_config),
        device=dev,
        quant=quant,
        max_length=max_length,
        load_seconds=time.perf_counter() - start,
        footprint_bytes=measured_footprint(model),
    )
    member.tokenizer_key = tokenizer_key(tokenizer)
    return member


def measured_footprint(model: torch.nn.Module) -> int:
    """Bytes actually held by parameters and buffers (quanto reports fp32 sizes; count storage ourselves)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        for part in _storages(t):
            key = (part.data_ptr(), part.nbytes())
            if key not in seen:
                seen.add(key)
                total += part.nbytes()
    return total


def _storages(t: torch.Tensor):
    """Plain tensors, and the inner tensors of quantized tensor subclasses (quanto, bnb QuantState)."""
    inner = getattr(t, "__tensor_flatten__", None)
    if inner is not None and type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter:
        names, _ = t.__tensor_flatten__()
        for n in names:
            yield from _storages(getattr(t, n))
        return
    yield t.untyped_storage()
    state = getattr(t, "quant_state", None)
    if state is not None:  # bitsandbytes 4-bit: absmax and nested quantization state live beside the weight
        for value in vars(state).values():
            if isinstance(value, torch.Tensor):
                yield value.untyped_storage()
            nested = getattr(value, "absmax", None)
            if isinstance(nested, torch.Tensor):
                yield nested.untyped_storage()
