"""Mixture-of-experts pieces LLaDA2 and LLaDA-MoE compute the same way: the SwiGLU every expert is, and the
weighted sum of the routed experts' outputs (each model keeps its own router; each is checked against its
authors' code)."""

from __future__ import annotations

import torch
from torch import nn

from .layers import ACTIVATIONS


class SwiGLU(nn.Module):
    """gate_proj, up_proj, down_proj without biases: down(act(gate(x)) * up(x))."""

    def __init__(self, hidden: int, width: int, act: str):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, width, bias=False)
        self.up_proj = nn.Linear(hidden, width, bias=False)
        self.down_proj = nn.Linear(width, hidden, bias=False)
        self.act = ACTIVATIONS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


def routed_expert_sum(experts: nn.ModuleList, flat: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor,
                      dtype: torch.dtype) -> torch.Tensor:
    """sum over k of weights[t, k] * experts[chosen[t, k]](flat[t]) for tokens `flat` (tokens, hidden), with each
    expert's output and its weight cast to `dtype` and summed in `dtype` (LLaDA2: float32; LLaDA-MoE: the
    activations' dtype), returned on flat's device.

    Each expert runs once, on the tokens that picked it, in increasing expert order (as the authors' loops add
    them). The routed experts may live elsewhere than the rest (in host memory, beside a GPU: llama.cpp's
    --cpu-moe): the layer's tokens go to them once and their weighted sum comes back once."""
    where = experts[0].down_proj.weight.device
    flat_there, chosen, weights = flat.to(where), chosen.to(where), weights.to(where)
    out = torch.zeros(flat.shape[0], flat.shape[-1], dtype=dtype, device=where)
    for expert in torch.unique(chosen).tolist():
        token, slot = (chosen == expert).nonzero(as_tuple=True)
        y = experts[expert](flat_there[token]).to(dtype) * weights[token, slot, None].to(dtype)
        out.index_add_(0, token, y)
    return out.to(flat.device)
