"""The memory plan for an ensemble, from config files and safetensors headers only (no weights load):
each member's estimate, the budget, and the plan the scheduler will follow; and how it reads as text."""

from __future__ import annotations

import psutil
import torch

from tie_lite.checks import format_size, parse_size
from tie_lite.engine.scoring import needs_cross_model
from tie_lite.errors import UserError
from tie_lite.runtime.scheduler import EXPERTS_ON_HOST, Need, Plan, make_plan
from tie_lite.runtime.sizes import SizeEstimate, estimate_member

DEFAULT_PROMPT_LENGTH = 64


def device_budget(device: str) -> tuple[int, str]:
    """The memory a run may use when no --max-memory is given: free GPU memory, or available RAM on the CPU."""
    if device == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu, or give "
                            "--max-memory to plan for a GPU elsewhere")
        free, _ = torch.cuda.mem_get_info()
        return int(free), "free device memory"

    return int(psutil.virtual_memory().available), "available RAM"


def resolve_plan_device(device: str, has_budget: bool) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise UserError(f"unknown --device '{device}'; use cpu, cuda or auto")
    if device == "cuda" and not has_budget:
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu, or give "
                            "--max-memory to plan for a GPU elsewhere")
    return device


def needs_for(estimates: list[SizeEstimate], total_len: int, batch: int) -> list[Need]:
    return [
        Need(name=e.name, weight_bytes=e.weight_bytes, working_bytes=e.working_bytes(total_len, batch),
             layer_bytes=e.layer_bytes, reload=e.reload, source_bytes=e.source_bytes, expert_bytes=e.expert_bytes,
             host_step_bytes=e.host_step_bytes(total_len, batch))
        for e in estimates
    ]


def build_plan(models: list[str], *, quant: str = "none", backend: str = "bitsandbytes", device: str = "cpu",
               max_memory: str | int | None = None, gen_length: int = 48, prompt_length: int = DEFAULT_PROMPT_LENGTH,
               score: str = "tcc", select: str | None = None, dtype: str = "auto") -> tuple[Plan, list[SizeEstimate]]:
    """Estimates for every member and the plan for them, without loading any weights."""
    if not models:
        raise UserError("give at least one --model")
    if gen_length < 1 or prompt_length < 0:
        raise UserError("--gen-length must be at least 1 and --prompt-length at least 0")
    budget = parse_size(max_memory)
    device = resolve_plan_device(device, budget is not None)
    source = "--max-memory"
    if budget is None:
        budget, source = device_budget(device)
    estimates = [estimate_member(spec, quant=quant, backend=backend, device=device, dtype=dtype) for spec in models]
    cross = needs_cross_model(score, len(models), select)
    batch = len(models) if cross else 1
    needs = needs_for(estimates, prompt_length + gen_length, batch)
    plan = make_plan(needs, budget, device=device, budget_source=source, cross_model=cross, quant=quant)
    if any(not e.exact for e in estimates):
        plan.warnings.append("sizes marked ~ come from config fields alone (no safetensors header was readable): "
                             "approximate")
    return plan, estimates


def _count(n: int) -> str:
    """A parameter count as people say it: 16.3B, 1.43B, 220K."""
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def render(plan: Plan, estimates: list[SizeEstimate], total_len: int, batch: int, status: list[str] | None = None) -> str:
    m = len(plan.needs)
    lines = [f"memory plan: {m} member{'s' * (m != 1)} on {plan.device}, budget {format_size(plan.budget_bytes)} "
             f"({plan.budget_source})", ""]
    status = status or ["native"] * m
    rows = [("member", "loads", "params (active)", "quant", "weights", "working", "largest layer", "placement")]
    for need, est, place, how in zip(plan.needs, estimates, plan.placement, status):
        mark = "" if est.exact else "~"
        params = _count(est.total_params) + (f" ({_count(est.active_params)})" if est.expert_bytes else "")
        rows.append((need.name, how.split(":")[0], params, est.quant, mark + format_size(need.weight_bytes),
                     format_size(need.working_bytes), mark + format_size(need.layer_bytes),
                     place + (" (reload)" if need.reload and place != "resident" else "")))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    lines.append("")
    vocab = max(e.dims["vocab"] for e in estimates)
    lines.append(f"working memory: {format_size(plan.working_bytes)} for one forward of {batch} canvas"
                 f"{'es' * (batch != 1)} x {total_len} positions (largest vocabulary {vocab:,} tokens)")
    lines.append(f"weights: {format_size(plan.total_weight_bytes)} in all; room for weights under the budget: "
                 f"{format_size(max(0, plan.capacity_bytes))}")
    hosted = [n.name for n, p in zip(plan.needs, plan.placement) if p == EXPERTS_ON_HOST]
    if hosted:
        lines.append(f"experts on the host: {', '.join(hosted)} -- routed experts in host memory, computed there; "
                     f"about {format_size(plan.host_step_bytes)} of activations cross per forward")
    if plan.strategy == "resident":
        what = "what each member keeps on the device stays there" if hosted else "every member stays on the device"
        lines.append(f"strategy: resident -- {what}; no swaps")
    else:
        names = [n.name for n in plan.needs]
        snake = " | ".join(" ".join(names[i] for i in o) for o in plan.orders[:3])
        what = "decode then cross-model scoring" if plan.cross_model else "decode"
        lines.append(f"strategy: {plan.strategy} -- whole members move on and off the device "
                     f"({'layer offload for the members marked offload' if plan.strategy == 'offload' else 'one at a time when only one fits'})")
        lines.append(f"order per round ({what}): {snake} ...")
        per = f"{plan.swaps_per_round} swap{'s' * (plan.swaps_per_round != 1)} per round"
        if not plan.cross_model and m > 1:
            per += f" (M-1 = {m - 1} when one member fits at a time)"
        lines.append(f"expected: {per}, moving about {format_size(plan.bytes_per_round)} a round"
                     + (f"; {plan.reloads_per_round} of them reload from disk" if plan.reloads_per_round else ""))
    for need, how in zip(plan.needs, status):
        if how.startswith("cannot load"):
            lines.append(f"warning: {need.name} {how}")
    for w in plan.warnings:
        lines.append(f"warning: {w}")
    return "\n".join(lines)
