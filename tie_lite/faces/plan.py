"""`tie-lite plan`: the memory plan, printed before anything loads (config files and safetensors headers only)."""

from __future__ import annotations

import json

from tie_lite.checks import check_choice, check_lengths
from tie_lite.errors import UserError
from tie_lite.faces.options import (
    add_model_args,
    check_load_args,
    default_score,
    member_devices,
    THREADS_VARIABLE,
    thread_count,
    whole,
)

DEFAULT_PROMPT_LENGTH = 64  # prompt tokens planned for (runtime.plan's default; tests/test_cli.py keeps them equal)


def cmd_plan(args) -> int:
    from tie_lite.engine.scoring import check_score  # deferred: the engine loads torch
    from tie_lite.engine.tie import SELECTIONS  # deferred: the engine loads torch
    from tie_lite.runtime.loading import load_status, quantization_config, resolve_device  # deferred: torch
    from tie_lite.runtime.plan import build_plan, render  # deferred: loads torch
    from tie_lite.runtime.registry import DEFAULT_ENSEMBLE  # deferred: loads torch
    import torch  # deferred: heavy, and `tie-lite --help` stays without it

    models = args.model or list(DEFAULT_ENSEMBLE)
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
    device = member_devices(args)[0]
    if args.quant != "none" and device != "auto":  # the backend must be there, as at load time (same message)
        # with --max-memory a plan may be for a GPU elsewhere: the device need not be visible here
        target = torch.device(device) if args.max_memory is not None else resolve_device(device)
        quantization_config(args.quant, args.quant_backend, target, args.dtype)
    threads, threads_from = thread_count(args)
    plan, estimates = build_plan(models, quant=args.quant, backend=args.quant_backend, device=device,
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
        out["threads"] = {"count": threads, "from": threads_from}
        for row, est, how in zip(out["members"], estimates, status):
            row.update(quant=est.quant, source=est.source, source_bytes=est.source_bytes, exact=est.exact,
                       vocab=est.dims["vocab"], loads=how, total_params=est.total_params,
                       active_params=est.active_params)
        print(json.dumps(out, indent=2))
    else:
        print(render(plan, estimates, total_len, batch, status))
        print(f"threads: {threads} torch CPU threads ({threads_from}; --threads N or ${THREADS_VARIABLE} to change)")
    return 0


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
