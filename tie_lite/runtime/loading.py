"""Model spec -> loaded ensemble member: family facts, quantization, device placement, tokenizer."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field, replace

import psutil
import torch
import transformers

from tie_lite.checks import BACKENDS, DTYPES, QUANTS, check_choice, check_device
from tie_lite.engine.layout import check_prompt_chars
from tie_lite.engine.process import PositionLogits, Row
from tie_lite.engine.uniform import Denoise, DenoisingSettings
from tie_lite.errors import UserError
from tie_lite.families import Family
from tie_lite.models.cache import CanvasCache
from tie_lite.runtime.checkpoint import checked_family, checkpoint_tensors, read_config, weight_files
from tie_lite.runtime.denoising import denoise, denoising_settings
from tie_lite.runtime.registry import resolve
from tie_lite.runtime.weights import measured_footprint


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
    denoising: DenoisingSettings | None = None  # a uniform-noise member's sampler (engine/uniform.py); None: masked
    recipe: dict = field(default_factory=dict)  # the decode settings its authors' code uses (engine/recipe.py)

    @torch.no_grad()
    def logits(self, ids: torch.Tensor, blocks: list[tuple[int, int]] | None = None) -> torch.Tensor:
        """float32 logits for a (batch, length) canvas; the prediction for position i at index i."""
        out = self.model(input_ids=ids.to(self.device), **self._block_kwargs(blocks)).logits
        return self.family.align(out, self.shifted).float()

    def _block_kwargs(self, blocks: list[tuple[int, int]] | None) -> dict:
        """What a block-causal model's forward needs to know of the canvases' blocks (nothing for the others)."""
        if not self.family.block_causal or blocks is None:
            return {}
        return dict(block_size=blocks[0][1], block_start=torch.tensor([start for start, _ in blocks], device=self.device))

    @property
    def caches(self) -> bool:
        """The project's own model classes keep KV caches and compute logits at chosen positions only."""
        return self.family.native_module is not None

    @property
    def block_causal(self) -> bool:
        """Block diffusion (LLaDA2): finished blocks never see later ones, so their cached keys and values are final."""
        return self.caches and self.family.block_causal

    def read_positions(self, positions: torch.Tensor) -> torch.Tensor:
        """The model outputs holding the predictions for canvas `positions` (Dream-style: one to the left)."""
        return (positions - 1).clamp_min(0) if self.shifted else positions

    @torch.no_grad()
    def forward(self, request) -> list[Row]:
        """Compute a drive.Forward: float32 logits at each row's `need` positions (all positions when None),
        and each row's KV cache when asked to store one."""
        if isinstance(request, Denoise):
            return denoise(self.model, request)
        ids, lengths = request.ids, request.lengths
        padded = len(set(lengths)) > 1 or lengths[0] != ids.shape[1]
        mixed_blocks = self.family.block_causal and request.blocks and len({b[1] for b in request.blocks}) > 1
        if mixed_blocks or (padded and (request.need is None or not self.caches)):  # one canvas at a time
            def row(r):
                return None if getattr(request, r) is None else getattr(request, r)[k : k + 1]
            rows = []
            for k, n in enumerate(lengths):
                one = replace(request, ids=ids[k : k + 1, :n], need=row("need"), caches=row("caches"),
                              query=row("query"), canvas_lengths=None, blocks=row("blocks"))
                rows.append(self.forward(one)[0])
            return rows
        block_kwargs = self._block_kwargs(request.blocks)
        if request.need is None:
            return [Row(row, None) for row in self.logits(ids, request.blocks)]
        if not self.caches:  # remote code: whole-canvas logits, then the positions asked for
            full = self.logits(ids)
            return [Row(PositionLogits(n, full[r, n])) for r, n in enumerate(request.need)]
        reads = [self.read_positions(n) for n in request.need]
        kwargs = dict(store_cache=request.store)
        if padded:  # rows of different lengths: the padding (of canvases and caches) is never attended
            keep = torch.arange(ids.shape[1])[None] < torch.tensor(lengths)[:, None]
            kwargs["attention_mask"] = keep.to(self.device)
        if request.caches is not None:  # recompute the query positions (and those the logits read) only
            queries = [torch.unique(torch.cat([q, rd])) for q, rd in zip(request.query, reads)]
            query = _padded(queries)
            at = _padded([torch.searchsorted(q, rd) for q, rd in zip(queries, reads)])
            inputs = ids.gather(1, query)  # a row's queries lie within its canvas: never the padding id
            kwargs.update(position_ids=query.to(self.device),
                          canvas_cache=CanvasCache.stack(request.caches, width=ids.shape[1]))
        else:
            inputs, at = ids, _padded(reads)
            if padded:  # and the padding is never a token id
                inputs = inputs.masked_fill(~keep, self.mask_id)
        out = self.model(input_ids=inputs.to(self.device), logits_at=at.to(self.device), **kwargs, **block_kwargs)
        logits = out.logits.float()
        caches = out.canvas_cache.rows(lengths) if request.store else [None] * len(reads)
        return [Row(PositionLogits(n, logits[r, : n.numel()]), caches[r]) for r, n in enumerate(request.need)]

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        check_prompt_chars(messages, self.max_length, self.name)  # before tokenizing: a huge prompt costs nothing
        return self.family.prompt_ids(self.tokenizer, messages)

    def token_counts(self, messages: list[dict], text: str) -> tuple[int, int]:
        """Prompt and completion tokens, as an API's usage reports them."""
        return len(self.prompt_ids(messages)), len(self.tokenizer.encode(text, add_special_tokens=False))


def _padded(rows: list[torch.Tensor]) -> torch.Tensor:
    """Index rows of different lengths as one (rows, longest) tensor, each padded with its own last index."""
    width = max(max(r.numel() for r in rows), 1)
    return torch.stack([torch.cat([r, r[-1:].expand(width - r.numel())]) if r.numel() else torch.zeros(width, dtype=torch.long)
                        for r in rows])

def tokenizer_key(tokenizer) -> str:
    """Members with equal keys share a vocabulary, so canvases relay between them id for id."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha1(json.dumps(vocab).encode()).hexdigest()


def resolve_device(device: str) -> torch.device:
    """cpu | cuda | cuda:N | auto -> a torch device that exists here."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if check_device(device).startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device} was asked for but no CUDA GPU is visible; use --device cpu or auto")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                            f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return torch.device(device)


def compute_dtype(choice: str, device: torch.device):
    """--dtype -> what from_pretrained gets. auto: bfloat16 on CUDA; on the CPU the checkpoint's own dtype
    (float32 for the shipped members, bfloat16 for LLaDA and Dream hub checkpoints)."""
    check_choice(choice, DTYPES, "--dtype")
    if choice == "auto":
        return torch.bfloat16 if device.type == "cuda" else "auto"
    return getattr(torch, choice)


def quantization_config(quant: str, backend: str, device: torch.device, dtype: str = "auto"):
    if quant not in QUANTS:
        raise UserError(f"unknown --quant '{quant}'; use one of {', '.join(QUANTS)}")
    if backend not in BACKENDS:
        raise UserError(f"unknown --quant-backend '{backend}'; use one of {', '.join(BACKENDS)}")
    if quant == "none":
        return None
    if backend == "quanto":
        try:
            import optimum.quanto  # noqa: F401  (an optional extra: is it installed?)
        except ImportError:
            raise UserError("--quant-backend quanto needs optimum-quanto: pip install 'tie-lite[quanto]'") from None
        return transformers.QuantoConfig(weights="int8" if quant == "8bit" else "int4")
    try:
        import bitsandbytes  # noqa: F401  (only quantized loads need it, and it can fail to load on a host)
    except Exception as exc:
        raise UserError(
            f"--quant {quant} needs bitsandbytes, which does not load here ({exc}); "
            f"use --quant none or --quant-backend quanto"
        ) from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"bitsandbytes cannot quantize on {device.type}; use --quant-backend quanto")
    if quant == "8bit":
        return transformers.BitsAndBytesConfig(load_in_8bit=True)
    compute = compute_dtype(dtype, device)
    compute = compute if compute != "auto" else torch.float32  # 4-bit kernels compute in float32 on the CPU
    return transformers.BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
    )


def loadable(spec: str, *, trust_remote_code: bool = False, allow_pickle: bool = False) -> tuple[str, str, Family]:
    """(name, source, family) of a checkpoint that may be loaded as asked, from its files alone; else the
    UserError that says why not (remote code not trusted, pickle weights not allowed, a damaged config)."""
    name, source = resolve(spec)
    config = read_config(source, name)
    family = checked_family(config, name)
    family.check_checkpoint(config, source, lambda: checkpoint_tensors(source), name)  # headers only if asked
    if family.trust_remote_code and not trust_remote_code:
        raise UserError(
            f"model '{name}' is an architecture tie-lite does not implement (model_type "
            f"'{str(config.get('model_type'))[:40]}'); loading it runs Python code shipped with the checkpoint: "
            f"pass --trust-remote-code if you trust its source"
        )
    files = weight_files(source)
    has_safetensors = any(f.endswith(".safetensors") for f in files)
    if files and not has_safetensors and not allow_pickle:
        raise UserError(
            f"model '{name}' has only pickle weights (.bin), which can run arbitrary code when loaded; "
            f"convert them to safetensors or pass --allow-pickle"
        )
    return name, source, family


def load_status(spec: str, *, trust_remote_code: bool = False, allow_pickle: bool = False) -> str:
    """How a member will load, for `tie-lite plan`: native, remote code, or cannot load (and why)."""
    try:
        _, _, family = loadable(spec, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    except UserError as exc:
        return f"cannot load: {exc}"
    return "remote code" if family.trust_remote_code else "native"


def load_member(
    spec: str,
    *,
    quant: str = "none",
    backend: str = "bitsandbytes",
    device: str = "cpu",
    dtype: str = "auto",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    offload: dict | None = None,
) -> Member:
    """A loaded member; with `offload` (from_pretrained kwargs: device_map, max_memory, offload_folder) one whose
    layers accelerate spreads over the device, host memory and disk."""
    start = time.perf_counter()
    name, source, family = loadable(spec, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    dev = resolve_device(device)
    qconfig = quantization_config(quant, backend, dev, dtype)
    kwargs = dict(trust_remote_code=family.trust_remote_code, use_safetensors=None if allow_pickle else True)
    if qconfig is not None:
        kwargs.update(quantization_config=qconfig, device_map={"": str(dev)})
    kwargs["dtype"] = compute_dtype(dtype, dev)
    if offload is not None:
        if qconfig is not None and backend == "bitsandbytes":  # offloaded layers stay unquantized (the plan warns)
            qconfig.llm_int8_enable_fp32_cpu_offload = True
        kwargs.update(offload)
    try:
        model, info = family.model_loader().from_pretrained(source, output_loading_info=True, **kwargs)
        missing = list(info.get("missing_keys") or []) + [k[0] if isinstance(k, tuple) else k
                                                         for k in info.get("mismatched_keys") or []]
        if family.native_module is not None:  # our own classes know every weight a checkpoint of theirs holds
            missing += list(info.get("unexpected_keys") or [])
        if missing:  # transformers would start these at random: a silently wrong member
            raise UserError(f"cannot load model '{name}': {len(missing)} of its weights do not fit the {family.name} "
                            f"architecture (missing, unexpected or mis-shaped, e.g. "
                            f"{sorted(missing)[0]}); it is damaged or not a {family.name} checkpoint")
        tokenizer = family.load_tokenizer(source, trust_remote_code=family.trust_remote_code)
        if not family.eos_token_ids and tokenizer.eos_token_id is None:
            raise UserError(f"cannot load model '{name}': its tokenizer names no end-of-text token (eos_token), "
                            f"which tie-lite needs to end a response")
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
    sizes = hf_config.get_text_config()  # the config itself, or a composite's text part (DiffusionGemma)
    max_length = getattr(sizes, "max_position_embeddings", None) or getattr(sizes, "max_sequence_length", None)
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
    member.recipe = family.checkpoint_recipe(source, hf_config)
    if family.uniform_noise:
        member.denoising = denoising_settings(model)
    return member


def load_member_experts_on_host(spec: str, *, device: str, **kwargs) -> Member:
    """A mixture-of-experts member whose routed experts stay in host memory and compute there (llama.cpp's
    --cpu-moe), everything else on `device`: it loads on the CPU (quantized there when asked) and every leaf
    module that is not a routed expert moves to the device; the model sends each MoE layer's tokens to its
    experts and takes their sum back (a module that holds routed experts as tensors of its own, as transformers'
    fused experts do, gets its inputs moved to the host and its output moved back)."""
    member = load_member(spec, **{**kwargs, "device": "cpu"})
    if not member.family.routed_experts(read_config(member.source, member.name)):
        raise UserError(f"model '{member.name}' has no routed experts to keep on the host")
    dev = resolve_device(device)
    for name, module in member.model.named_modules():
        if member.family.is_routed_expert(name + "."):
            if any(True for _ in module.parameters(recurse=False)):
                compute_on_host(module)
        elif not list(module.children()):
            module.to(dev)
    member.device = dev
    return member


def compute_on_host(module: torch.nn.Module) -> None:
    """Run `module` where its weights are (the host): its tensor inputs go there, and its output returns to the
    device its first input came from."""
    host = next(module.parameters()).device
    caller: list[torch.device] = []

    def to_host(_, args, kwargs):
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        caller[:] = [first.device if first is not None else host]
        move = lambda v: v.to(host) if isinstance(v, torch.Tensor) else v  # noqa: E731
        return tuple(move(a) for a in args), {k: move(v) for k, v in kwargs.items()}

    def back(_, args, kwargs, output):
        return output.to(caller[0]) if isinstance(output, torch.Tensor) else output

    module.register_forward_pre_hook(to_host, with_kwargs=True)
    module.register_forward_hook(back, with_kwargs=True)


def load_member_offloaded(
    spec: str,
    *,
    device_bytes: int,
    offload_folder: str,
    quant: str = "none",
    backend: str = "bitsandbytes",
    device: str = "cpu",
    dtype: str = "auto",
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
        max_memory = {dev.index or 0: int(device_bytes), "cpu": int(psutil.virtual_memory().available * 0.9)}
    offload = dict(device_map="auto", max_memory=max_memory, offload_folder=offload_folder, offload_buffers=False)
    return load_member(spec, quant=quant, backend=backend, device=device, dtype=dtype,
                       trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, offload=offload)
