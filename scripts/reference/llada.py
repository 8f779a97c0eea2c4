"""Reference figures for LLaDA, computed by the model authors' own code (never imported by tie-lite).

Run it in the scratch virtualenv with the transformers the authors used (4.46):

    bash scripts/reference/make_venv.sh            # /tmp/tie-lite-reference-venv (torch 2.13 CPU, transformers 4.46.3)
    /tmp/tie-lite-reference-venv/bin/python scripts/reference/llada.py \\
        --llada-repo /work/.mirror/ML-GSAI+LLaDA/repo --fast-dllm-repo /work/.mirror/NVlabs+Fast-dLLM/repo \\
        --hub-repo /work/.mirror/monash-yann+dllm-research/repo

The authors' files are read with `git show COMMIT:PATH` from local clones (no work tree needed) into a
temporary folder; nothing of them is copied into this repository. Where they come from:

- modeling_llada.py: ML-GSAI/LLaDA at commit 59750478f2aa17978d636bc61dd00b1574986b4a ("add modeling_llada",
  the hub's GSAI-ML/LLaDA-8B-Instruct modeling file as its authors published it on GitHub; deleted again in
  3cc7d80) -- git clone https://github.com/ML-GSAI/LLaDA
- generate.py (the reference sampler, `generate()`): the same clone at --generate-commit (default HEAD;
  the figures record the commit, b7e6c3565f194352da44b38dd12b6970597309f3 when made, where generate.py last
  changed in 65cbed2).
- configuration_llada.py: not in ML-GSAI/LLaDA; NVlabs/Fast-dLLM carries it as llada/model/configuration_llada.py
  (commit 24cc59e75f20a6384bae8c905965bb090b96388e) -- git clone https://github.com/NVlabs/Fast-dLLM
  It differs from the hub's by its license header and one added field (train_max_sequence_length).
- config.json of GSAI-ML/LLaDA-8B-Instruct: a copy of the hub folder that monash-yann/dllm-research carries
  under models/LLaDA-8B-Instruct/ (commit ecd7cd2f8cbe67f49c34763ba56a451078be5635; transformers_version
  4.46.3 in it) -- git clone https://github.com/monash-yann/dllm-research. (Its modeling_llada.py is *not*
  used: that copy was edited to return attention maps.) Or pass --hub-config PATH to a config.json
  downloaded from the hub itself.

What it writes under --out (default tests/fixtures/reference/llada/):
- config.json   exactly as the authors' save_pretrained wrote it for the tiny model: the real Instruct config
                (real vocabulary 126464, special ids, rope theta 500000, RMSNorm eps, block type, no weight
                tying, the hub's auto_map) with tiny dimensions d_model 64, 4 heads, 4 kv heads, 2 layers,
                mlp_hidden_size 128 (d_model a multiple of 64: bitsandbytes' 4-bit CPU kernel needs it);
- tensors.json  name, shape and dtype of every tensor of the saved checkpoint (tests/real_checkpoints.py
                rebuilds the identical weights from it with `deterministic_tensor`);
- config-VARIANT.json, tensors-VARIANT.json  the same for variants of the config that the authors' code
                also supports (grouped-query attention; tied output weights, biases, MQA, logit scaling...);
- figures.json  logits at fixed positions of fixed canvases (fp32, and bf16 for some), and the token ids
                the authors' `generate()` returns at temperature 0, cfg 0, remasking low_confidence;
                "generate_recipe" runs it exactly as the authors' generate.py main() calls it (steps 128,
                gen_length 128, block_length 32, temperature 0, cfg 0, low_confidence), on the 17-token and the
                11-token prompt: what `tie-lite generate --model FOLDER` runs with no decode flags;
- tokenizer_config.json  the hub tokenizer's chat template and special tokens (tests/real_checkpoints.py puts
                them on its small vocabulary, so the chat prompt is rendered by the real template).

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
from real_checkpoints import fill_deterministic, tensor_table

LLADA_REPO = "/work/.mirror/ML-GSAI+LLaDA/repo"
LLADA_URL = "https://github.com/ML-GSAI/LLaDA"
MODELING_COMMIT = "59750478f2aa17978d636bc61dd00b1574986b4a"
FAST_DLLM_REPO = "/work/.mirror/NVlabs+Fast-dLLM/repo"
FAST_DLLM_URL = "https://github.com/NVlabs/Fast-dLLM"
FAST_DLLM_COMMIT = "24cc59e75f20a6384bae8c905965bb090b96388e"
CONFIG_PATH = "llada/model/configuration_llada.py"
HUB_REPO = "/work/.mirror/monash-yann+dllm-research/repo"
HUB_URL = "https://github.com/monash-yann/dllm-research"
HUB_COMMIT = "ecd7cd2f8cbe67f49c34763ba56a451078be5635"
HUB_PATH = "models/LLaDA-8B-Instruct/config.json"
HUB_TOKENIZER_PATH = "models/LLaDA-8B-Instruct/tokenizer_config.json"
TOKENIZER_KEYS = ("chat_template", "bos_token", "eos_token", "pad_token", "add_bos_token", "add_eos_token",
                  "tokenizer_class")

TINY = dict(d_model=64, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=128)
# Other settings the authors' code implements (hub checkpoints use none of them), checked on the logits only.
VARIANTS = {
    "gqa": dict(n_kv_heads=2),
    "tied": dict(n_kv_heads=None, multi_query_attention=True, weight_tying=True, include_qkv_bias=True,
                 scale_logits=True),
    "biased": dict(include_bias=True, bias_for_layer_norm=None, input_emb_norm=True, rope_full_precision=False,
                   activation_type="gelu", embedding_size=126592, rope_theta=10000.0),
}

BOS, EOS, MASK, SH, EH, EOT = 126080, 126081, 126336, 126346, 126347, 126348
NL2 = 271  # some ordinary ids; only their being fixed matters
# <|startoftext|><|start_header_id|>user<|end_header_id|>\n\n ... <|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n
PROMPT = [BOS, SH, 882, EH, NL2, 3838, 374, 220, 17, 10, 18, 30, EOT, SH, 78191, EH, NL2]
CANVASES = [
    PROMPT + [MASK] * 12,  # prompt then masks
    PROMPT + [791, MASK, 4320, MASK, MASK, 13, MASK, EOT, EOS, EOS, EOS, EOS],  # committed tokens, EOS padding
    [BOS, SH, 882, EH, NL2, 6151, EOT, SH, 78191, EH, NL2] + [MASK] * 10,  # a short prompt and masks
]
POSITIONS = [[0, 16, 17, 22, 28], [5, 17, 18, 21, 25, 28], [0, 10, 11, 15, 20]]
FIXED_IDS = [0, 13, 220, 791, BOS, EOS, MASK, SH, EOT, 126463]
# (gen_length, block_length, steps)
GENERATE = [(32, 8, 32), (32, 16, 16), (24, 8, 12), (16, 8, 32), (32, 32, 8)]
GENERATE_BF16 = [(32, 8, 32), (24, 8, 12)]
GENERATE_GQA = [(32, 8, 16)]
# generate() as the authors' generate.py main() calls it (LLaDA's model card too): the default decode settings
RECIPE = dict(steps=128, gen_length=128, block_length=32, temperature=0., cfg_scale=0., remasking="low_confidence")


def compact_json(value, indent: int = 0) -> str:
    """JSON with objects one key a line and lists of numbers or strings on one line (small, diffable fixtures)."""
    pad, inner = " " * indent, " " * (indent + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{inner}{json.dumps(k)}: {compact_json(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(inner + compact_json(v, indent + 1) for v in value) + "\n" + pad + "]"
    return json.dumps(value)


class Recorder:
    """What generate() calls as `model`: forwards to the authors' model and keeps every canvas it is given."""

    def __init__(self, model):
        self.model = model
        self.device = model.device
        self.canvases: list[list[int]] = []

    def __call__(self, x, attention_mask=None):
        self.canvases.append(x[0].tolist())
        return self.model(x, attention_mask=attention_mask)


def transfers_per_step(rec: Recorder, out: torch.Tensor, mask_id: int) -> list[int]:
    """How many masks each forward's step committed (the canvases it was given, then the output)."""
    history = rec.canvases + [out[0].tolist()]
    return [sum(a == mask_id and b != mask_id for a, b in zip(h0, h1)) for h0, h1 in zip(history, history[1:])]


def run_generate(generate, model, prompt: list[int], gen_length: int, block_length: int, steps: int,
                 mask_id: int = MASK) -> dict:
    """generate() at temperature 0, low-confidence remasking: its output, and how many tokens each step committed."""
    rec = Recorder(model)
    out = generate(rec, torch.tensor([prompt]), steps=steps, gen_length=gen_length, block_length=block_length,
                   temperature=0.0, cfg_scale=0.0, remasking="low_confidence", mask_id=mask_id)
    per_step = transfers_per_step(rec, out, mask_id)
    return {"gen_length": gen_length, "block_length": block_length, "steps": steps, "prompt": prompt,
            "output": out[0, len(prompt):].tolist(), "transfers_per_step": per_step, "forwards": len(rec.canvases)}


def run_recipe(generate, model, prompt: list[int], mask_id: int = MASK) -> dict:
    """generate() called with exactly the arguments of the authors' main() (RECIPE; no attention_mask, as the
    other runs: one unpadded prompt), plus `mask_id` only where it is not LLaDA's default 126336."""
    rec = Recorder(model)
    extra = {} if mask_id == MASK else {"mask_id": mask_id}
    out = generate(rec, torch.tensor([prompt]), **RECIPE, **extra)
    return {"prompt": prompt, "gen_length": RECIPE["gen_length"], "block_length": RECIPE["block_length"],
            "steps": RECIPE["steps"], "temperature": RECIPE["temperature"], "cfg_scale": RECIPE["cfg_scale"],
            "remasking": RECIPE["remasking"], "output": out[0, len(prompt):].tolist(),
            "transfers_per_step": transfers_per_step(rec, out, mask_id), "forwards": len(rec.canvases)}


def build(work: Path, name: str, config: dict, sources: dict[str, str], dtype=torch.float32):
    """The authors' model for `config`, filled deterministically, saved by their save_pretrained and loaded
    back through AutoModel with their remote code. Returns (loaded model, saved config text, tensor table)."""
    from transformers import AutoConfig, AutoModel

    folder = work / f"build-{name}"
    folder.mkdir()
    for fname, text in sources.items():
        (folder / fname).write_text(text)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    cfg = AutoConfig.from_pretrained(str(folder), trust_remote_code=True)
    model = AutoModel.from_config(cfg, trust_remote_code=True, torch_dtype=torch.float32).eval()
    fill_deterministic(model)
    model.config._name_or_path = "GSAI-ML/LLaDA-8B-Instruct"  # not the temporary folder's name
    ckpt = work / f"tiny-llada-{name}"
    model.save_pretrained(str(ckpt))
    for fname in sources:  # the hub folder carries its code beside the weights
        if not (ckpt / fname).exists():
            shutil.copy(folder / fname, ckpt / fname)
    saved = (ckpt / "config.json").read_text()
    table = tensor_table(ckpt)
    loaded = AutoModel.from_pretrained(str(ckpt), trust_remote_code=True, torch_dtype=torch.float32).eval()
    ours, theirs = model.state_dict(), loaded.state_dict()
    if config.get("weight_tying"):  # from_pretrained calls their tie_weights(): transformer.ff_out = transformer.wte
        assert theirs.pop("model.transformer.ff_out.weight").data_ptr() == theirs["model.transformer.wte.weight"].data_ptr()
        assert [r["name"] for r in table if "ff_out" in r["name"] and "blocks" not in r["name"]] == []
    assert ours.keys() == theirs.keys(), (ours.keys() ^ theirs.keys())
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    with torch.no_grad():
        x = torch.tensor([CANVASES[1]])
        assert torch.equal(model(x).logits, loaded(x).logits)
    bf16 = AutoModel.from_pretrained(str(ckpt), trust_remote_code=True, torch_dtype=torch.bfloat16).eval()
    return loaded, bf16, saved, table


def canvas_figures(model, canvases=None) -> list[dict]:
    rows = []
    with torch.no_grad():
        for k, (ids, positions) in enumerate(zip(CANVASES, POSITIONS)):
            if canvases is not None and k not in canvases:
                continue
            logits = model(torch.tensor([ids])).logits[0]
            rows.append({"canvas": k, "ids": ids, "positions": top_figures(logits, positions, FIXED_IDS)})
    return rows


def padded_figures(model) -> dict:
    """A left-padded batch with an attention mask, as generate.py's main() runs one (positions are not
    shifted: the authors' RoPE counts from the first column, pad or not)."""
    short = CANVASES[2]
    pad = len(CANVASES[0]) - len(short)
    batch = torch.tensor([CANVASES[0], [EOS] * pad + short])
    attn = torch.tensor([[1] * len(CANVASES[0]), [0] * pad + [1] * len(short)])
    with torch.no_grad():
        logits = model(batch, attention_mask=attn).logits
        alone = model(batch[:1]).logits
    assert torch.allclose(logits[0], alone[0], atol=1e-5)
    rows = top_figures(logits[1], [pad + p for p in POSITIONS[2]], FIXED_IDS)
    return {"batch": batch.tolist(), "attention_mask": attn.tolist(), "row": 1, "positions": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--llada-repo", default=LLADA_REPO, help="git clone of ML-GSAI/LLaDA")
    ap.add_argument("--modeling-commit", default=MODELING_COMMIT)
    ap.add_argument("--generate-commit", default="HEAD")
    ap.add_argument("--fast-dllm-repo", default=FAST_DLLM_REPO, help="git clone of NVlabs/Fast-dLLM")
    ap.add_argument("--fast-dllm-commit", default=FAST_DLLM_COMMIT)
    ap.add_argument("--hub-repo", default=HUB_REPO, help="git clone holding a copy of the LLaDA-8B-Instruct hub folder")
    ap.add_argument("--hub-commit", default=HUB_COMMIT)
    ap.add_argument("--hub-config", default=None, help="a config.json of GSAI-ML/LLaDA-8B-Instruct instead of --hub-repo")
    ap.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "reference" / "llada"))
    args = ap.parse_args()

    import transformers

    modeling_commit = git(args.llada_repo, "rev-parse", args.modeling_commit).strip()
    generate_commit = git(args.llada_repo, "rev-parse", args.generate_commit).strip()
    fast_commit = git(args.fast_dllm_repo, "rev-parse", args.fast_dllm_commit).strip()
    sources = {
        "modeling_llada.py": show(args.llada_repo, modeling_commit, "modeling_llada.py"),
        "configuration_llada.py": show(args.fast_dllm_repo, fast_commit, CONFIG_PATH),
    }
    generate_src = show(args.llada_repo, generate_commit, "generate.py")
    generate_changed = git(args.llada_repo, "log", "-1", "--format=%H", generate_commit, "--", "generate.py").strip()
    if args.hub_config:
        hub_text = Path(args.hub_config).read_text()
        hub_source = {"file": args.hub_config}
    else:
        hub_commit = git(args.hub_repo, "rev-parse", args.hub_commit).strip()
        hub_text = show(args.hub_repo, hub_commit, HUB_PATH)
        hub_source = {"repo": HUB_URL if args.hub_repo == HUB_REPO else args.hub_repo, "commit": hub_commit,
                      "path": HUB_PATH, "sha256": sha256(hub_text)}
    hub_tokenizer = None  # the hub's chat template and special tokens (its 269 added tokens are left out)
    if not args.hub_config:
        full = json.loads(show(args.hub_repo, hub_commit, HUB_TOKENIZER_PATH))
        hub_tokenizer = {k: full[k] for k in TOKENIZER_KEYS if k in full}
        hub_tokenizer["_source"] = {**hub_source, "path": HUB_TOKENIZER_PATH,
                                    "sha256": sha256(show(args.hub_repo, hub_commit, HUB_TOKENIZER_PATH))}
    hub = json.loads(hub_text)
    assert hub["model_type"] == "llada" and hub["vocab_size"] == 126464 and hub["mask_token_id"] == MASK

    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="tie-lite-llada-ref-"))
    try:
        gen_path = work / "llada_generate.py"
        gen_path.write_text(generate_src)
        spec = importlib.util.spec_from_file_location("llada_generate", gen_path)
        gen_module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(gen_module)
        generate = gen_module.generate

        base = dict(hub, **TINY)
        model, bf16, saved, table = build(work, "instruct", base, sources)
        figures_main = canvas_figures(model)
        figures_bf16 = canvas_figures(bf16)
        padded = padded_figures(model)
        runs = [run_generate(generate, model, PROMPT, *s) for s in GENERATE]
        runs_bf16 = [run_generate(generate, bf16, PROMPT, *s) for s in GENERATE_BF16]
        runs_short = [run_generate(generate, model, CANVASES[2][:11], 16, 8, 16)]
        runs_recipe = [run_recipe(generate, model, prompt) for prompt in (PROMPT, CANVASES[2][:11])]

        variants = {}
        for name, overrides in VARIANTS.items():
            vmodel, vbf16, vsaved, vtable = build(work, name, dict(base, **overrides), sources)
            entry = {"overrides": overrides, "config": f"config-{name}.json", "tensors": f"tensors-{name}.json",
                     "canvases": canvas_figures(vmodel, canvases=[1])}
            if name == "biased":  # rope_full_precision false only matters below float32
                entry["canvases_bf16"] = canvas_figures(vbf16, canvases=[1])
            if name == "gqa":
                entry["generate"] = [run_generate(generate, vmodel, PROMPT, *s) for s in GENERATE_GQA]
            variants[name] = (entry, vsaved, vtable)

        figures = {
            "about": "Figures of the LLaDA authors' own code (transformers %s, torch %s) on tiny checkpoints with "
                     "the real GSAI-ML/LLaDA-8B-Instruct config and deterministic weights (tests/real_checkpoints.py)."
                     % (transformers.__version__, torch.__version__.split("+")[0]),
            "command": "bash scripts/reference/make_venv.sh && /tmp/tie-lite-reference-venv/bin/python "
                       "scripts/reference/llada.py --llada-repo /work/.mirror/ML-GSAI+LLaDA/repo "
                       "--fast-dllm-repo /work/.mirror/NVlabs+Fast-dLLM/repo "
                       "--hub-repo /work/.mirror/monash-yann+dllm-research/repo",
            "source": {
                "modeling_llada.py": {"repo": LLADA_URL, "commit": modeling_commit, "path": "modeling_llada.py",
                                      "sha256": sha256(sources["modeling_llada.py"])},
                "configuration_llada.py": {"repo": FAST_DLLM_URL, "commit": fast_commit, "path": CONFIG_PATH,
                                           "sha256": sha256(sources["configuration_llada.py"])},
                "generate.py": {"repo": LLADA_URL, "commit": generate_commit, "path": "generate.py",
                                "path_last_changed_in": generate_changed, "sha256": sha256(generate_src)},
                "config.json": dict(hub_source, published_as="huggingface.co/GSAI-ML/LLaDA-8B-Instruct config.json"),
            },
            "config_source": "the hub config.json above; tiny dimensions %s replace the real ones (d_model 4096, "
                             "32 heads, 32 kv heads, 32 layers, mlp_hidden_size 12288); every other key is the hub's"
                             % TINY,
            "fixed_ids": FIXED_IDS,
            "logits_convention": "raw model output: output i is the prediction for position i (no shift)",
            "canvases": figures_main,
            "canvases_bf16": figures_bf16,
            "padded": padded,
            "generate": runs,
            "generate_short_prompt": runs_short,
            "generate_bf16": runs_bf16,
            "generate_recipe": runs_recipe,
            "variants": {name: entry for name, (entry, _, _) in variants.items()},
            "notes": [
                "generate(): temperature 0 returns the logits unchanged (no float64 at all); x0 = argmax of the "
                "logits; confidence = softmax(logits) in the model's dtype gathered at x0; positions after the "
                "current block get -inf, so do unmasked ones; torch.topk over the whole canvas picks "
                "num_transfer_tokens[i] positions (base = n // steps per step, the first n % steps steps one more, "
                "n = the block's masks at its start). Steps whose count is 0 still run a forward.",
                "bf16: the model runs in bfloat16 and generate() ranks by a bfloat16 softmax.",
                "The model: RMSNorm in float32, cast back to the input dtype, then weight * x (+ bias); RoPE with "
                "inv_freq = 1 / theta ** (arange(0, hd, 2) / hd) in float32, cos/sin of cat(freqs, freqs), "
                "rotate_half = cat(-x2, x1), applied to q and k in float32 when rope_full_precision; "
                "bidirectional SDPA (is_causal False); a padding attention_mask becomes an additive "
                "finfo(float32).min key bias, and RoPE positions are never shifted for padding.",
            ],
        }
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(saved)
        (out / "tensors.json").write_text(json.dumps(table, indent=1) + "\n")
        for name, (entry, vsaved, vtable) in variants.items():
            (out / entry["config"]).write_text(vsaved)
            (out / entry["tensors"]).write_text(json.dumps(vtable, indent=1) + "\n")
        (out / "figures.json").write_text(compact_json(figures) + "\n")
        if hub_tokenizer is not None:
            (out / "tokenizer_config.json").write_text(json.dumps(hub_tokenizer, indent=2) + "\n")
        print(f"wrote {out}: modeling {modeling_commit[:12]}, generate {generate_commit[:12]}, "
              f"configuration {fast_commit[:12]}")
        for r in runs + runs_bf16 + runs_short:
            print(r["gen_length"], r["block_length"], r["steps"], r["transfers_per_step"], r["output"])
        for r in runs_recipe:
            print("recipe: prompt %d, forwards %d, distinct ids %d, first 10 %s"
                  % (len(r["prompt"]), r["forwards"], len(set(r["output"])), r["output"][:10]))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
