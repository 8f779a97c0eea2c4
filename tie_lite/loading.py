"""Model spec -> loaded ensemble member: family facts, quantization, device placement, tokenizer."""

from __future__ import annotations

import ctypes
import gc
import hashlib
import json
import math
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers

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
        return parse_config((path / "config.json").read_bytes(), name)
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise UserError(
            f"model '{name}' is neither a known name, a folder, nor a hub id; see `tie-lite models` for known names"
        )
    try:
        from huggingface_hub import hf_hub_download

        raw = Path(hf_hub_download(source, "config.json", **hub_options())).read_bytes()
    except Exception as exc:  # offline, unknown repo, gated, no network: all mean the same to the user
        raise UserError(
            f"cannot fetch model '{source}' ({type(exc).__name__}); download it first with "
            f"`huggingface-cli download {source}` on a connected machine, or pass a local folder"
        ) from None
    return parse_config(raw, name)


def parse_config(raw: bytes, name: str) -> dict:
    """A checkpoint's config.json as a dict, or one line saying what is wrong with it."""
    try:
        config = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"model '{name}': config.json is not valid JSON ({exc}); re-download or re-save the "
                        f"checkpoint") from None
    if not isinstance(config, dict):
        raise UserError(f"model '{name}': config.json holds a JSON {type(config).__name__}, not an object of "
                        f"settings; re-download or re-save the checkpoint")
    return config


CONFIG_LIMITS = dict(hidden=1 << 17, intermediate=1 << 20, heads=1 << 12, kv_heads=1 << 12, layers=1 << 11,
                     vocab=1 << 23)


def checked_family(config: dict, name: str) -> Family:
    """The family of a parsed config.json, after checking the fields tie-lite reads from it are usable."""
    family = family_for(config.get("model_type"), source=name)
    try:
        dims = model_dims(config)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"model '{name}': config.json has a size field that is not a whole number; re-download "
                        f"or re-save the checkpoint") from None
    if min(dims["hidden"], dims["vocab"], dims["heads"], dims["layers"]) <= 0:
        raise UserError(f"model '{name}': config.json lacks the model's sizes (hidden size, vocabulary, heads, "
                        f"layers); re-download or re-save the checkpoint")
    for field, limit in CONFIG_LIMITS.items():  # building a model of absurd size would hang before failing
        if dims[field] > limit:
            raise UserError(f"model '{name}': config.json gives {field} {dims[field]}, beyond any known model "
                            f"(at most {limit}); re-download or re-save the checkpoint")
    context = config.get("max_position_embeddings", config.get("max_sequence_length"))
    if context is not None and (isinstance(context, bool) or not isinstance(context, int) or context <= 0):
        raise UserError(f"model '{name}': config.json gives a context length of {str(context)[:40]!r}, not a "
                        f"positive whole number; re-download or re-save the checkpoint")
    if family.mask_token_id is None:
        mask = config.get("mask_token_id")
        if isinstance(mask, bool) or not isinstance(mask, int) or not 0 <= mask < dims["vocab"]:
            raise UserError(f"model '{name}': config.json has no usable mask_token_id (got {mask!r}); a masked "
                            f"diffusion checkpoint names the token it denoises from")
    return family


def hub_options() -> dict:
    """Hub lookups fail fast instead of retrying for half a minute: offline (HF_HUB_OFFLINE, or the hub is not
    reachable within two seconds) only the local cache is asked."""
    import os
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return {"local_files_only": True}
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    host, _, port = endpoint.partition(":")
    try:
        socket.create_connection((host, int(port or 443)), timeout=2).close()
    except (OSError, ValueError):
        return {"local_files_only": True}
    return {}


def weight_files(source: str) -> list[str]:
    path = Path(source)
    if path.is_dir():
        return [p.name for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth")]
    if hub_options().get("local_files_only"):
        return []
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
    return _load_member(spec, quant=quant, backend=backend, device=device, trust_remote_code=trust_remote_code,
                        allow_pickle=allow_pickle)


def _load_member(
    spec: str,
    *,
    quant: str = "none",
    backend: str = "bitsandbytes",
    device: str = "cpu",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    offload: dict | None = None,
) -> Member:
    """load_member, or with `offload` (from_pretrained kwargs: device_map, max_memory, offload_folder) a member
    whose layers accelerate spreads over the device, host memory and disk."""
    start = time.perf_counter()
    name, source = resolve(spec)
    config = read_config(source, name)
    family = checked_family(config, name)
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
    if offload is not None:
        if qconfig is not None and backend == "bitsandbytes":  # offloaded layers stay unquantized (the plan warns)
            qconfig.llm_int8_enable_fp32_cpu_offload = True
        kwargs.update(offload)
    auto = getattr(transformers, family.auto_class)
    try:
        family.register()
        model = auto.from_pretrained(source, **kwargs)
        tokenizer = family.load_tokenizer(source, trust_remote_code=family.trust_remote_code)
    except UserError:
        raise
    except Exception as exc:  # broken checkpoints and remote code fail in many ways; the user needs one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        how = f" with --quant {quant}" if quant != "none" else ""
        raise UserError(f"cannot load model '{name}'{how}: {first[:300]}") from None
    if qconfig is None and offload is None:
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
    scb = getattr(t, "SCB", None)  # bitsandbytes 8-bit row scales live beside the weight, not as buffers
    if isinstance(scb, torch.Tensor):
        yield scb.untyped_storage()
    state = getattr(t, "quant_state", None)
    if state is not None:  # bitsandbytes 4-bit: absmax and nested quantization state live beside the weight
        for value in vars(state).values():
            if isinstance(value, torch.Tensor):
                yield value.untyped_storage()
            nested = getattr(value, "absmax", None)
            if isinstance(nested, torch.Tensor):
                yield nested.untyped_storage()


def load_member_offloaded(
    spec: str,
    *,
    device_bytes: int,
    offload_folder: str,
    quant: str = "none",
    backend: str = "bitsandbytes",
    device: str = "cpu",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> Member:
    """A member too large for the device budget: accelerate keeps at most `device_bytes` of its layers on the
    device and the rest in host memory (CUDA) or memory-mapped on disk (CPU), bringing each in for its forward.
    bitsandbytes keeps the layers it offloads unquantized."""
    dev = resolve_device(device)
    if dev.type == "cpu":
        if quant != "none":
            raise UserError(
                f"model '{spec}' does not fit the memory budget even at --quant {quant}, and layer offload on the "
                f"CPU works only with --quant none; raise --max-memory"
            )
        max_memory = {"cpu": int(device_bytes)}
    else:
        import psutil

        max_memory = {dev.index or 0: int(device_bytes), "cpu": int(psutil.virtual_memory().available * 0.9)}
    offload = dict(device_map="auto", max_memory=max_memory, offload_folder=offload_folder, offload_buffers=False)
    return _load_member(spec, quant=quant, backend=backend, device=device, trust_remote_code=trust_remote_code,
                        allow_pickle=allow_pickle, offload=offload)


# --- sizes before loading: config files and safetensors headers only --------------------------------------

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
_FLOAT = ("F64", "F32", "F16", "BF16")
_BLOCK = re.compile(r"^(.*?\b(?:layers|layer|h|blocks|block)\.\d+)\.")


def _raw_header(f) -> tuple[dict, int]:
    """The JSON header of an open .safetensors file, checked against the file's size; a damaged file is a
    UserError naming it (empty, truncated, or not safetensors at all)."""
    name = Path(f.name).name
    size = Path(f.name).stat().st_size

    def bad(why: str):
        return UserError(f"{name} in {Path(f.name).parent} is not a valid safetensors file ({why}); re-download "
                         f"or re-save the checkpoint")

    head = f.read(8)
    if len(head) < 8:
        raise bad("shorter than a header")
    (n,) = struct.unpack("<Q", head)
    if n > min(100 * 2**20, size - 8):
        raise bad(f"header of {n} bytes in a file of {size}")
    try:
        header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise bad("its header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    header.pop("__metadata__", None)
    for key, info in header.items():
        try:
            start, stop = info["data_offsets"]
            shape = [int(d) for d in info["shape"]]
            ok = (info["dtype"] in DTYPE_BYTES and all(d >= 0 for d in shape) and 0 <= start <= stop <= size - 8 - n
                  and stop - start == math.prod(shape) * DTYPE_BYTES[info["dtype"]])
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise bad(f"tensor '{str(key)[:60]}' has a malformed entry or lies past the end of the file")
    return header, 8 + n


def safetensors_header(path: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (dtype, shape)} from a .safetensors file's JSON header, without reading any weights."""
    with open(path, "rb") as f:
        header, _ = _raw_header(f)
    return {k: (v["dtype"], tuple(v["shape"])) for k, v in header.items()}


_TORCH_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                 "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                 "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
                 "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64}


def read_safetensors(path: str | Path, keys) -> dict[str, torch.Tensor]:
    """Named tensors of one .safetensors file, read straight into fresh tensors (one copy from the page cache)."""
    return dict(iter_safetensors(path, keys))


def iter_safetensors(path: str | Path, keys):
    """(name, tensor) for the named tensors of one .safetensors file, in file order, one fresh tensor at a time."""
    with open(path, "rb", buffering=0) as f:
        header, base = _raw_header(f)
        for key in sorted(keys, key=lambda k: header[k]["data_offsets"][0]):
            info = header[key]
            start, stop = info["data_offsets"]
            raw = torch.empty(stop - start, dtype=torch.uint8)
            f.seek(base + start)
            view, done = memoryview(raw.numpy()), 0
            while done < len(view):
                got = f.readinto(view[done:])
                if not got:
                    raise OSError(f"{path}: file ended while reading {key}")
                done += got
            yield key, raw.view(_TORCH_DTYPES[info["dtype"]]).view(tuple(info["shape"]))


def checkpoint_tensors(source: str) -> dict[str, tuple[str, tuple[int, ...]]] | None:
    """Every weight tensor's dtype and shape for a local folder or a hub id (headers only), or None when the
    headers cannot be read (pickle-only checkpoint, offline hub id not in the cache)."""
    path = Path(source)
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            return None
        for f in files:
            tensors.update(safetensors_header(f))
        return tensors
    try:  # hub id: HTTP range requests for the headers only
        if hub_options().get("local_files_only"):
            raise OSError("offline")
        from huggingface_hub import get_safetensors_metadata

        meta = get_safetensors_metadata(source)
        for fmeta in meta.files_metadata.values():
            for name, info in fmeta.tensors.items():
                tensors[name] = (info.dtype, tuple(info.shape))
        return tensors
    except Exception:
        pass
    try:  # offline: a copy in the Hugging Face cache
        from huggingface_hub import try_to_load_from_cache

        index = try_to_load_from_cache(source, "model.safetensors.index.json")
        if isinstance(index, str):
            shards = sorted(set(json.loads(Path(index).read_text())["weight_map"].values()))
        else:
            shards = ["model.safetensors"]
        for shard in shards:
            cached = try_to_load_from_cache(source, shard)
            if not isinstance(cached, str):
                return None
            tensors.update(safetensors_header(cached))
        return tensors
    except Exception:
        return None


def _cfg(config: dict, *names, default=None):
    for name in names:
        value = config.get(name)
        if value is not None:
            return value
    return default


def model_dims(config: dict) -> dict:
    """The few config facts working memory depends on, across the naming schemes of the families."""
    hidden = int(_cfg(config, "hidden_size", "d_model", "n_embd", default=0))
    ratio = _cfg(config, "mlp_ratio")
    inter = _cfg(config, "intermediate_size", "mlp_hidden_size", "n_inner")
    if inter is None:
        inter = int(ratio * hidden) if ratio else 4 * hidden
    vocab = max(int(_cfg(config, "vocab_size", default=0)), int(_cfg(config, "embedding_size", default=0)))
    return dict(
        hidden=hidden,
        intermediate=int(inter),
        heads=int(_cfg(config, "num_attention_heads", "n_heads", "n_head", default=1)),
        kv_heads=int(_cfg(config, "num_key_value_heads", "n_kv_heads", "num_attention_heads", "n_heads", default=1)),
        layers=int(_cfg(config, "num_hidden_layers", "n_layers", "n_layer", default=0)),
        vocab=vocab,
        gated=config.get("model_type") != "tie-tiny",
        dtype=str(_cfg(config, "dtype", "torch_dtype", default="float32")),
    )


def _synthetic_tensors(dims: dict) -> dict[str, tuple[str, tuple[int, ...]]]:
    """A checkpoint's tensors as its config implies them, when no header can be read (an approximation)."""
    dt = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}.get(dims["dtype"], "BF16")
    h, i, v = dims["hidden"], dims["intermediate"], dims["vocab"]
    kv = h * dims["kv_heads"] // max(1, dims["heads"])
    t = {"embed.weight": (dt, (v, h)), "head.weight": (dt, (v, h)), "norm.weight": (dt, (h,))}
    for n in range(dims["layers"]):
        p = f"layers.{n}."
        t.update({p + "q.weight": (dt, (h, h)), p + "k.weight": (dt, (kv, h)), p + "v.weight": (dt, (kv, h)),
                  p + "o.weight": (dt, (h, h)), p + "up.weight": (dt, (i, h)), p + "down.weight": (dt, (h, i)),
                  p + "norm1.weight": (dt, (h,)), p + "norm2.weight": (dt, (h,))})
        if dims["gated"]:
            t[p + "gate.weight"] = (dt, (i, h))
    return t


def tensor_device_bytes(name: str, dtype: str, shape: tuple[int, ...], quant: str, device: str) -> int:
    """Bytes one checkpoint tensor occupies on `device` once loaded at `quant`. Linear weights inside the numbered
    blocks are what bitsandbytes quantizes; embeddings, norms and the output head keep their dtype."""
    numel = math.prod(shape) if shape else 1
    quantized = quant != "none" and len(shape) == 2 and name.endswith(".weight") and _BLOCK.match(name) is not None
    if quantized and quant == "8bit":
        return numel + 4 * shape[0]  # int8 weights + one float32 scale per output row
    if quantized and quant == "4bit":
        blocks = math.ceil(numel / 64)
        return math.ceil(numel / 2) + blocks + 4 * math.ceil(blocks / 256) + 1024 + 64  # NF4 + double-quant absmax
    size = DTYPE_BYTES.get(dtype, 4)
    if device == "cuda" and quant == "none" and dtype in _FLOAT:
        size = 2  # loaded in bfloat16 on the GPU
    return numel * size


@dataclass
class SizeEstimate:
    """One member's memory needs, estimated before loading."""

    name: str
    source: str
    quant: str
    device: str
    weight_bytes: int  # on the device at this quantization
    source_bytes: int  # the checkpoint's tensors on disk (what a reload reads)
    layer_bytes: int  # the largest piece layer offload must hold on the device at once
    dims: dict
    exact: bool  # from safetensors headers (True) or from config fields alone (False)
    reload: bool  # swapped by releasing and reloading (bitsandbytes 8-bit, quanto), not by moving
    shifted: bool = False

    def working_bytes(self, total_len: int, batch: int = 1) -> int:
        """Transient memory of one forward over `batch` canvases of `total_len` positions, plus the sampler's
        float work on its output. Logits dominate for 126k-152k vocabularies."""
        d = self.dims
        act = 2 if self.device == "cuda" else (2 if d["dtype"] in ("bfloat16", "float16") and self.quant == "none" else 4)
        b, n = batch, total_len
        logits = b * n * d["vocab"] * (4 + (act if act != 4 else 0) + (4 if self.shifted else 0))
        states = b * n * (6 * d["hidden"] + 3 * d["intermediate"]) * act
        attention = b * d["heads"] * n * n * 4
        sampler = min(n, 32) * d["vocab"] * 8  # float32 softmax + float64 Gumbel noise over one block's candidates
        dequant = d["hidden"] * max(d["hidden"], d["intermediate"]) * act if self.quant != "none" else 0
        return int(logits + states + attention + sampler + dequant)


def estimate_member(spec: str, *, quant: str = "none", backend: str = "bitsandbytes", device: str = "cpu") -> SizeEstimate:
    """A member's weight bytes at `quant` on `device` from its config and safetensors headers; no weights load."""
    if quant not in QUANTS:
        raise UserError(f"unknown --quant '{quant}'; use one of {', '.join(QUANTS)}")
    if device not in ("cpu", "cuda"):
        raise UserError(f"unknown --device '{device}'; use cpu or cuda")
    name, source = resolve(spec)
    config = read_config(source, name)
    family = checked_family(config, name)
    dims = model_dims(config)
    tensors = checkpoint_tensors(source)
    exact = tensors is not None
    if tensors is None:
        tensors = _synthetic_tensors(dims)
    if exact and not dims["dtype"]:
        dims["dtype"] = "float32"
    weight = source_bytes = 0
    units: dict[str, int] = {}
    for tname, (dtype, shape) in tensors.items():
        on_device = tensor_device_bytes(tname, dtype, shape, quant, device)
        weight += on_device
        source_bytes += (math.prod(shape) if shape else 1) * DTYPE_BYTES.get(dtype, 4)
        m = _BLOCK.match(tname)
        unit = m.group(1) if m else tname.rsplit(".", 1)[0]
        units[unit] = units.get(unit, 0) + on_device
    return SizeEstimate(
        name=name,
        source=source,
        quant=quant,
        device=device,
        weight_bytes=weight,
        source_bytes=source_bytes,
        layer_bytes=max(units.values(), default=0),
        dims=dims,
        exact=exact,
        reload=quant != "none" and (quant == "8bit" or backend == "quanto"),
        shifted=bool(family.shift_logits if family.shift_logits is not None else config.get("shift_logits", False)),
    )


# --- releasing and restoring a member's weights (whole-member swapping) -----------------------------------


def _trim_host_heap(collect: bool = False) -> None:
    """Hand freed heap pages back to the OS so that resident memory really drops (glibc keeps them otherwise)."""
    if collect:  # a dropped model has reference cycles; swapped tensors are freed by reference counting
        gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _weight_tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every tensor a member's forward reads, by a stable name: parameters, buffers, and the tensors of
    bitsandbytes 4-bit quantization states (absmax, code tables, nested state). Tied weights appear once.
    Tensors already on the meta device (accelerate-offloaded layers) are not the member's to move."""
    out, seen = [], set()

    def add(name, t):
        if isinstance(t, torch.Tensor) and id(t) not in seen and not t.is_meta and t.numel() > 0:
            seen.add(id(t))
            out.append((name, t))

    for name, t in model.named_parameters():
        add(name, t)
        state = getattr(t, "quant_state", None)
        if state is not None:
            for attr in ("absmax", "code", "offset"):
                add(f"{name}#qs.{attr}", getattr(state, attr, None))
            nested = getattr(state, "state2", None)
            if nested is not None:
                for attr in ("absmax", "code"):
                    add(f"{name}#qs2.{attr}", getattr(nested, attr, None))
    for name, t in model.named_buffers():
        add(name, t)
    return out


def _local_folder(source: str) -> Path | None:
    """A member's checkpoint folder on this machine: the folder itself, or a hub id's snapshot in the HF cache."""
    path = Path(source)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, local_files_only=True, allow_patterns=["*.safetensors", "*.json"]))
    except Exception:
        return None


def swap_dir() -> str:
    """Where CPU swapping spills what the checkpoint cannot give back ($TIE_LITE_SWAP_DIR, else the temp dir;
    point it at a disk when /tmp is a RAM-backed tmpfs, or spilled weights still occupy memory)."""
    import os
    import tempfile

    base = os.environ.get("TIE_LITE_SWAP_DIR") or tempfile.gettempdir()
    Path(base).mkdir(parents=True, exist_ok=True)
    return tempfile.mkdtemp(prefix="tie-lite-swap-", dir=base)


def _alias_key(t: torch.Tensor):
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


class _Released(torch.nn.Module):
    """Stands in for a member whose weights were released: computing with it is a scheduler bug, said plainly."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, *args, **kwargs):
        raise RuntimeError(f"member '{self.name}' is swapped out; the scheduler must make it resident first")


class WeightStore:
    """Where one member's weights wait while another member computes, and how they come back exactly.

    - moved (no quantization, bitsandbytes 4-bit, packed as it is): on CUDA every tensor gets a pinned host copy
      on its first release (weights never change, so later releases only drop the device copy) and comes back
      with asynchronous copies; on the CPU a release drops the tensors and a restore re-reads them from the
      checkpoint's safetensors file (each tensor verified bit-identical at the first release) or from a spill
      file written once (in $TIE_LITE_SWAP_DIR) for tensors the checkpoint does not hold as they are.
    - reloaded (bitsandbytes 8-bit, whose parameters cannot move, bitsandbytes issue 1815; quanto): the model is
      dropped and loaded again from its checkpoint, which costs a full load each time.
    Tensors keep their Python identity (`t.data` is swapped), so tied weights, bitsandbytes quantization
    states and accelerate hooks still point at the right objects after a restore."""

    def __init__(self, member: Member, spill_dir: str | Path, reload=None):
        self.member = member
        self.spill_dir = Path(spill_dir)
        self.reload_fn = reload
        self.reload = reload is not None
        self.resident = True
        self.resident_bytes = measured_footprint(member.model)
        self._tensors: list[tuple[str, torch.Tensor]] = []
        self._aliases: dict[str, str] = {}  # name -> name of the tensor whose storage it shares
        self._host: dict[str, torch.Tensor] = {}  # CUDA: pinned host copies
        self._files: dict[str, tuple[str, str]] = {}  # CPU: name -> (file, key) to re-read it from
        self._last: list | None = None  # the tensors as the last restore left them

    # first release: decide where each tensor comes back from --------------------------------------------

    @staticmethod
    def _signature(tensors) -> list:
        return [(name, id(t), t.data_ptr(), t.dtype, tuple(t.shape)) for name, t in tensors]

    def _prepare(self, tensors) -> int:
        """Record where every tensor comes back from; returns the bytes written or copied to do so."""
        self._tensors = tensors
        self._aliases, self._host, self._files = {}, {}, {}
        first: dict = {}
        unique = []
        for name, t in self._tensors:
            key = _alias_key(t)
            if key in first:
                self._aliases[name] = first[key]
            else:
                first[key] = name
                unique.append((name, t))
        moved = 0
        if self.member.device.type == "cuda":
            for name, t in unique:
                host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                host.copy_(t.detach(), non_blocking=True)  # detach: a plain view of bitsandbytes' parameter
                self._host[name] = host
                moved += t.numel() * t.element_size()
            torch.cuda.synchronize(self.member.device)
            return moved
        from safetensors.torch import save_file

        sources: dict[str, tuple[str, tuple]] = {}
        folder = _local_folder(self.member.source)
        for f in sorted(folder.glob("*.safetensors")) if folder is not None else []:
            for key, (dtype, shape) in safetensors_header(f).items():
                sources.setdefault(key, (str(f), shape))
        spill = {}
        wanted: dict[str, list[str]] = {}
        for name, t in unique:
            where = sources.get(name)
            if where is not None and tuple(t.shape) == tuple(where[1]) and t.is_contiguous():
                wanted.setdefault(where[0], []).append(name)
            else:
                spill[name] = t
        by_name = dict(unique)
        for path, names in wanted.items():  # the checkpoint serves only tensors that are bit-identical in it
            for name, on_disk in iter_safetensors(path, names):  # one at a time: no second copy of the model
                t = by_name[name]
                if on_disk.dtype == t.dtype and torch.equal(on_disk, t):
                    self._files[name] = (path, name)
                else:
                    spill[name] = t
                del on_disk
        storages: dict[int, int] = {}
        for v in spill.values():
            storages[v.untyped_storage().data_ptr()] = storages.get(v.untyped_storage().data_ptr(), 0) + 1
        spill = {  # safetensors refuses tensors that share storage: copy only those
            k: (v.detach().clone() if storages[v.untyped_storage().data_ptr()] > 1 else v.detach().contiguous())
            for k, v in spill.items()
        }
        if spill:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            path = self.spill_dir / f"{abs(hash((self.member.name, id(self)))):x}.safetensors"
            save_file({k.replace("#", "::"): v for k, v in spill.items()}, str(path))
            for name in spill:
                self._files[name] = (str(path), name.replace("#", "::"))
                moved += spill[name].numel() * spill[name].element_size()
        return moved

    # the two moves ---------------------------------------------------------------------------------------

    def release(self) -> int:
        """Free the member's weights on its device. Returns bytes copied off the device (first release only)."""
        if not self.resident:
            return 0
        moved = 0
        if self.reload:
            self.member.model = _Released(self.member.name)
        else:
            # Snapshot again if anything changed since the last restore (bitsandbytes repacks 4-bit weights
            # for its CPU kernel on the first forward, replacing the tensors it holds).
            current = _weight_tensors(self.member.model)
            if self._signature(current) != self._last:
                moved = self._prepare(current)
            for _, t in self._tensors:
                t.data = torch.empty(0, dtype=t.dtype, device=t.device)
        self.resident = False
        if self.member.device.type == "cuda":
            torch.cuda.empty_cache()
        _trim_host_heap(collect=self.reload)
        return moved

    def restore(self) -> int:
        """Bring the weights back, bit for bit. Returns the bytes placed on the device."""
        if self.resident:
            return 0
        if self.reload:
            if self.member.device.type == "cuda":
                torch.cuda.synchronize(self.member.device)
            self.member.model = self.reload_fn()
            self.resident = True
            return measured_footprint(self.member.model)
        dev = self.member.device
        restored: dict[str, torch.Tensor] = {}
        moved = 0
        if dev.type == "cuda":
            for name, t in self._tensors:
                if name in self._aliases:
                    continue
                restored[name] = self._host[name].to(dev, non_blocking=True)
            torch.cuda.synchronize(dev)
        else:
            by_file: dict[str, dict[str, str]] = {}
            for name, (path, key) in self._files.items():
                by_file.setdefault(path, {})[key] = name
            for path, names in by_file.items():
                for key, tensor in iter_safetensors(path, names):
                    restored[names[key]] = tensor
        for name, t in self._tensors:
            new = restored[self._aliases.get(name, name)]
            if name not in self._aliases:
                moved += new.numel() * new.element_size()
            t.data = new
        self._last = self._signature(self._tensors)
        self.resident = True
        return moved
