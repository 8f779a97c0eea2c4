"""A member's memory needs before it loads: weight bytes at a quantization on a device (from safetensors
headers, or config fields alone) and the working memory of one forward."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tie_lite.checks import QUANTS
from tie_lite.errors import UserError
from tie_lite.runtime.checkpoint import (
    _BLOCK,
    _FLOAT,
    DTYPE_BYTES,
    checked_family,
    checkpoint_tensors,
    model_dims,
    read_config,
)
from tie_lite.runtime.registry import resolve


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
        if dims.get("experts"):  # routed experts (gated): memory counts them all, though few compute per token
            e, m = dims["experts"], dims["expert_intermediate"]
            t.update({p + "experts.gate_up": (dt, (e, 2 * m, h)), p + "experts.down": (dt, (e, h, m))})
    return t


_LOADED_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def tensor_device_bytes(name: str, dtype: str, shape: tuple[int, ...], quant: str, device: str,
                        load_dtype: str = "auto", quantizable: bool | None = None) -> int:
    """Bytes one checkpoint tensor occupies on `device` once loaded at `quant`. Linear weights inside the numbered
    blocks are what bitsandbytes quantizes; embeddings, norms and the output head keep their dtype.
    `quantizable`: the family's own answer where its load departs from that rule (Family.quantized_weight)."""
    numel = math.prod(shape) if shape else 1
    if quantizable is None:
        quantizable = len(shape) == 2 and name.endswith(".weight") and _BLOCK.match(name) is not None
    quantized = quant != "none" and quantizable
    if quantized and quant == "8bit":
        return numel + 4 * shape[0]  # int8 weights + one float32 scale per output row
    if quantized and quant == "4bit":
        blocks = math.ceil(numel / 64)
        return math.ceil(numel / 2) + blocks + 4 * math.ceil(blocks / 256) + 1024 + 64  # NF4 + double-quant absmax
    size = DTYPE_BYTES.get(dtype, 4)
    if dtype in _FLOAT and load_dtype != "auto":
        size = _LOADED_BYTES[load_dtype]  # --dtype converts every float tensor
    elif device == "cuda" and dtype in _FLOAT:
        size = 2  # auto: loaded in bfloat16 on the GPU
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
    total_params: int = 0
    active_params: int = 0  # per token: a mixture of experts computes only its routed share of the experts
    expert_bytes: int = 0  # the routed experts' weights on the device (what experts-on-host leaves on the host)
    moe_layers: int = 0
    step_positions: int = 0  # positions every forward computes whatever the lengths (a uniform-noise canvas); 0: all

    def host_step_bytes(self, total_len: int, batch: int = 1) -> int:
        """Bytes that cross between device and host per forward when the routed experts stay on the host and
        compute there (llama.cpp's --cpu-moe): each MoE layer's input goes to the host and its output comes
        back, for every position of the canvas (an upper bound: cached forwards send fewer). A uniform-noise
        member's denoising forward computes its canvas alone (the prompt is encoded once, before it)."""
        act = 2 if self.device == "cuda" else 4
        positions = self.step_positions or total_len
        return 2 * self.moe_layers * batch * positions * self.dims["hidden"] * act

    def working_bytes(self, total_len: int, batch: int = 1, read: int | None = None, cache: bool = False) -> int:
        """Transient memory of one forward over `batch` canvases of `total_len` positions, plus the sampler's
        float work on its output. Logits dominate for 126k-152k vocabularies: they are computed at the `read`
        positions a step reads (all of them when not told). With `cache`, each canvas's kept keys and values
        (the block's and the round's first) count too."""
        d = self.dims
        act = 2 if self.device == "cuda" else (2 if d["dtype"] in ("bfloat16", "float16") and self.quant == "none" else 4)
        b, n = batch, max(total_len, self.step_positions)
        r = n if read is None else min(n, read)
        logits = b * r * d["vocab"] * (4 + (act if act != 4 else 0))
        kept = 2 * 2 * d["layers"] * d["kv_heads"] * (d["hidden"] // max(1, d["heads"])) * n * act if cache else 0
        states = b * n * (6 * d["hidden"] + 3 * d["intermediate"]) * act
        attention = b * d["heads"] * n * n * 4
        sampler = min(n, 32) * d["vocab"] * 8  # float32 softmax + float64 Gumbel noise over one block's candidates
        dequant = d["hidden"] * max(d["hidden"], d["intermediate"]) * act if self.quant != "none" else 0
        return int(logits + states + attention + sampler + dequant + b * kept)


def estimate_member(spec: str, *, quant: str = "none", backend: str = "bitsandbytes", device: str = "cpu",
                    dtype: str = "auto") -> SizeEstimate:
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
        tensors = family.config_tensors(config) or _synthetic_tensors(dims)
    if exact and not dims["dtype"]:
        dims["dtype"] = "float32"
    weight = source_bytes = params = expert_params = expert_bytes = 0
    moe_layers: set[str] = set()
    units: dict[str, int] = {}
    load_dtype = dtype
    if load_dtype != "auto":
        dims["dtype"] = load_dtype
    for tname, (dtype, shape) in tensors.items():
        on_device = tensor_device_bytes(tname, dtype, shape, quant, device, load_dtype,
                                        family.quantized_weight(tname, shape))
        weight += on_device
        numel = math.prod(shape) if shape else 1
        source_bytes += numel * DTYPE_BYTES.get(dtype, 4)
        params += numel if dtype in _FLOAT else 0
        m = _BLOCK.match(tname)
        if family.is_routed_expert(tname):
            expert_params += numel
            expert_bytes += on_device
            moe_layers.add(m.group(1) if m else tname)
        unit = m.group(1) if m else tname.rsplit(".", 1)[0]
        units[unit] = units.get(unit, 0) + on_device
    routed = family.routed_experts(config)
    active = params - expert_params + (expert_params * routed[0] // routed[1] if routed else expert_params)
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
        total_params=params,
        active_params=active,
        expert_bytes=expert_bytes,
        moe_layers=len(moe_layers),
        step_positions=family.step_positions(config) or 0,
    )
