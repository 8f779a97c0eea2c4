"""Reading a checkpoint without loading it: config.json (checked), weight file names, safetensors headers
and tensors read straight from those files. Local folders and hub ids (through the HF cache) alike."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import struct
from pathlib import Path

import torch
from huggingface_hub import (
    get_safetensors_metadata,
    hf_hub_download,
    list_repo_files,
    try_to_load_from_cache,
)

from tie_lite.checks import MAX_LENGTH, shown
from tie_lite.errors import UserError
from tie_lite.families import Family, family_for


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
        raw = Path(hf_hub_download(source, "config.json", **hub_options())).read_bytes()
    except Exception as exc:  # offline, unknown repo, gated, no network: all mean the same to the user
        raise UserError(
            f"cannot fetch model '{source}' ({type(exc).__name__}); download it first with "
            f"`hf download {source}` (huggingface_hub's command) on a connected machine, or pass a local folder"
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


def hub_options() -> dict:
    """Hub lookups fail fast instead of retrying for half a minute: offline (HF_HUB_OFFLINE, or the hub is not
    reachable within two seconds) only the local cache is asked."""

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return {"local_files_only": True}
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    host, _, port = endpoint.partition(":")
    try:
        socket.create_connection((host, int(port or 443)), timeout=2).close()
    except (OSError, ValueError):
        return {"local_files_only": True}
    return {}


CONFIG_LIMITS = dict(hidden=1 << 17, intermediate=1 << 20, heads=1 << 12, kv_heads=1 << 12, layers=1 << 11,
                     vocab=1 << 23)


def _cfg(config: dict, *names, default=None):
    for name in names:
        value = config.get(name)
        if value is not None:
            return value
    return default


def model_dims(config: dict) -> dict:
    """The few config facts working memory depends on, across the naming schemes of the families."""
    if isinstance(config.get("text_config"), dict):  # composite configs (DiffusionGemma) keep the sizes there
        config = {**config, **config["text_config"], "model_type": config.get("model_type")}
    hidden = int(_cfg(config, "hidden_size", "d_model", "n_embd", default=0))
    ratio = _cfg(config, "mlp_ratio")
    inter = _cfg(config, "intermediate_size", "mlp_hidden_size", "n_inner", "dense_intermediate_size")
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
        experts=int(_cfg(config, "num_experts", default=0)),  # routed experts per layer (mixture of experts)
        expert_intermediate=int(_cfg(config, "moe_intermediate_size", "expert_intermediate_size", default=0)),
    )


def checked_family(config: dict, name: str) -> Family:
    """The family of a parsed config.json, after checking the fields tie-lite reads from it are usable."""
    family = family_for(config.get("model_type"), source=name, config=config)
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
    check_context_fields(config, name)
    if family.mask_token_id is None and not family.uniform_noise:  # read from the checkpoint (tiny, remote code)
        mask = config.get("mask_token_id")
        if isinstance(mask, bool) or not isinstance(mask, int) or not 0 <= mask < dims["vocab"]:
            raise UserError(f"model '{name}': config.json has no usable mask_token_id (got {mask!r}); a masked "
                            f"diffusion checkpoint names the token it denoises from")
    return family


# The context lengths tie-lite reads (loading.py: the member's context; LLaDA: its rotary table's length), and
# length fields other architectures size tables by: a value past MAX_LENGTH would allow prompts of terabytes, or
# build a table that hangs the load before anything fails.
CONTEXT_FIELDS = ("max_position_embeddings", "max_sequence_length")
OTHER_LENGTH_FIELDS = ("n_positions", "seq_length", "max_seq_len", "max_seq_length", "n_ctx")


def check_context_fields(config: dict, name: str) -> None:
    """The context length fields of config.json (of its text_config, for composite configs): the ones tie-lite
    reads must be positive whole numbers; none may be past MAX_LENGTH. One line naming the field otherwise."""
    composite = isinstance(config.get("text_config"), dict)
    sizes, prefix = (config["text_config"], "text_config.") if composite else (config, "")
    for field in CONTEXT_FIELDS + OTHER_LENGTH_FIELDS:
        value = sizes.get(field)
        if value is None:
            continue
        whole = isinstance(value, int) and not isinstance(value, bool)
        if field in CONTEXT_FIELDS and (not whole or value <= 0):
            raise UserError(f"model '{name}': config.json gives {prefix}{field} {shown(json.dumps(value))}, not a "
                            f"positive whole number of positions; re-download or re-save the checkpoint")
        if whole and value > MAX_LENGTH:
            raise UserError(f"model '{name}': config.json gives {prefix}{field} {value}, far beyond any known "
                            f"model's context (LLaDA has 4096 positions, Dream 32768; at most {MAX_LENGTH}); "
                            f"re-download or re-save the checkpoint")


def weight_files(source: str) -> list[str]:
    path = Path(source)
    if path.is_dir():
        return [p.name for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth")]
    if hub_options().get("local_files_only"):
        return []
    try:
        return list_repo_files(source)
    except Exception:
        return []  # offline with a cached copy: from_pretrained(use_safetensors=...) still guards pickle


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

        meta = get_safetensors_metadata(source)
        for fmeta in meta.files_metadata.values():
            for name, info in fmeta.tensors.items():
                tensors[name] = (info.dtype, tuple(info.shape))
        return tensors
    except Exception:
        pass
    try:  # offline: a copy in the Hugging Face cache

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
