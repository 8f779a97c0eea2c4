"""Reference figures for SDAR (dense `sdar` and MoE `sdar_moe`), computed by the authors' own code (never imported
by tie-lite).

Run it in a scratch virtualenv with the transformers SDAR's evaluation/environment.yml pins (4.52.4, the version
its modeling files were generated from):

    bash scripts/reference/make_venv.sh /tmp/tie-lite-sdar-venv 4.52.4
    /tmp/tie-lite-sdar-venv/bin/python scripts/reference/sdar.py \\
        --sdar-repo /work/.mirror/JetAstra+SDAR/repo --dare-repo /work/.mirror/yjyddq+DARE/repo

Everything the authors wrote is read with `git show COMMIT:PATH` from two clones into a temporary folder (nothing
of it is copied into this repository; figures.json records repo, commit, path and sha256 of every file used):

- JetAstra/SDAR (the authors' repository): generate.py, whose `block_diffusion_generate` is the sampler they
  publish; training/model/SDAR-4B-Chat/{modeling,configuration}_sdar.py, the dense model (Qwen3 with
  `store_kv`-controlled KV caching and the block-diffusion attention branches; its inference path is the hub
  file's, which the script checks against a hub copy, below); tokenizer_config.json / generation_config.json (mask
  token, stop ids, chat template); evaluation/opencompass/opencompass/models/huggingface_bd3.py, the sampler of
  their OpenCompass evaluation (a second `block_diffusion_generate`, whose confidence is the probability under the
  untruncated softmax; only its sampling functions are taken out of the file, by name, with `ast`).
- yjyddq/DARE (a dLLM RL framework that vendors the hub folders of the released models; the authors' repository has
  no MoE model file and no released config.json of 1.7B / 30B-A3B): models/SDAR-30B-A3B-Chat/
  {modeling,configuration}_sdar_moe.py and config.json (JetLM/SDAR-30B-A3B-Chat), models/SDAR-1dot7B-Chat/config.json
  (JetLM/SDAR-1.7B-Chat), and, at its first commit, models/SDAR-4B-Chat/modeling_sdar.py (the hub's 37.5 kB dense
  file, used only to check that it computes the same logits and ids as the authors' training-folder file).

Substitutions (the harness only; mathematically the same computation):
- flash-attn (CUDA only): the modeling files import `flash_attn.ops.triton.layer_norm.rms_norm_fn` for every RMSNorm
  and the dense file calls `flash_attn_func(q, k, v, causal=False)` when a forward's mask is all ones (every decode
  forward of generate(): a block sees its own block and all earlier ones). A stand-in package on sys.path gives
  rms_norm_fn = x * rsqrt(mean(x^2) + eps) * weight in float32 (the file's own commented-out fallback) and
  flash_attn_func = scaled_dot_product_attention without a mask with grouped-query heads (flash-attn's GQA maps query
  head h to key/value head h // (heads / kv_heads), as enable_gqa does). The MoE file uses SDPA on both branches.
- fused_linear_diffusion_cross_entropy.py (training-only loss, imports triton): a stand-in module that defines the
  class and raises if called; inference never calls it.

The tiny checkpoints keep every field of the released configs but the sizes (TINY / TINY_MOE): width 64, 3 layers,
4 heads and 2 key/value heads of 16, MLP 128; the MoE 8 experts of width 32, 2 a token, every layer sparse
(decoder_sparse_step 1, mlp_only_layers [] as released). Vocabulary 151936 as released. Weights:
tests/real_checkpoints.deterministic_tensor by name, times GAINS (the output head), so that predictions vary by
position and the confidences straddle the thresholds used (lm_head x12, embed_tokens x0.25).

What it writes under --out (default tests/fixtures/reference/sdar/): config.json / config-moe.json (as the authors'
save_pretrained wrote them), tensors.json / tensors-moe.json (name, shape, dtype), config-1.7b-chat.json /
config-30b-a3b-chat.json (the released configs as DARE vendors them), tokenizer_config.json (the released tokenizer's,
chat template and specials) and figures.json: float32 logits at fixed positions of fixed canvases under the
block-causal mask generate() builds, and per generate() run every argument, the prompt, the ids it returns after the
prompt, the number of forwards and every forward's input (see figures.json "notes").
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import shutil
import sys
import tempfile
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from common import git, sha256, show, top_figures  # noqa: E402  (scripts/reference/, beside this file)
from llada import compact_json  # noqa: E402
from real_checkpoints import fill_deterministic, tensor_table  # noqa: E402

SDAR_REPO = "/work/.mirror/JetAstra+SDAR/repo"
SDAR_URL = "https://github.com/JetAstra/SDAR"
SDAR_COMMIT = "c2041a8333333d685f6e15122c84f60f51f85ebd"
DARE_REPO = "/work/.mirror/yjyddq+DARE/repo"
DARE_URL = "https://github.com/yjyddq/DARE"
DARE_COMMIT = "fd704cf94a3846025329898d41154b37ebfbb045"  # "add SDAR-30B-A3B-Chat"
DARE_FIRST_COMMIT = "f4999da5cf21e9e4cf69cf7d5fdbb2b02b3a940d"  # "init commit": the hub's dense modeling_sdar.py

MODEL_DIR = "training/model/SDAR-4B-Chat"
SDAR_FILES = {
    "generate.py": "generate.py",
    "modeling_sdar.py": f"{MODEL_DIR}/modeling_sdar.py",
    "configuration_sdar.py": f"{MODEL_DIR}/configuration_sdar.py",
    "tokenizer_config.json": f"{MODEL_DIR}/tokenizer_config.json",
    "generation_config.json": f"{MODEL_DIR}/generation_config.json",
    "huggingface_bd3.py": "evaluation/opencompass/opencompass/models/huggingface_bd3.py",
}
DARE_FILES = {
    "config-1.7b-chat.json": "models/SDAR-1dot7B-Chat/config.json",
    "generation_config-1.7b-chat.json": "models/SDAR-1dot7B-Chat/generation_config.json",
    "config-30b-a3b-chat.json": "models/SDAR-30B-A3B-Chat/config.json",
    "generation_config-30b-a3b-chat.json": "models/SDAR-30B-A3B-Chat/generation_config.json",
    "tokenizer_config-30b-a3b-chat.json": "models/SDAR-30B-A3B-Chat/tokenizer_config.json",
    "chat_template-30b-a3b-chat.jinja": "models/SDAR-30B-A3B-Chat/chat_template.jinja",
    "modeling_sdar_moe.py": "models/SDAR-30B-A3B-Chat/modeling_sdar_moe.py",
    "configuration_sdar_moe.py": "models/SDAR-30B-A3B-Chat/configuration_sdar_moe.py",
}
HUB_DENSE = {"modeling_sdar.py": "models/SDAR-4B-Chat/modeling_sdar.py",
             "configuration_sdar.py": "models/SDAR-4B-Chat/configuration_sdar.py"}

# widths are multiples of 64 (bitsandbytes' 4-bit CPU kernel needs it); everything else as released
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, max_window_layers=3)
TINY_MOE = dict(TINY, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2)
# the output head sharpened and the embeddings damped: the top logit then leads by a few units, so confidences spread
# over (0.3, 1] and the thresholds 0.7-0.95 fire on some masks and not on others, and the attention and MLP outputs
# outweigh the (identical) embeddings of the masks, so that masked positions predict different tokens. Gains on
# q_proj / k_proj would do nothing: Qwen3 normalises q and k per head (q_norm, k_norm).
GAINS = {"lm_head.weight": 12.0, "embed_tokens.weight": 0.25}

MASK = 151669  # <|MASK|> (tokenizer_config mask_token; config.json mask_token_id of the dense models)
ENDOFTEXT, IM_START, IM_END = 151643, 151644, 151645
STOP_IDS = [IM_END, ENDOFTEXT]  # generation_config.json eos_token_id: what generate.py's CLI stops on
USER, ASSISTANT, NEWLINE = 872, 77091, 198  # Qwen2 BPE ids of "user", "assistant", "\n"


def chat(content: list[int]) -> list[int]:
    """<|im_start|>user\\n CONTENT <|im_end|>\\n<|im_start|>assistant\\n, as the chat template lays a user turn."""
    return [IM_START, USER, NEWLINE, *content, IM_END, NEWLINE, IM_START, ASSISTANT, NEWLINE]


# prompt lengths 3 (shorter than a block: no prefill forward), 13, 16 and 22: 13 % 4 = 1, 13 % 8 = 5, 22 % 4 = 2,
# 22 % 8 = 6 (the first generated block is partial: it holds the prompt's last tokens), 16 a multiple of both
PROMPTS = [
    [IM_START, ASSISTANT, NEWLINE],
    chat([3838, 374, 220, 17, 30]),
    chat([3838, 374, 220, 17, 10, 220, 17, 30]),
    chat([785, 6722, 315, 9625, 374, 30, 21806, 304, 825, 3409, 13, 220, 16, 13]),
]
# What `tie-lite generate "What is 2+3?" --model FOLDER` sends to the tiny dense checkpoint tests/real_checkpoints.py
# builds (its small word vocabulary under Qwen3's chat template; 11 tokens, not a multiple of the block): the
# "cli_recipe" run decodes it with the evaluation sampler at the recipe's settings, so a test runs the CLI itself
CLI_PROMPT = [151644, 1, 0, 17, 26, 19, 27, 13, 151645, 151644, 2]
CLI_RECIPE = "bd3_eval_dynamic"  # blocks of 4, threshold 0.95, greedy: tie-lite's SDAR recipe
CANVASES = [PROMPTS[2] + [MASK] * 16,
            PROMPTS[1] + [17, MASK, 900, MASK, MASK, 13, MASK, IM_END] + [MASK] * 3]
POSITIONS = [[0, 15, 16, 17, 21, 31], [3, 12, 13, 14, 16, 23]]
FIXED_IDS = [0, 13, NEWLINE, ENDOFTEXT, IM_END, MASK, 151935]
FIGURE_BLOCKS = [4, 8]

# generate.py's block_diffusion_generate: its signature defaults (checked by check_defaults())...
GENERATE_DEFAULTS = dict(gen_length=128, block_length=8, denoising_steps=8, temperature=1.0, top_k=0, top_p=1.0,
                         remasking_strategy="low_confidence_dynamic", confidence_threshold=0.85, eb_threshold=None,
                         stopping_criteria_idx=None)
# ... and its command line's (parse_args(); mask_id from the tokenizer, stop ids from generation_config.json)
GENERATE_CLI_DEFAULTS = dict(gen_length=20480, block_length=4, denoising_steps=4, temperature=1.0, top_k=0, top_p=1.0,
                             remasking_strategy="low_confidence_dynamic", confidence_threshold=0.85, eb_threshold=0.35)
# the runs. Greedy is top_k=1: generate.py divides the logits by the temperature (0 is a division by zero) and
# samples with torch.multinomial from the top-k distribution, so only top_k=1 is deterministic; its confidence is
# then the probability under that one-token distribution, exactly 1.0, and low_confidence_dynamic commits every mask
# of a block in its first forward.
GENERATE_RUNS = {
    # the function's defaults, greedy, stopping on the generation_config.json ids as the CLI does
    "generate_py_defaults": {**GENERATE_DEFAULTS, "top_k": 1, "stopping_criteria_idx": STOP_IDS},
    # the CLI's defaults (block 4, 4 steps: the released models' block_size), greedy; gen_length cut to 64
    "generate_py_cli": {**GENERATE_DEFAULTS, **GENERATE_CLI_DEFAULTS, "top_k": 1, "stopping_criteria_idx": STOP_IDS,
                        "gen_length": 64},
    # one token a step, left to right
    "generate_py_sequential": {**GENERATE_DEFAULTS, **GENERATE_CLI_DEFAULTS, "top_k": 1,
                               "stopping_criteria_idx": STOP_IDS, "gen_length": 32,
                               "remasking_strategy": "sequential"},
}
# huggingface_bd3.py's block_diffusion_generate (OpenCompass evaluation): its signature defaults ...
BD3_DEFAULTS = dict(gen_length=128, block_length=8, denoising_steps=8, temperature=0.0, top_k=0, top_p=1.0,
                    remasking="low_confidence", threshold=1.0, stopping_criteria_idx=None)
# ... and the runs: eval_sdar_hf.py's generation_kwargs (block 4 = denoising_steps, temperature 1.0, top_k 1,
# low_confidence, threshold 1.0 = static top-k or 0.95 = dynamic); the confidence is the argmax's probability under
# the full softmax, so the threshold fires or not by the model's own confidence; a third at a threshold that fires
# often on these weights, with blocks of 8
BD3_EVAL = dict(BD3_DEFAULTS, gen_length=64, block_length=4, denoising_steps=4, temperature=1.0, top_k=1,
                remasking="low_confidence", stopping_criteria_idx=STOP_IDS)
BD3_RUNS = {
    "bd3_eval_static": dict(BD3_EVAL, threshold=1.0),
    "bd3_eval_dynamic": dict(BD3_EVAL, threshold=0.95),
    "bd3_sharp": dict(BD3_EVAL, block_length=8, denoising_steps=8, threshold=0.7),
}
BD3_FUNCTIONS = ("add_gumbel_noise", "top_k_logits", "top_p_logits", "sample_with_temperature_topk_topp",
                 "get_num_transfer_tokens", "block_diffusion_generate")

SHIM = {
    "flash_attn/__init__.py": '''"""tie-lite harness stand-in for flash-attn (CUDA only): scripts/reference/sdar.py."""
import torch.nn.functional as F


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **kwargs):
    # q [b, lq, h, d], k / v [b, lk, h_kv, d]; no mask (SDAR calls it only when the block mask is all ones)
    assert not causal and dropout_p == 0.0 and not kwargs, (causal, dropout_p, kwargs)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         scale=softmax_scale, enable_gqa=True)
    return out.transpose(1, 2)


def flash_attn_varlen_func(*args, **kwargs):
    raise NotImplementedError("not used by SDAR inference")
''',
    "flash_attn/bert_padding.py": '''def index_first_axis(*args, **kwargs):
    raise NotImplementedError


pad_input = unpad_input = index_first_axis
''',
    "flash_attn/ops/__init__.py": "",
    "flash_attn/ops/triton/__init__.py": "",
    "flash_attn/ops/triton/layer_norm.py": '''import torch


def rms_norm_fn(x, weight, bias=None, residual=None, eps=1e-6, **kwargs):
    # flash-attn's fused RMSNorm without residual / dropout: float32 statistics, output in x's dtype
    assert bias is None and residual is None and not any(kwargs.values()), kwargs
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    return y.to(x.dtype)
''',
}
FUSED_CE_STUB = '''"""tie-lite harness stand-in for the authors' training-only fused loss (it imports triton)."""


class FusedLinearDiffusionCrossEntropyLoss:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("training only")
'''


class Sources:
    """The authors' files, read once from the clones, with where each came from."""

    def __init__(self, sdar_repo: str, sdar_commit: str, dare_repo: str, dare_commit: str, dare_first: str):
        self.text: dict[str, str] = {}
        self.record: dict[str, dict] = {}
        for name, path in SDAR_FILES.items():
            self._add(name, SDAR_URL, sdar_repo, sdar_commit, path)
        for name, path in DARE_FILES.items():
            self._add(name, DARE_URL, dare_repo, dare_commit, path)
        for name, path in HUB_DENSE.items():
            self._add(f"hub/{name}", DARE_URL, dare_repo, dare_first, path)

    def _add(self, name: str, url: str, repo: str, commit: str, path: str) -> None:
        text = show(repo, commit, path)
        self.text[name] = text
        self.record[name] = {"repo": url, "commit": commit, "path": path, "sha256": sha256(text)}


def write_shim(folder: Path) -> None:
    for rel, text in SHIM.items():
        f = folder / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    sys.path.insert(0, str(folder))


def build(work: Path, files: dict[str, str], config: dict, name: str):
    """The authors' model from `files` (name -> text) and `config`, weights by name; saved and loaded back."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = work / f"build-{name}"
    folder.mkdir()
    for fname, text in files.items():
        (folder / fname).write_text(text)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    cfg = AutoConfig.from_pretrained(str(folder), trust_remote_code=True)
    model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=True, torch_dtype=torch.float32).eval()
    fill_deterministic(model, gains=GAINS)
    ckpt = work / f"tiny-{name}"
    model.save_pretrained(str(ckpt))
    for fname in files:
        shutil.copy(folder / fname, ckpt / fname)
    loaded = AutoModelForCausalLM.from_pretrained(str(ckpt), trust_remote_code=True, torch_dtype=torch.float32).eval()
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys(), ours.keys() ^ theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    return loaded, (ckpt / "config.json").read_text(), tensor_table(ckpt)


def load_generate(text: str) -> types.ModuleType:
    """generate.py as a module (its `if __name__ == "__main__"` block does not run)."""
    module = types.ModuleType("sdar_generate")
    exec(compile(text, "generate.py", "exec"), module.__dict__)
    return module


def load_bd3(text: str) -> dict:
    """The sampling functions of huggingface_bd3.py, taken out by name (the rest of the file is OpenCompass)."""
    import numpy as np
    from torch.nn import functional as F
    from transformers.cache_utils import DynamicCache

    namespace = {"torch": torch, "F": F, "np": np, "DynamicCache": DynamicCache}
    found = []
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef) and node.name in BD3_FUNCTIONS:
            exec(compile(ast.Module(body=[node], type_ignores=[]), "huggingface_bd3.py", "exec"), namespace)
            found.append(node.name)
    assert sorted(found) == sorted(BD3_FUNCTIONS), found
    return namespace


def cli_defaults(text: str) -> dict:
    """The defaults of generate.py's parser.add_argument calls."""
    out = {}
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
            kw = {k.arg: k.value for k in node.keywords}
            if "default" in kw:
                out[node.args[0].value.lstrip("-")] = ast.literal_eval(kw["default"])
    return out


def check_defaults(gen: types.ModuleType, bd3: dict, generate_text: str) -> None:
    def defaults(fn):
        return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}

    assert defaults(gen.block_diffusion_generate) == GENERATE_DEFAULTS, defaults(gen.block_diffusion_generate)
    assert defaults(bd3["block_diffusion_generate"]) == BD3_DEFAULTS, defaults(bd3["block_diffusion_generate"])
    cli = cli_defaults(generate_text)
    assert {k: cli[k] for k in GENERATE_CLI_DEFAULTS} == GENERATE_CLI_DEFAULTS, cli


def block_mask(length: int, block: int) -> torch.Tensor:
    """generate()'s block_diffusion_attention_mask (1 = may attend), cut to `length`: [1, length, length]."""
    n = (length + block - 1) // block
    tri = torch.tril(torch.ones(n, n))
    return tri.repeat_interleave(block, 0).repeat_interleave(block, 1)[:length, :length].unsqueeze(0)


def canvas_figures(model) -> list[dict]:
    rows = []
    with torch.no_grad():
        for k, (ids, positions) in enumerate(zip(CANVASES, POSITIONS)):
            x = torch.tensor([ids])
            row = {"canvas": k, "ids": ids}
            for block in FIGURE_BLOCKS:
                logits = model(x, attention_mask=block_mask(len(ids), block),
                               position_ids=torch.arange(len(ids))[None]).logits[0]
                row[f"block_causal_{block}"] = {"block_size": block, "positions": top_figures(logits, positions,
                                                                                              FIXED_IDS)}
            rows.append(row)
    return rows


def cache_check(model, ids: list[int], block: int) -> float:
    """generate()'s way (prefill whole blocks with store_kv, then a block alone against the cache, its mask all ones)
    against one forward of the whole canvas under the block-causal mask: the largest difference of the block's
    logits."""
    from transformers.cache_utils import DynamicCache

    x = torch.tensor([ids])
    n = len(ids) // block * block
    start = n - block
    with torch.no_grad():
        full = model(x[:, :n], attention_mask=block_mask(n, block), position_ids=torch.arange(n)[None]).logits[0]
        cache = DynamicCache()
        model(x[:, :start], attention_mask=block_mask(start, block), position_ids=torch.arange(start)[None],
              past_key_values=cache, use_cache=True, store_kv=True)
        part = model(x[:, start:n], attention_mask=block_mask(n, block)[:, start:n, :n],
                     position_ids=torch.arange(start, n)[None], past_key_values=cache, use_cache=True,
                     store_kv=False).logits[0]
    return float((full[start:n] - part).abs().max())


def recorded(model, fn, args: dict, prompt: list[int]) -> dict:
    """One generate() call with every forward's input recorded (the block, or the prefilled prompt blocks, with the
    position of its first token and whether it stores its keys and values)."""
    seen: list[dict] = []
    original = model.forward

    def forward(*a, **kw):
        ids = kw["input_ids"] if "input_ids" in kw else a[0]
        seen.append({"start": int(kw["position_ids"][0, 0]), "store_kv": bool(kw.get("store_kv")),
                     "ids": ids[0].tolist()})
        return original(*a, **kw)

    model.forward = forward
    try:
        out = fn(model, args, prompt)
    finally:
        del model.forward
    return {"output": out[0, len(prompt):].tolist(), "forwards": len(seen),
            "denoising_forwards": sum(not f["store_kv"] for f in seen), "forward_inputs": seen}


def commits(run: dict) -> list[int]:
    """Masks each denoising forward committed (the next forward on the same block shows what is left)."""
    fs = run["forward_inputs"]
    out = []
    for i, f in enumerate(fs):
        if f["store_kv"]:
            continue
        nxt = fs[i + 1] if i + 1 < len(fs) else None
        left = nxt["ids"].count(MASK) if nxt and nxt["start"] == f["start"] else 0
        out.append(f["ids"].count(MASK) - left)
    return out


def call_generate(gen):
    def run(model, args, prompt):
        return gen.block_diffusion_generate(model, {"input_ids": torch.tensor([prompt])}, mask_id=MASK, **args)
    return run


def call_bd3(bd3):
    def run(model, args, prompt):
        tokens = {"input_ids": torch.tensor([prompt]), "attention_mask": torch.ones(1, len(prompt), dtype=torch.long)}
        return bd3["block_diffusion_generate"](model, None, tokens, mask_id=MASK, **args)
    return run


def all_runs(model, gen, bd3) -> dict:
    out = {}
    for name, args in GENERATE_RUNS.items():
        out[name] = [dict(sampler="generate.py block_diffusion_generate", prompt=p, mask_id=MASK, **args,
                          **recorded(model, call_generate(gen), args, p)) for p in PROMPTS]
    # the stop ids at work: the CLI settings stopping on an id that the 16-token prompt's output holds first in its
    # third block (or a later one), so that generation ends after that block
    base = out["generate_py_cli"][2]["output"]
    block = GENERATE_RUNS["generate_py_cli"]["block_length"]
    stop = None
    for k in range(2, len(base) // block):
        start = k * block - len(PROMPTS[2]) % block
        stop = next((t for t in base[start:start + block] if t not in base[:start]), None)
        if stop is not None:
            break
    assert stop is not None
    args = dict(GENERATE_RUNS["generate_py_cli"], stopping_criteria_idx=[stop])
    out["generate_py_cli_stop"] = [dict(sampler="generate.py block_diffusion_generate", prompt=p, mask_id=MASK,
                                        **args, **recorded(model, call_generate(gen), args, p)) for p in PROMPTS]
    for name, args in BD3_RUNS.items():
        out[name] = [dict(sampler="huggingface_bd3.py block_diffusion_generate", prompt=p, mask_id=MASK, **args,
                          **recorded(model, call_bd3(bd3), args, p)) for p in PROMPTS]
    for runs in out.values():
        for r in runs:
            r["commits"] = commits(r)
    return out


def summary(name: str, runs: dict) -> None:
    for key, rs in runs.items():
        for r in rs:
            c = r["commits"]
            gen_part = r["output"][:r["gen_length"]]
            print(f"{name} {key} P={len(r['prompt'])}: forwards {r['forwards']} (denoising {r['denoising_forwards']}),"
                  f" multi-commit forwards {sum(x > 1 for x in c)}/{len(c)}, distinct {len(set(gen_part))},"
                  f" masks left {r['output'].count(MASK)}, out {r['output'][:12]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sdar-repo", default=SDAR_REPO, help="git clone of JetAstra/SDAR")
    ap.add_argument("--sdar-commit", default=SDAR_COMMIT)
    ap.add_argument("--dare-repo", default=DARE_REPO, help="git clone of yjyddq/DARE")
    ap.add_argument("--dare-commit", default=DARE_COMMIT)
    ap.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "reference" / "sdar"))
    args = ap.parse_args()
    import transformers

    sdar_commit = git(args.sdar_repo, "rev-parse", args.sdar_commit).strip()
    dare_commit = git(args.dare_repo, "rev-parse", args.dare_commit).strip()
    dare_first = git(args.dare_repo, "rev-parse", DARE_FIRST_COMMIT).strip()
    src = Sources(args.sdar_repo, sdar_commit, args.dare_repo, dare_commit, dare_first)
    real_dense = json.loads(src.text["config-1.7b-chat.json"])
    real_moe = json.loads(src.text["config-30b-a3b-chat.json"])
    tokenizer_config = json.loads(src.text["tokenizer_config.json"])
    assert tokenizer_config["mask_token"] == "<|MASK|>"
    assert tokenizer_config["added_tokens_decoder"][str(MASK)]["content"] == "<|MASK|>"
    assert real_dense["mask_token_id"] == MASK and real_dense["block_size"] == 4
    assert json.loads(src.text["generation_config.json"])["eos_token_id"] == STOP_IDS
    assert json.loads(src.text["generation_config-30b-a3b-chat.json"])["eos_token_id"] == STOP_IDS
    assert tokenizer_config["chat_template"] == src.text["chat_template-30b-a3b-chat.jinja"]

    torch.manual_seed(0)
    torch.set_num_threads(1)  # float32 sums in one order on every machine
    work = Path(tempfile.mkdtemp(prefix="tie-lite-sdar-ref-"))
    try:
        write_shim(work / "shim")
        dense_files = {"modeling_sdar.py": src.text["modeling_sdar.py"],
                       "configuration_sdar.py": src.text["configuration_sdar.py"],
                       "fused_linear_diffusion_cross_entropy.py": FUSED_CE_STUB}
        model, saved, table = build(work, dense_files, dict(real_dense, **TINY), "sdar")
        hub_files = {"modeling_sdar.py": src.text["hub/modeling_sdar.py"],
                     "configuration_sdar.py": src.text["hub/configuration_sdar.py"]}
        hub, _, hub_table = build(work, hub_files, dict(real_dense, **TINY), "sdar-hub")
        assert hub_table == table
        moe_files = {"modeling_sdar_moe.py": src.text["modeling_sdar_moe.py"],
                     "configuration_sdar_moe.py": src.text["configuration_sdar_moe.py"]}
        moe, saved_moe, table_moe = build(work, moe_files, dict(real_moe, **TINY_MOE), "sdar-moe")

        gen = load_generate(src.text["generate.py"])
        bd3 = load_bd3(src.text["huggingface_bd3.py"])
        check_defaults(gen, bd3, src.text["generate.py"])

        diffs = {name: cache_check(m, CANVASES[0], 4) for name, m in (("dense", model), ("moe", moe))}
        print("KV-cache path vs one block-causal forward, max |diff|:", diffs)
        assert all(d < 1e-4 for d in diffs.values()), diffs
        figures_dense = canvas_figures(model)
        assert canvas_figures(hub) == figures_dense, "the hub's modeling_sdar.py computes other logits"
        figures_moe = canvas_figures(moe)
        runs_dense = all_runs(model, gen, bd3)
        runs_hub = all_runs(hub, gen, bd3)
        for key in runs_dense:
            assert [r["output"] for r in runs_hub[key]] == [r["output"] for r in runs_dense[key]], key
        runs_moe = all_runs(moe, gen, bd3)
        summary("dense", runs_dense)
        summary("moe", runs_moe)
        for runs in (runs_dense, runs_moe):
            assert any(c > 1 for r in runs["bd3_sharp"] for c in r["commits"]), "the sharp threshold never fires"
            assert any(c == 1 for r in runs["bd3_eval_dynamic"] for c in r["commits"]), "0.95 always fires"
            assert all(len(set(r["output"][:r["gen_length"]])) > 4 for r in runs["generate_py_cli"]), "degenerate"
            assert runs["generate_py_cli_stop"][2]["output"].count(MASK) > 0, "the stop id ended nothing"

        files = dict(src.record)
        files["flash_attn (stand-in)"] = {"note": "harness: see the script's docstring",
                                          "sha256": sha256("".join(SHIM[k] for k in sorted(SHIM)))}
        files["fused_linear_diffusion_cross_entropy.py (stand-in)"] = {"note": "harness: training-only loss",
                                                                        "sha256": sha256(FUSED_CE_STUB)}
        template = tokenizer_config["chat_template"]
        figures = {
            "about": "Figures of the SDAR authors' code (JetAstra/SDAR generate.py and modeling files; the released "
                     "MoE files as yjyddq/DARE vendors them) under transformers %s, torch %s, 1 thread, on tiny "
                     "checkpoints with the released configs and deterministic weights (tests/real_checkpoints.py, "
                     "times `gains`)." % (transformers.__version__, torch.__version__.split("+")[0]),
            "command": "bash scripts/reference/make_venv.sh /tmp/tie-lite-sdar-venv 4.52.4 && "
                       "/tmp/tie-lite-sdar-venv/bin/python scripts/reference/sdar.py "
                       "--sdar-repo /work/.mirror/JetAstra+SDAR/repo --dare-repo /work/.mirror/yjyddq+DARE/repo",
            "source": files,
            "config_source": "config.json: JetLM/SDAR-1.7B-Chat's config.json as yjyddq/DARE vendors it "
                             "(config-1.7b-chat.json) with tiny sizes %s; config-moe.json: JetLM/SDAR-30B-A3B-Chat's "
                             "(config-30b-a3b-chat.json) with tiny sizes %s. Both as the authors' save_pretrained "
                             "wrote them (float32)." % (TINY, TINY_MOE),
            "gains": GAINS,
            "mask_id": MASK,
            "mask_token": "<|MASK|>",
            "stop_ids": STOP_IDS,
            "stop_ids_source": "generation_config.json eos_token_id [<|im_end|>, <|endoftext|>] (the same for the "
                               "dense and MoE releases); generate.py's CLI stops on them; config.json eos_token_id "
                               "is 151643 (<|endoftext|>) alone",
            "block_size": 4,
            "chat_template": template,
            "chat_generation_prompt": "<|im_start|>assistant\n",
            "chat_example": "<|im_start|>user\nCONTENT<|im_end|>\n<|im_start|>assistant\n (no default system "
                            "turn; enable_thinking=False appends <think>\\n\\n</think>\\n\\n)",
            "fixed_ids": FIXED_IDS,
            "logits_convention": "raw model output in float32: output i is the prediction for canvas position i "
                                 "(no shift), under the block-causal mask of the given block size",
            "kv_cache_check_max_abs_diff": diffs,
            "canvases": figures_dense,
            "canvases_moe": figures_moe,
            "generate": runs_dense,
            "cli_recipe": dict(sampler="huggingface_bd3.py block_diffusion_generate", prompt=CLI_PROMPT, mask_id=MASK,
                               **dict(BD3_RUNS[CLI_RECIPE], gen_length=32),
                               **recorded(model, call_bd3(bd3), dict(BD3_RUNS[CLI_RECIPE], gen_length=32),
                                          CLI_PROMPT)),
            "generate_moe": runs_moe,
            "notes": NOTES,
        }
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(saved)
        (out / "config-moe.json").write_text(saved_moe)
        (out / "tensors.json").write_text(json.dumps(table, indent=1) + "\n")
        (out / "tensors-moe.json").write_text(json.dumps(table_moe, indent=1) + "\n")
        (out / "config-1.7b-chat.json").write_text(src.text["config-1.7b-chat.json"].rstrip() + "\n")
        (out / "config-30b-a3b-chat.json").write_text(src.text["config-30b-a3b-chat.json"].rstrip() + "\n")
        (out / "tokenizer_config.json").write_text(src.text["tokenizer_config.json"].rstrip() + "\n")
        (out / "figures.json").write_text(compact_json(figures) + "\n")
        print(f"wrote {out}: SDAR {sdar_commit[:12]}, DARE {dare_commit[:12]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


NOTES = [
    "Logits are not shifted: the logits at output position i predict canvas position i (generate() reads "
    "logits[:, j] for block position j; training scores the masked positions' own labels).",
    "Block placement (both samplers): blocks are numbered from position 0 of the sequence, not from the end of the "
    "prompt. With P prompt tokens, G = gen_length and B = block_length: num_blocks = (P + G + B - 1) // B; the canvas "
    "x holds num_blocks * B positions (prompt, then masks); position ids are 0..num_blocks*B-1. The first "
    "P // B * B prompt tokens are prefilled in one forward (store_kv=True; no forward when P < B) under the "
    "block-causal mask (a position attends to its own block and every earlier block). Decoding then runs block "
    "P // B .. num_blocks - 1; when P % B != 0 the first decoded block holds the prompt's last P % B tokens and "
    "B - P % B masks, and those prompt tokens enter the cache only with that block.",
    "Each decoding forward sees only its block's B tokens (position ids of the block) against the cached keys and "
    "values of all earlier blocks (store_kv=False: nothing is written); once a block has no mask left, one more "
    "forward of the finished block (store_kv=True) writes its keys and values, and its logits are unused. Every "
    "forward is listed in forward_inputs (start = first position id, store_kv, the input ids); the prefill forward "
    "is the one with start 0 and store_kv true that holds P // B * B prompt tokens. Keys and values of a block are "
    "thus computed from its final tokens, attending to itself and the earlier blocks: the same as one forward of "
    "the final canvas under the block-causal mask (kv_cache_check_max_abs_diff).",
    "generate.py block_diffusion_generate(model, prompt, mask_id, gen_length=128, block_length=8, denoising_steps=8, "
    "temperature=1.0, top_k=0, top_p=1.0, remasking_strategy='low_confidence_dynamic', confidence_threshold=0.85, "
    "eb_threshold=None, stopping_criteria_idx=None); its CLI's defaults: block_length 4, denoising_steps 4, "
    "gen_length 20480, temperature 1.0, top_k 0, top_p 1.0, low_confidence_dynamic, threshold 0.85, eb_threshold "
    "0.35, stop ids from generation_config.json. It returns the whole canvas x; `output` is x[0, P:]: every "
    "position of the decoded blocks (past P + G too, when the last block reaches beyond) and, after an early stop, "
    "the masks of the blocks never decoded.",
    "generate.py sampling: logits / temperature (temperature 0 is a division by zero: not supported), top-k, top-p, "
    "softmax, torch.multinomial; x0_p is the probability of the drawn token under that truncated distribution. The "
    "runs use top_k=1 (greedy), where x0_p is exactly 1.0 for every position: low_confidence_dynamic then commits "
    "every mask of a block in the block's first forward (2 forwards a block with the store_kv one). x0 is taken at "
    "every position (masked or not) and cur_x[transfer_index] = x0[transfer_index].",
    "generate.py per step (num_transfer_tokens = block_length // steps, the first block_length % steps one more): "
    "low_confidence_dynamic commits the masks whose confidence > confidence_threshold (strictly) if there are at "
    "least num_transfer_tokens[step] of them, else the num_transfer_tokens[step] most confident (torch.topk over "
    "the block with -inf at non-masks); low_confidence_static always the top num_transfer_tokens[step]; sequential "
    "the num_transfer_tokens[step] positions from the first mask on. At most denoising_steps + 1 forwards a block. "
    "After each block: stop if any id of stopping_criteria_idx stands anywhere in x[:, P:] (masks of later blocks "
    "included).",
    "huggingface_bd3.py block_diffusion_generate(model, tokenizer, prompt, mask_id, gen_length=128, block_length=8, "
    "denoising_steps=8, temperature=0., top_k=0, top_p=1.0, remasking='low_confidence', threshold=1.0, "
    "stopping_criteria_idx=None) is the authors' evaluation sampler (eval_sdar_hf.py: block_length = "
    "denoising_steps = 4, temperature 1.0, top_k 1, top_p 1.0, threshold 1.0 or 0.95, gen_length 4096; it asserts "
    "temperature > 0 and needs block_length % denoising_steps == 0). The same loop and KV cache as generate.py, "
    "but the confidence is the drawn token's probability under softmax(logits / temperature) before top-k / top-p "
    "(with top_k 1: the argmax's full-softmax probability), x0 keeps the current token at non-masked positions, "
    "threshold 1.0 means static (top num_transfer_tokens[step]) and threshold < 1.0 dynamic as in generate.py. The "
    "evaluation decodes x[:, P:], drops '<|MASK|>' and cuts the text before the first stop word.",
    "Runs (each on prompts of 3, 13, 16 and 22 tokens; `commits` = masks each denoising forward committed): "
    "generate_py_defaults = generate.py's signature defaults with top_k 1 and the CLI's stop ids; generate_py_cli = "
    "the CLI defaults (block 4, 4 steps) with top_k 1, gen_length 64; generate_py_sequential = the same with "
    "remasking_strategy 'sequential', gen_length 32; generate_py_cli_stop = generate_py_cli stopping on an id that "
    "the 16-token prompt's output first holds in its third block; bd3_eval_static / bd3_eval_dynamic = "
    "huggingface_bd3.py at eval_sdar_hf.py's settings (threshold 1.0 / 0.95) with gen_length 64; bd3_sharp = the "
    "same with blocks of 8, 8 steps and threshold 0.7, where the threshold commits several masks in one forward.",
    "The dense model is checked three ways: logits of generate()'s cached forwards against one block-causal forward "
    "of the canvas, and the hub's modeling_sdar.py (yjyddq/DARE's first commit, 37.5 kB, no training code) against "
    "the authors' training-folder file on the same weights: identical logits and identical ids in every run.",
    "Released configs: dense model_type 'sdar', architectures ['SDARForCausalLM'], auto_map "
    "configuration_sdar.SDARConfig / modeling_sdar.SDARModel / modeling_sdar.SDARForCausalLM, block_size 4, "
    "mask_token_id 151669, eos_token_id 151643, bos 151643, attn_implementation 'flex_attention' (ignored at "
    "inference), tie_word_embeddings false, head_dim 128, rope_theta 1e6. MoE model_type 'sdar_moe', architectures "
    "['SDARMoeForCausalLM'], auto_map configuration_sdar_moe.SDARMoeConfig / modeling_sdar_moe.SDARMoeModel / "
    "modeling_sdar_moe.SDARMoeForCausalLM, 48 layers, 128 experts, 8 a token, moe_intermediate_size 768, "
    "norm_topk_prob true, decoder_sparse_step 1, mlp_only_layers [], and no block_size / mask_token_id fields "
    "(serving engines default SDARMoeForCausalLM to block 4, mask 151669).",
    "MoE layer (Qwen3-MoE): router logits = gate(h) (no bias), softmax over all experts in float32, top-k, "
    "renormalised to sum 1 when norm_topk_prob, cast to the hidden dtype; output = sum of weight * "
    "down(silu(gate_proj(h)) * up_proj(h)) over the chosen experts; no shared expert. Tensor names "
    "model.layers.N.mlp.gate.weight and model.layers.N.mlp.experts.E.{gate,up,down}_proj.weight. Attention, norms, "
    "rotary and the KV-cache / store_kv logic are the dense model's (the MoE file runs SDPA on both branches).",
    "Attention (both): q/k/v projections without bias, RMSNorm over head_dim on q and k (q_norm / k_norm) before "
    "rotary embedding (rotate_half over the full head_dim, theta 1e6), scaling head_dim ** -0.5, grouped-query heads, "
    "a boolean mask (1 = attend).",
    "TraDo (Gen-Verse/dLLM-RL) ships the same sampler (its generate.py is SDAR's, adapted: no entropy_bounded "
    "strategy, the 3-D mask given a head axis) and a modeling_sdar.py whose attention runs SDPA with an additive "
    "mask on every branch (flash-attn only for single-token decoding): the same computation, so TraDo checkpoints "
    "(model_type 'sdar') decode as SDAR's; no figures of their own here.",
]


if __name__ == "__main__":
    main()
