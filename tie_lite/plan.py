"""`tie-lite plan`: the memory plan, printed before anything loads (config files and safetensors headers only)."""

from __future__ import annotations

import json

from .errors import UserError
from .loading import load_status
from .sizes import SizeEstimate, estimate_member
from .options import add_model_args, check_choice, check_lengths, check_load_args, default_score, member_devices, whole
from .scoring import check_score, needs_cross_model
from .tie import SELECTIONS
from .scheduler import Need, Plan, format_size, make_plan, parse_size

DEFAULT_PROMPT_LENGTH = 64


def device_budget(device: str) -> tuple[int, str]:
    """The memory a run may use when no --max-memory is given: free GPU memory, or available RAM on the CPU."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu, or give "
                            "--max-memory to plan for a GPU elsewhere")
        free, _ = torch.cuda.mem_get_info()
        return int(free), "free device memory"
    import psutil

    return int(psutil.virtual_memory().available), "available RAM"


def resolve_plan_device(device: str, has_budget: bool) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise UserError(f"unknown --device '{device}'; use cpu, cuda or auto")
    if device == "cuda" and not has_budget:
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu, or give "
                            "--max-memory to plan for a GPU elsewhere")
    return device


def needs_for(estimates: list[SizeEstimate], total_len: int, batch: int) -> list[Need]:
    return [
        Need(name=e.name, weight_bytes=e.weight_bytes, working_bytes=e.working_bytes(total_len, batch),
             layer_bytes=e.layer_bytes, reload=e.reload, source_bytes=e.source_bytes)
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


def render(plan: Plan, estimates: list[SizeEstimate], total_len: int, batch: int, status: list[str] | None = None) -> str:
    m = len(plan.needs)
    lines = [f"memory plan: {m} member{'s' * (m != 1)} on {plan.device}, budget {format_size(plan.budget_bytes)} "
             f"({plan.budget_source})", ""]
    status = status or ["native"] * m
    rows = [("member", "loads", "quant", "weights", "working", "largest layer", "placement")]
    for need, est, place, how in zip(plan.needs, estimates, plan.placement, status):
        mark = "" if est.exact else "~"
        rows.append((need.name, how.split(":")[0], est.quant, mark + format_size(need.weight_bytes),
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
    if plan.strategy == "resident":
        lines.append("strategy: resident -- every member stays on the device; no swaps")
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


def cmd_plan(args) -> int:
    models = args.model or list(_default_models())
    check_load_args(args)
    if args.device and len(args.device) > 1:
        raise UserError("tie-lite plan plans the members on one device; give --device once (members placed one "
                        "per device each need only fit their own)")
    if args.score is None:
        args.score = default_score(len(models))
    for score in args.score.split(","):
        check_score(score, len(models))
    check_choice(args.select, [s for s in SELECTIONS if s != "oracle"], "--select")
    check_lengths({"--gen-length": args.gen_length, "--prompt-length": args.prompt_length})
    plan, estimates = build_plan(models, quant=args.quant, backend=args.quant_backend, device=member_devices(args)[0],
                                 max_memory=args.max_memory, gen_length=args.gen_length,
                                 prompt_length=args.prompt_length, score=args.score, select=args.select,
                                 dtype=args.dtype)
    total_len = args.prompt_length + args.gen_length
    batch = len(models) if plan.cross_model else 1
    status = [load_status(spec, trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle)
              for spec in models]
    if args.json:
        out = plan.to_json()
        out["lengths"] = {"prompt": args.prompt_length, "gen": args.gen_length, "batch": batch}
        for row, est, how in zip(out["members"], estimates, status):
            row.update(quant=est.quant, source=est.source, source_bytes=est.source_bytes, exact=est.exact,
                       vocab=est.dims["vocab"], loads=how)
        print(json.dumps(out, indent=2))
    else:
        print(render(plan, estimates, total_len, batch, status))
    return 0


def _default_models():
    from .registry import DEFAULT_ENSEMBLE

    return DEFAULT_ENSEMBLE


def add_plan_parser(sub) -> None:
    p = sub.add_parser(
        "plan",
        help="print the memory plan for an ensemble without loading it",
        description="Estimate each member's weight bytes at its quantization (config files and safetensors headers "
                    "only, no weights load) and its working memory, then say whether the members stay resident, swap "
                    "whole members in a snake order, or need layer offload under the budget.",
    )
    add_model_args(p)  # the same model flags as generate; --max-memory defaults to free GPU memory or RAM here
    p.add_argument("--gen-length", type=whole, default=48, metavar="N", help="generated positions (default 48)")
    p.add_argument("--prompt-length", type=whole, default=DEFAULT_PROMPT_LENGTH, metavar="N",
                   help=f"prompt tokens to plan for (default {DEFAULT_PROMPT_LENGTH})")
    p.add_argument("--score", default=None, help="tcc | top1 | entropy | margin | verify (cross-model scores "
                   "forward every trajectory through every member; default as for generate)")
    p.add_argument("--select", default="lowest-tcc", help="final selection (verify forwards every response "
                   "through every member too; default lowest-tcc)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_plan)
