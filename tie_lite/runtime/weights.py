"""Where a member's weights live while another member computes: measuring them, releasing them from the
device and restoring them bit for bit (whole-member swapping)."""

from __future__ import annotations

import ctypes
import gc
import os
import tempfile
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from safetensors.torch import save_file

from tie_lite.runtime.checkpoint import iter_safetensors, safetensors_header


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
        return Path(snapshot_download(source, local_files_only=True, allow_patterns=["*.safetensors", "*.json"]))
    except Exception:
        return None


def swap_dir() -> str:
    """Where CPU swapping spills what the checkpoint cannot give back ($TIE_LITE_SWAP_DIR, else the temp dir;
    point it at a disk when /tmp is a RAM-backed tmpfs, or spilled weights still occupy memory)."""

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

    def __init__(self, member, spill_dir: str | Path, reload=None):
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
