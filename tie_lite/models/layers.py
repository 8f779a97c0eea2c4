"""Pieces LLaDA, LLaDA2, LLaDA-MoE, Dream and the block-diffusion models compute the same way (each checked
against its authors' code)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu}  # the MLP activations the configs may name


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """RoPE's rotation of the two halves of each head: (x1, x2) -> (-x2, x1)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotary_cos_sin(position_ids: torch.Tensor, rotary_dim: int, theta: float,
                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (batch, 1, length, rotary_dim) as transformers' default RoPE computes them (LLaDA2,
    LLaDA-MoE): inverse frequencies `1 / theta ** (arange(0, rot, 2) / rot)` in float32, angles of
    `cat(freqs, freqs)` in float32, cast to `dtype`."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32, device=position_ids.device)
                                / rotary_dim))
    angles = position_ids.float()[..., None] * inv_freq
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


def rotate_partial(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE over the first cos.shape[-1] dimensions of each head (all of them when that is head_dim); the rest
    pass through. Computed in t's dtype."""
    rot = cos.shape[-1]
    if rot == t.shape[-1]:
        return t * cos + rotate_half(t) * sin
    head, rest = t[..., :rot], t[..., rot:]
    return torch.cat((head * cos + rotate_half(head) * sin, rest), dim=-1)


class RMSNorm(nn.Module):
    """RMSNorm computed in float32, cast back to the input dtype, then weight * x (+ bias, LLaDA's option)."""

    def __init__(self, size: int, eps: float, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.bias = nn.Parameter(torch.zeros(size)) if bias else None
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        h = self.weight * h.to(dtype)
        return h + self.bias if self.bias is not None else h


def sdpa_mask(mask, batch: int, length: int) -> torch.Tensor | None:
    """SDPA's mask from what callers pass: None (or Dream's "full") for no padding; a (batch, length) 0/1 padding
    mask (padded keys are never attended); or a ready 4-D boolean / additive mask, used as it is."""
    if mask is None or not isinstance(mask, torch.Tensor):
        return None
    if mask.dim() == 2:
        if tuple(mask.shape) != (batch, length):
            raise ValueError(f"attention_mask of shape {tuple(mask.shape)} does not match the input ({batch}, {length})")
        keep = mask.to(torch.bool)
        return None if bool(keep.all()) else keep[:, None, None, :]
    if mask.dim() == 4:
        return mask
    raise ValueError(f"attention_mask must be (batch, length) or 4-D, not {tuple(mask.shape)}")


def block_causal_mask(query_positions: torch.Tensor, key_length: int, block_size: int,
                      block_start: torch.Tensor) -> torch.Tensor:
    """(batch, 1, queries, keys) boolean: key k is seen from query q when block(k) <= block(q), with
    block(p) = floor((p - block_start) / block_size) per row (block diffusion: LLaDA2, SDAR, Fast-dLLM v2)."""
    start = block_start.to(query_positions.device).view(-1, 1)
    q_block = torch.div(query_positions - start, block_size, rounding_mode="floor")
    keys = torch.arange(key_length, device=query_positions.device)[None]
    k_block = torch.div(keys - start, block_size, rounding_mode="floor")
    return (k_block[:, None, :] <= q_block[:, :, None])[:, None]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, heads: int, kv_heads: int,
           scale: float | None = None) -> torch.Tensor:
    """Bidirectional attention of q (batch, heads, length, head_dim) over k, v (batch, kv_heads, keys, head_dim),
    as (batch, length, heads * head_dim) for the output projection. No causal mask: a masked diffusion model
    reads the whole canvas (`mask` carries padding or block structure). `scale` None is SDPA's own 1/sqrt(head_dim)."""
    if kv_heads != heads:  # grouped-query attention: query head h reads key/value head h // group
        group = heads // kv_heads
        k = k.repeat_interleave(group, dim=1, output_size=heads)
        v = v.repeat_interleave(group, dim=1, output_size=heads)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    b, _, t, head_dim = q.shape
    return out.transpose(1, 2).reshape(b, t, heads * head_dim)


def rope_type(rope_scaling) -> str:
    """The RoPE variant a config's `rope_scaling` names ("default" when none); the configs keep this instead of
    rope_scaling itself, which transformers 5 reinterprets."""
    if not rope_scaling:
        return "default"
    if not isinstance(rope_scaling, dict):
        return str(rope_scaling)[:40]
    return str(rope_scaling.get("rope_type", rope_scaling.get("type")) or "default")
