"""Reference figures for LLaDA-MoE (inclusionAI/LLaDA-MoE-7B-A1B), computed by the authors' own code (never
imported by tie-lite).

Run it in a scratch virtualenv with the transformers the dllm library pins (4.57.0), outside the repository:

    bash scripts/reference/make_venv.sh /work/scratch-moe/venv 4.57.0
    # the fetch tool's bare clones (or git clone https://github.com/ZHZisZZ/dllm and .../ML-GSAI/LLaDA)
    /work/scratch-moe/venv/bin/python scripts/reference/llada_moe.py \\
        --dllm-repo /work/.mirror/ZHZisZZ+dllm/repo --llada-repo /work/.mirror/ML-GSAI+LLaDA/repo

(Prefix OMP_NUM_THREADS=1 to reproduce the committed float32 "canvases" bit for bit: on 2 CPU threads a few of
their logits move by about 1e-6; every generate() output is the same either way.)

The authors' files are read with `git show COMMIT:PATH` into a temporary folder; nothing of them is copied into
this repository:

- dllm/pipelines/llada/models/{modeling,configuration}_lladamoe.py of ZHZisZZ/dllm (the inclusionAI hub files
  as the dllm library carries them, with `model_type` "lladamoe");
- generate.py of ML-GSAI/LLaDA: the low-confidence remasking sampler LLaDA-MoE's model card runs, with the
  LLaDA-MoE mask id (156895) passed as its `mask_id`.

The configuration is LLaDA-MoE-7B-A1B's as public sources give it (REAL_7B below; the hub folder cannot be
fetched here): the sizes, experts, rotary theta, context, qk_layernorm, `moe_layer_freq` and null shared
expert from a public write-up of the released config.json; model_type "llada" as released (the dllm README asks
users to edit it to "lladamoe"); the mask id 156895 and bidirectional attention from llama.cpp's converter
(`add_mask_token_id(156895)`, `add_causal_attention(False)`) and the dllm tokenizer set-up (`<|mask|>`, the
Ling tokenizer LLaDA2 shares: <|endoftext|> 156892). Fields no source here states are ASSUMED and marked so:
rms_norm_eps, partial_rotary_factor, the expert-bias switch and the score function (the authors' forward
computes softmax whatever the field says). The tiny checkpoint keeps the vocabulary (157184), special ids,
theta and router of the released config and cuts the sizes (TINY): width 64, 4 heads of 16, 2 layers, 8
experts of width 64, 2 experts a token. A variant (VARIANT) also turns on what the released checkpoint does not
use but the authors' code implements: the expert bias, a shared expert, a dense first layer, grouped-query
attention, q/k/v/o biases, half-rotary heads and qkv clipping; its logits are checked too.

What it writes under --out (default tests/fixtures/reference/llada_moe/): config-7b.json (REAL_7B: what
`tie-lite plan` is tested on), config.json (as the authors'
save_pretrained wrote it, model_type set back to the released "llada"), tensors.json (name, shape, dtype:
tests/real_checkpoints.py rebuilds the identical weights), config-variant.json / tensors-variant.json, and
figures.json (float32 logits at fixed positions of fixed canvases, and with the model in bfloat16; the ids the authors' generate() returns at
temperature 0, low-confidence remasking, on three prompts, with how many tokens each step committed; and
"generate_recipe": generate() with the arguments of LLaDA's generate.py main() and LLaDA-MoE's model card
(steps 128, gen_length 128, block_length 32, temperature 0, cfg 0, low_confidence; mask_id 156895) on the 13-token
and the 19-token prompt, what `tie-lite generate --model FOLDER` runs with no decode flags).

This script must not import tie_lite; it imports tests/real_checkpoints.py for the shared weight filler.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from common import git, sha256, show, top_figures  # noqa: E402  (scripts/reference/, beside this file)
from llada import compact_json, run_generate, run_recipe  # noqa: E402
from real_checkpoints import fill_deterministic, tensor_table  # noqa: E402

DLLM_REPO = "/work/.mirror/ZHZisZZ+dllm/repo"
DLLM_URL = "https://github.com/ZHZisZZ/dllm"
DLLM_COMMIT = "ca176752fbceec49c6b4777a2c18ae88e4eb10ed"
FILES = {"modeling_lladamoe.py": "dllm/pipelines/llada/models/modeling_lladamoe.py",
         "configuration_lladamoe.py": "dllm/pipelines/llada/models/configuration_lladamoe.py"}
LLADA_REPO = "/work/.mirror/ML-GSAI+LLaDA/repo"
LLADA_URL = "https://github.com/ML-GSAI/LLaDA"

# inclusionAI/LLaDA-MoE-7B-A1B-Instruct's config.json, from public sources (see the docstring); ASSUMED marks
# the fields none of them states.
REAL_7B = {
    "architectures": ["LLaDAMoEModelLM"],
    "model_type": "llada",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "clip_qkv": None,
    "dense_intermediate_size": 8192,
    "eos_token_id": 156892,
    "expert_intermediate_size": 1024,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "max_position_embeddings": 8192,
    "moe_layer_freq": [1] * 16,
    "moe_router_enable_expert_bias": False,  # ASSUMED
    "moe_router_score_function": "softmax",  # ASSUMED (what the authors' forward computes in any case)
    "norm_topk_prob": False,  # ASSUMED (read by no code of the authors')
    "num_attention_heads": 16,
    "num_experts": 64,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 16,
    "num_key_value_heads": 16,
    "output_router_logits": False,
    "pad_token_id": 156892,
    "partial_rotary_factor": 1.0,  # ASSUMED
    "qk_layernorm": True,
    "rms_norm_eps": 1e-06,  # ASSUMED
    "rope_scaling": None,
    "rope_theta": 50000,
    "routed_scaling_factor": 1,
    "router_aux_loss_coef": 0.01,
    "shared_expert_intermediate_size": None,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": False,
    "vocab_size": 157184,
}
# widths are multiples of 64: bitsandbytes' 4-bit CPU kernel needs it
TINY = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, num_hidden_layers=2, num_experts=8,
            num_experts_per_tok=2, expert_intermediate_size=64, dense_intermediate_size=128, moe_layer_freq=[1, 1],
            max_position_embeddings=4096)
VARIANT = dict(num_hidden_layers=3, moe_layer_freq=[0, 1, 1], num_key_value_heads=2, moe_router_enable_expert_bias=True,
               shared_expert_intermediate_size=64, attention_bias=True, partial_rotary_factor=0.5, clip_qkv=2.0)

MASK, EOS = 156895, 156892
PROMPTS = [
    [156891, 120, 4599, 1345, 25, 7, 30, 19, 10, 46, 30, 156893, 120, 23, 44, 991],
    [156891, 88, 5, 1290, 77, 3030, 12, 9, 8, 150000, 4, 156893, 120],
    [156891, 120, 7000, 7001, 7002, 31, 32, 33, 34, 35, 36, 37, 38, 156893, 2, 991, 17, 18, 19],
]
CANVASES = [PROMPTS[0] + [MASK] * 16, PROMPTS[1] + [17, MASK, 900, MASK, MASK, 13, MASK, EOS] + [MASK] * 8]
POSITIONS = [[0, 15, 16, 20, 27, 31], [3, 13, 14, 17, 22, 28]]
FIXED_IDS = [0, 13, 120, 991, EOS, MASK, 157183]
# (gen_length, block_length, steps) for generate(), on every prompt
GENERATE = [(32, 8, 32), (24, 8, 12)]


def build(work: Path, sources: dict[str, str], config: dict, name: str):
    """The authors' model for `config`, deterministically filled, saved and loaded back."""
    from transformers import AutoConfig, AutoModel

    folder = work / f"build-{name}"
    folder.mkdir()
    for fname, text in sources.items():
        (folder / fname).write_text(text)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    cfg = AutoConfig.from_pretrained(str(folder), trust_remote_code=True)
    model = AutoModel.from_config(cfg, trust_remote_code=True, torch_dtype=torch.float32).eval()
    fill_deterministic(model)
    model.config._name_or_path = "inclusionAI/LLaDA-MoE-7B-A1B-Instruct"
    ckpt = work / f"tiny-{name}"
    model.save_pretrained(str(ckpt))
    for fname in sources:
        shutil.copy(folder / fname, ckpt / fname)
    loaded = AutoModel.from_pretrained(str(ckpt), trust_remote_code=True, torch_dtype=torch.float32).eval()
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys(), ours.keys() ^ theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    saved = json.loads((ckpt / "config.json").read_text())
    saved["model_type"] = "llada"  # as released: the hub's config.json says llada, not the dllm library's lladamoe
    return loaded, json.dumps(saved, indent=2, sort_keys=True) + "\n", tensor_table(ckpt), ckpt


def load_bf16(ckpt: Path):
    """The saved checkpoint loaded in bfloat16, as people load it (from_pretrained(torch_dtype=bfloat16) keeps the
    rotary inverse frequencies in float32, where model.to(bfloat16) would round them)."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(ckpt), trust_remote_code=True, torch_dtype=torch.bfloat16).eval()


def canvas_figures(model) -> list[dict]:
    rows = []
    with torch.no_grad():
        for k, (ids, positions) in enumerate(zip(CANVASES, POSITIONS)):
            logits = model(torch.tensor([ids])).logits[0]
            rows.append({"canvas": k, "ids": ids, "positions": top_figures(logits, positions, FIXED_IDS)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dllm-repo", default=DLLM_REPO, help="git clone of ZHZisZZ/dllm")
    ap.add_argument("--dllm-commit", default=DLLM_COMMIT)
    ap.add_argument("--llada-repo", default=LLADA_REPO, help="git clone of ML-GSAI/LLaDA (its generate.py)")
    ap.add_argument("--generate-commit", default="HEAD")
    ap.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "reference" / "llada_moe"))
    args = ap.parse_args()
    import transformers

    commit = git(args.dllm_repo, "rev-parse", args.dllm_commit).strip()
    generate_commit = git(args.llada_repo, "rev-parse", args.generate_commit).strip()
    generate_src = show(args.llada_repo, generate_commit, "generate.py")
    sources = {fname: show(args.dllm_repo, commit, path) for fname, path in FILES.items()}
    auto_map = {"AutoConfig": "configuration_lladamoe.LLaDAMoEConfig", "AutoModel": "modeling_lladamoe.LLaDAMoEModelLM"}
    config = dict(REAL_7B, **TINY, auto_map=auto_map)
    variant = dict(config, **VARIANT)
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="tie-lite-llada-moe-ref-"))
    try:
        gen_path = work / "llada_generate.py"
        gen_path.write_text(generate_src)
        spec = importlib.util.spec_from_file_location("llada_generate", gen_path)
        gen_module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(gen_module)
        model, saved, table, ckpt = build(work, sources, config, "instruct")
        vmodel, vsaved, vtable, _ = build(work, sources, variant, "variant")
        runs = [run_generate(gen_module.generate, model, prompt, *s, mask_id=MASK) for prompt in PROMPTS
                for s in GENERATE]
        runs_recipe = [run_recipe(gen_module.generate, model, prompt, mask_id=MASK) for prompt in PROMPTS[1:]]
        files = {name: {"repo": DLLM_URL, "commit": commit, "path": path, "sha256": sha256(sources[name])}
                 for name, path in FILES.items()}
        files["generate.py"] = {"repo": LLADA_URL, "commit": generate_commit, "path": "generate.py",
                                "sha256": sha256(generate_src)}
        figures = {
            "about": "Figures of the LLaDA-MoE authors' code as the dllm library carries it (transformers %s, torch "
                     "%s) on a tiny checkpoint with the LLaDA-MoE-7B-A1B config and deterministic weights "
                     "(tests/real_checkpoints.py)." % (transformers.__version__, torch.__version__.split("+")[0]),
            "command": "/work/scratch-moe/venv/bin/python scripts/reference/llada_moe.py --dllm-repo "
                       "/work/.mirror/ZHZisZZ+dllm/repo --llada-repo /work/.mirror/ML-GSAI+LLaDA/repo",
            "source": files,
            "config_source": "LLaDA-MoE-7B-A1B's config.json as public sources give it (REAL_7B in the script, "
                             "assumed fields marked there), with tiny sizes %s" % TINY,
            "fixed_ids": FIXED_IDS,
            "mask_id": MASK,
            "logits_convention": "raw model output in float32: output i is the prediction for position i (no shift)",
            "canvases": canvas_figures(model),
            "canvases_bf16": canvas_figures(load_bf16(ckpt)),
            "generate": runs,
            "generate_recipe": runs_recipe,
            "variant": {"config": "config-variant.json", "tensors": "tensors-variant.json", "changes": VARIANT,
                        "canvases": canvas_figures(vmodel)},
            "notes": [
                "generate() is ML-GSAI/LLaDA's, at temperature 0, cfg 0, remasking low_confidence, mask_id 156895: "
                "per block an even split of the block's tokens over its steps, the most probable masked positions "
                "of the block committed, x0 = argmax of the logits.",
                "The authors' attention is bidirectional (is_causal False, no mask unless one is passed).",
            ],
        }
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config-7b.json").write_text(json.dumps(REAL_7B, indent=2) + "\n")
        (out / "config.json").write_text(saved)
        (out / "tensors.json").write_text(json.dumps(table, indent=1) + "\n")
        (out / "config-variant.json").write_text(vsaved)
        (out / "tensors-variant.json").write_text(json.dumps(vtable, indent=1) + "\n")
        (out / "figures.json").write_text(compact_json(figures) + "\n")
        print(f"wrote {out}: dllm {commit[:12]}, generate {generate_commit[:12]}")
        for r in runs:
            print(len(r["prompt"]), r["gen_length"], r["block_length"], r["steps"], r["forwards"], r["output"])
        for r in runs_recipe:
            print("recipe: prompt %d, forwards %d, distinct ids %d, first 10 %s"
                  % (len(r["prompt"]), r["forwards"], len(set(r["output"])), r["output"][:10]))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
