"""Reference figures for LLaDA2.x (llada2_moe), computed by the authors' own code (never imported by tie-lite).

Run it in a scratch virtualenv with the transformers the dllm library pins for these files (4.57.0):

    python3 -m venv /tmp/tie-lite-llada2-venv
    /tmp/tie-lite-llada2-venv/bin/pip install torch==2.13.0 && \\
        /tmp/tie-lite-llada2-venv/bin/pip install transformers==4.57.0 accelerate==1.11.0 safetensors numpy
    git clone https://github.com/ZHZisZZ/dllm          # or the fetch tool's /work/.mirror/ZHZisZZ+dllm/repo
    /tmp/tie-lite-llada2-venv/bin/python scripts/reference/llada2.py --dllm-repo /work/.mirror/ZHZisZZ+dllm/repo

The authors' files are read with `git show COMMIT:PATH` from a clone of ZHZisZZ/dllm (the dllm library, which
carries the inclusionAI hub files `modeling_llada2_moe.py` / `configuration_llada2_moe.py` for LLaDA2.0 and a
LLaDA2.1 copy whose generate() adds token editing) into a temporary folder; nothing of them is copied into
this repository.

- dllm/pipelines/llada2/models/{modeling,configuration}_llada2_moe.py: the model and LLaDA2.0's generate()
  (threshold decoding with a per-step minimum);
- dllm/pipelines/llada21/models/{modeling,configuration}_llada21_moe.py: LLaDA2.1's generate() (threshold with at
  least one token a step, plus editing of committed tokens past `editing_threshold`, and up to
  `max_post_steps` extra passes once a block has no masks left).

The configuration is inclusionAI/LLaDA2.0-mini's, as public copies give it (REAL_MINI below; the hub folder
itself cannot be fetched here): vocabulary 157184, mask 156895, end-of-text 156892, 20 layers of width 2048,
16 heads and 4 key/value heads of 128, partial rotary 0.5 with theta 600000, 256 experts in 8 groups keeping
4, 8 experts a token, 1 shared expert, routed scaling 2.5, the first layer dense. The tiny checkpoint keeps
every one of those facts except the sizes (TINY): width 64, 4 heads, 2 key/value heads of 16, 3 layers (the
first dense), 16 experts of width 64 in 4 groups keeping 2, 4 experts a token.

What it writes under --out (default tests/fixtures/reference/llada2/): config.json (as the authors'
save_pretrained wrote it), tensors.json (name, shape, dtype: tests/real_checkpoints.py rebuilds the identical
weights), figures.json (float32 logits at fixed positions of fixed canvases, bidirectional and block-causal;
the ids the 2.0 and 2.1 generate() return at temperature 0, with every forward's canvas: under "generate_20" /
"generate_21" on three prompts of 16 tokens, a multiple of every block size used, and under
"generate_20_unaligned" / "generate_21_unaligned", with the same settings, on prompts of 13 and 21 tokens, which
are not). "generate_recipe_20" / "generate_recipe_21": what `tie-lite generate --model FOLDER --gen-length 64`
runs with no other decode flag, for a LLaDA2.0 and a LLaDA2.1 folder: the authors' generate() with every
argument at its default (checked against their signatures; every one is passed and recorded) except
gen_length 64, on the unaligned prompts. On these weights threshold 0.95 never fires and nothing is edited (every
forward commits one mask, 2.1 adding one closing forward a block); the script has no sharper weights to make it
fire (its other runs lower the threshold instead).

Block placement (both generate()): blocks are numbered from position 0 of the sequence, not from the end of the
prompt. With P prompt tokens, G = gen_length and B = block_length, num_blocks = (P + G + B - 1) // B and the
canvas x holds num_blocks * B positions, the prompt then masks; decoding starts at block P // B, so blocks start
at multiples of B and the first generated block is partial when P % B != 0: it holds the last P % B prompt
tokens (which attend to, and are attended by, that block's masks) and B - P % B masks. Each forward sees the
window x[:, :(block + 1) * B] under the block-causal mask. In 2.0 that partial block still runs the schedule of
a whole block (num_transfer_tokens of B over `steps`), committing k = min(num_to_transfer, masks left) when too
few pass the threshold, and stops early once no mask is left; in 2.1 its prompt tokens are never edited. The
last block may reach past P + G: those positions are decoded like the others (they compete for the block's
commits, and in 2.1 may be edited) and then cut, the output being x[:, P:P + G] cut after the first end-of-text.
With the unaligned prompts the outputs differ from those of blocks numbered from the end of the prompt: the
script replays both layouts with the authors' model and sampler and checks that (replay(), below; it also
checks that the replay of the authors' layout is token-identical to their generate()).
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from common import git, sha256, show, top_figures  # noqa: E402  (scripts/reference/, beside this file)
from llada import compact_json  # noqa: E402
from real_checkpoints import fill_deterministic, tensor_table  # noqa: E402

DLLM_REPO = "/work/.mirror/ZHZisZZ+dllm/repo"
DLLM_URL = "https://github.com/ZHZisZZ/dllm"
DLLM_COMMIT = "ca176752fbceec49c6b4777a2c18ae88e4eb10ed"
FILES_20 = {"modeling_llada2_moe.py": "dllm/pipelines/llada2/models/modeling_llada2_moe.py",
            "configuration_llada2_moe.py": "dllm/pipelines/llada2/models/configuration_llada2_moe.py"}
FILES_21 = {"modeling_llada21_moe.py": "dllm/pipelines/llada21/models/modeling_llada21_moe.py",
            "configuration_llada21_moe.py": "dllm/pipelines/llada21/models/configuration_llada21_moe.py"}

# inclusionAI/LLaDA2.0-mini config.json, from public copies: the model-args test of the xLLM serving engine
# (every size, router and rotary field) and the dllm library's generate() defaults (mask and end-of-text ids).
REAL_MINI = {
    "architectures": ["LLaDA2MoeModelLM"],
    "model_type": "llada2_moe",
    "dtype": "bfloat16",
    "first_k_dense_replace": 1,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 5120,
    "max_position_embeddings": 32768,
    "moe_intermediate_size": 512,
    "moe_router_enable_expert_bias": True,
    "n_group": 8,
    "norm_head": False,
    "norm_topk_prob": True,
    "num_attention_heads": 16,
    "num_experts": 256,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 20,
    "num_key_value_heads": 4,
    "num_shared_experts": 1,
    "output_router_logits": False,
    "pad_token_id": 156892,
    "partial_rotary_factor": 0.5,
    "rms_norm_eps": 1e-06,
    "rope_theta": 600000,
    "routed_scaling_factor": 2.5,
    "router_dtype": "fp32",
    "score_function": "sigmoid",
    "tie_word_embeddings": False,
    "topk_group": 4,
    "use_bias": False,
    "use_qk_norm": True,
    "use_qkv_bias": False,
    "vocab_size": 157184,
}
# widths are multiples of 64: bitsandbytes' 4-bit CPU kernel needs it
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, moe_intermediate_size=64, num_experts=16, n_group=4, topk_group=2, num_experts_per_tok=4,
            max_position_embeddings=4096)

MASK, EOS = 156895, 156892
# three prompts of 16 tokens (a multiple of every block size used: see llada2_moe.py on block numbering)
PROMPTS = [
    [156891, 120, 4599, 1345, 25, 7, 30, 19, 10, 46, 30, 156893, 120, 23, 44, 991],
    [156891, 88, 5, 1290, 77, 3030, 12, 9, 8, 150000, 4, 156893, 120, 23, 44, 991],
    [156891, 120, 7000, 7001, 7002, 31, 32, 33, 34, 35, 36, 37, 38, 156893, 2, 991],
]
# prompts of 13 and 21 tokens, a multiple of no block size used (8, 16): 13 % 8 = 5, 13 % 16 = 13, 21 % 8 = 5,
# 21 % 16 = 5, so the first generated block is partial (see the docstring on block placement)
UNALIGNED_PROMPTS = [
    [156891, 120, 4599, 1345, 25, 7, 30, 19, 156893, 120, 23, 44, 991],
    [156891, 88, 5, 1290, 77, 3030, 12, 9, 8, 150000, 4, 61, 62, 63, 64, 65, 156893, 120, 23, 44, 991],
]
CANVASES = [PROMPTS[0] + [MASK] * 16, PROMPTS[1] + [17, MASK, 900, MASK, MASK, 13, MASK, EOS] + [MASK] * 8]
POSITIONS = [[0, 15, 16, 20, 27, 31], [3, 16, 17, 21, 24, 31]]
FIXED_IDS = [0, 13, 120, 991, EOS, MASK, 157183]
BLOCK_FIGURES = 8  # the block-causal logits use blocks of 8
# (gen_length, block_length, steps per block, threshold) for LLaDA2.0's generate()
GENERATE_20 = [(32, 8, 8, 0.95), (32, 16, 4, 0.95), (24, 8, 8, 0.0004)]
# (gen_length, block_length, threshold, editing_threshold, max_post_steps) for LLaDA2.1's generate()
GENERATE_21 = [(32, 8, 0.95, 0.9, 16), (32, 8, 0.0004, 0.00045, 4)]
# the authors' generate() defaults, every argument but `inputs` and gen_length (main() checks them against their
# signatures): what tie-lite runs for a LLaDA2.0 / LLaDA2.1 folder given only --gen-length
RECIPE_GEN_LENGTH = 64
RECIPE_20 = dict(temperature=0.0, block_length=32, steps=32, top_p=None, top_k=None, eos_early_stop=False,
                 minimal_topk=1, threshold=0.95, eos_id=EOS, mask_id=MASK)
RECIPE_21 = dict(RECIPE_20, editing_threshold=0.9, max_post_steps=16, num_to_transfer=1)


def block_mask(length: int, block: int) -> torch.Tensor:
    """The additive block-causal mask the authors' generate() builds (0 / -inf, bfloat16)."""
    n = (length + block - 1) // block
    tri = torch.tril(torch.ones(n, n))
    full = tri.repeat_interleave(block, 0).repeat_interleave(block, 1)[:length, :length]
    return full[None, None].log().to(torch.bfloat16)


def build(work: Path, files: dict[str, str], repo: str, commit: str, config: dict, name: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = work / f"build-{name}"
    folder.mkdir()
    sources = {fname: show(repo, commit, path) for fname, path in files.items()}
    for fname, text in sources.items():
        (folder / fname).write_text(text)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    cfg = AutoConfig.from_pretrained(str(folder), trust_remote_code=True)
    model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=True, torch_dtype=torch.float32).eval()
    fill_deterministic(model)
    model.config._name_or_path = "inclusionAI/LLaDA2.0-mini"
    ckpt = work / f"tiny-{name}"
    model.save_pretrained(str(ckpt))
    for fname in sources:
        shutil.copy(folder / fname, ckpt / fname)
    loaded = AutoModelForCausalLM.from_pretrained(str(ckpt), trust_remote_code=True, torch_dtype=torch.float32).eval()
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys(), ours.keys() ^ theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    return loaded, (ckpt / "config.json").read_text(), tensor_table(ckpt), sources


def canvas_figures(model) -> list[dict]:
    rows = []
    with torch.no_grad():
        for k, (ids, positions) in enumerate(zip(CANVASES, POSITIONS)):
            x = torch.tensor([ids])
            full = model(x).logits[0]
            blocked = model(x, attention_mask=block_mask(len(ids), BLOCK_FIGURES).float(),
                            position_ids=torch.arange(len(ids))[None]).logits[0]
            rows.append({"canvas": k, "ids": ids, "positions": top_figures(full, positions, FIXED_IDS),
                         "block_causal": {"block_size": BLOCK_FIGURES,
                                          "positions": top_figures(blocked, positions, FIXED_IDS)}})
    return rows


def recorded_generate(model, **kwargs) -> dict:
    """generate() with every canvas its forwards saw."""
    seen: list[list[int]] = []
    original = model.forward

    def forward(x, *args, attention_mask=None, **kw):
        # generate() builds its 0 / -inf mask in bfloat16 for a bfloat16 model; SDPA refuses it beside float32
        # queries, so it is cast (0 and -inf are exact in both)
        seen.append(x[0].tolist())
        return original(x, *args, attention_mask=attention_mask.to(torch.float32), **kw)

    model.forward = forward
    try:
        out = model.generate(**kwargs)
    finally:
        del model.forward
    return {"output": out[0].tolist(), "forwards": len(seen), "canvases": seen}


def edits_in(canvases: list[list[int]]) -> int:
    """Committed tokens replaced by another token between consecutive forwards of one block."""
    count = 0
    for a, b in zip(canvases, canvases[1:]):
        n = min(len(a), len(b))
        count += sum(1 for x, y in zip(a[:n], b[:n]) if x != MASK and y != MASK and x != y)
    return count


def runs_20(model, prompts: list[list[int]]) -> list[dict]:
    """LLaDA2.0's generate() on each prompt under every GENERATE_20 setting."""
    runs = []
    for prompt in prompts:
        for gen, block, steps, threshold in GENERATE_20:
            r = recorded_generate(model, inputs=torch.tensor([prompt]), temperature=0.0, block_length=block,
                                  steps=steps, gen_length=gen, threshold=threshold, eos_id=EOS, mask_id=MASK)
            runs.append({"prompt": prompt, "gen_length": gen, "block_length": block, "steps": steps,
                         "threshold": threshold, **r})
    return runs


def runs_21(model21, prompts: list[list[int]]) -> list[dict]:
    """LLaDA2.1's generate() on each prompt under every GENERATE_21 setting."""
    runs = []
    for prompt in prompts:
        for gen, block, threshold, edit, post in GENERATE_21:
            r = recorded_generate(model21, inputs=torch.tensor([prompt]), temperature=0.0, block_length=block,
                                  steps=block, gen_length=gen, threshold=threshold, editing_threshold=edit,
                                  max_post_steps=post, eos_id=EOS, mask_id=MASK)
            runs.append({"prompt": prompt, "gen_length": gen, "block_length": block, "threshold": threshold,
                         "editing_threshold": edit, "max_post_steps": post, "edits": edits_in(r["canvases"]), **r})
    return runs


def recipe_runs(model, prompts: list[list[int]], recipe: dict) -> list[dict]:
    """The authors' generate() with every argument at its default (`recipe`, checked against their signature) but
    gen_length = RECIPE_GEN_LENGTH, each passed explicitly and recorded beside the fields of the other runs."""
    signature = inspect.signature(model.generate).parameters
    defaults = {name: p.default for name, p in signature.items() if name not in ("self", "inputs", "gen_length")}
    assert defaults == recipe, (defaults, recipe)
    v21 = "editing_threshold" in recipe
    runs = []
    for prompt in prompts:
        r = recorded_generate(model, inputs=torch.tensor([prompt]), gen_length=RECIPE_GEN_LENGTH, **recipe)
        run = {"prompt": prompt, "gen_length": RECIPE_GEN_LENGTH, "block_length": recipe["block_length"],
               "steps": recipe["steps"], "threshold": recipe["threshold"]}
        if v21:
            run.update(editing_threshold=recipe["editing_threshold"], max_post_steps=recipe["max_post_steps"],
                       num_to_transfer=recipe["num_to_transfer"], edits=edits_in(r["canvases"]))
        run.update(temperature=recipe["temperature"], top_p=recipe["top_p"], top_k=recipe["top_k"],
                   eos_early_stop=recipe["eos_early_stop"], minimal_topk=recipe["minimal_topk"], **r)
        runs.append(run)
    return runs


def mask_commits(run: dict) -> list[int]:
    """Masks each forward committed, from the canvases: every decoded block ends with no mask (2.0's schedule
    covers the block, 2.1 runs until none is left), so the last forward of a block commits what it saw."""
    block, seen = run["block_length"], run["canvases"]
    masks = [c[-block:].count(MASK) for c in seen]
    return [m - (masks[i + 1] if i + 1 < len(seen) and len(seen[i + 1]) == len(seen[i]) else 0)
            for i, m in enumerate(masks)]


def replay(model, run: dict, from_prompt_end: bool) -> dict:
    """The authors' decoding loop (2.0's when the run has `steps`, else 2.1's) with their model and sampler, on
    either block layout: theirs (block(p) = p // B, decoding from block P // B) or blocks numbered from the end
    of the prompt (block(p) = floor((p - P) / B), the same rule shifted to start at P: ceil(G / B) whole blocks
    of masks, the prompt in blocks counted back from P). The two coincide when B divides P. A check only: on
    their layout it must give exactly what their generate() gave; nothing of it is written."""
    prompt, gen, block = run["prompt"], run["gen_length"], run["block_length"]
    v21 = "editing_threshold" in run
    n = len(prompt)
    start = n if from_prompt_end else 0  # where block numbering starts
    first = start + (n - start) // block * block  # start of the first block holding a mask
    num = (n + gen - first + block - 1) // block  # blocks decoded
    ids = [(i - start) // block for i in range(first + num * block)]
    bid = torch.tensor(ids)
    mask = torch.zeros(len(ids), len(ids)).masked_fill(bid[None, :] > bid[:, None], float("-inf"))[None, None]
    x = torch.full((len(ids),), MASK, dtype=torch.long)
    x[:n] = torch.tensor(prompt)
    forwards = 0

    def forward(end: int):
        nonlocal forwards
        forwards += 1
        with torch.no_grad():
            logits = model(x[None, :end], attention_mask=mask[:, :, :end, :end],
                           position_ids=torch.arange(end)[None]).logits
        x0, p = model._sample_with_temperature_topk_topp(logits[:, -block:], temperature=0.0)
        return x0[0], p[0]

    for k in range(num):
        end = first + (k + 1) * block
        cur = x[end - block:end]  # a view: writes land in x
        in_prompt = torch.arange(end - block, end) < n
        if not v21:
            schedule = model._get_num_transfer_tokens(block, min(run["steps"], gen))
            for step in range(len(schedule)):
                active = cur == MASK
                if not active.any():
                    break
                x0, p = forward(end)
                conf = torch.where(active, p, -torch.inf)
                high = conf > run["threshold"]
                want = int(schedule[step])
                take = torch.zeros_like(active)
                if int(high.sum()) >= want:
                    take = high
                else:
                    take[torch.topk(conf, k=min(want, int(active.sum()))).indices] = True
                cur[take] = x0[take]
            if (x[n:end] == EOS).any():
                break
        else:
            post = 0
            while True:
                old = cur.clone()
                active = cur == MASK
                if not active.any():
                    post += 1
                if post > run["max_post_steps"]:
                    break
                x0, p = forward(end)
                take = torch.zeros_like(active)
                if active.any():
                    conf = torch.where(active, p, -torch.inf)
                    high = (conf > run["threshold"]) & active
                    if int(high.sum()) >= 1:
                        take = high
                    else:
                        take[torch.topk(conf, k=1).indices] = True
                edit = (~active) & (~in_prompt) & (p > run["editing_threshold"]) & (x0 != old)
                take = take | edit
                cur[take] = x0[take]
                if not active.any() and not edit.any():
                    break
    out = x[n:n + gen].tolist()
    if EOS in out:
        out = out[:out.index(EOS) + 1]
    return {"output": out, "forwards": forwards}


def check_layouts(model, runs: list[dict]) -> int:
    """replay() on the authors' layout reproduces their generate(); returns how many runs give another output
    when blocks are numbered from the end of the prompt."""
    differ = 0
    for r in runs:
        theirs = replay(model, r, from_prompt_end=False)
        assert theirs == {"output": r["output"], "forwards": r["forwards"]}, (r["prompt"], theirs, r["output"])
        other = replay(model, r, from_prompt_end=True)
        differ += other["output"] != r["output"]
        print("  P=%d G=%d B=%d: %s from the prompt end (%d forwards, authors %d)"
              % (len(r["prompt"]), r["gen_length"], r["block_length"],
                 "same output" if other["output"] == r["output"] else "other output", other["forwards"],
                 r["forwards"]))
    return differ


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dllm-repo", default=DLLM_REPO, help="git clone of ZHZisZZ/dllm")
    ap.add_argument("--dllm-commit", default=DLLM_COMMIT)
    ap.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "reference" / "llada2"))
    args = ap.parse_args()
    import transformers

    commit = git(args.dllm_repo, "rev-parse", args.dllm_commit).strip()
    config = dict(REAL_MINI, **TINY)
    config["auto_map"] = {"AutoConfig": "configuration_llada2_moe.LLaDA2MoeConfig",
                          "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeModelLM"}
    config21 = dict(config, model_type="llada21_moe",
                    auto_map={"AutoConfig": "configuration_llada21_moe.LLaDA2MoeConfig",
                              "AutoModelForCausalLM": "modeling_llada21_moe.LLaDA2MoeModelLM"})
    torch.manual_seed(0)
    # one thread: float32 sums then run in one order on every machine (with 2 threads the logits figures moved
    # in their last bits, ~1.4e-6; with 1 they are bit-identical to those committed before)
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="tie-lite-llada2-ref-"))
    try:
        model, saved, table, sources = build(work, FILES_20, args.dllm_repo, commit, config, "llada2")
        model21, _, table21, sources21 = build(work, FILES_21, args.dllm_repo, commit, config21, "llada21")
        assert table == table21  # the same weights under both files
        with torch.no_grad():
            x = torch.tensor([CANVASES[1]])
            assert torch.equal(model(x).logits, model21(x).logits)
        figures_main = canvas_figures(model)
        runs20, runs21 = runs_20(model, PROMPTS), runs_21(model21, PROMPTS)
        assert any(r["edits"] for r in runs21), "no editing run edited anything: lower its editing_threshold"
        unaligned20, unaligned21 = runs_20(model, UNALIGNED_PROMPTS), runs_21(model21, UNALIGNED_PROMPTS)
        assert all(len(r["prompt"]) % r["block_length"] for r in unaligned20 + unaligned21)
        assert any(r["edits"] for r in unaligned21), "no unaligned editing run edited anything"
        recipe20 = recipe_runs(model, UNALIGNED_PROMPTS, RECIPE_20)
        recipe21 = recipe_runs(model21, UNALIGNED_PROMPTS, RECIPE_21)
        print("replay, aligned 2.0 / 2.1 (the layouts coincide):")
        assert check_layouts(model, runs20) == 0 and check_layouts(model21, runs21) == 0
        print("replay, unaligned 2.0:")
        differ20 = check_layouts(model, unaligned20)
        print("replay, unaligned 2.1:")
        differ21 = check_layouts(model21, unaligned21)
        print("replay, recipe 2.0 / 2.1 (the authors' defaults, gen_length %d):" % RECIPE_GEN_LENGTH)
        check_layouts(model, recipe20)
        check_layouts(model21, recipe21)
        assert differ20 == len(unaligned20) and differ21 == len(unaligned21), \
            "some unaligned run gives the same output with blocks numbered from the end of the prompt"
        files = {name: {"repo": DLLM_URL, "commit": commit, "path": path, "sha256": sha256(sources[name])}
                 for name, path in FILES_20.items()}
        files.update({name: {"repo": DLLM_URL, "commit": commit, "path": path, "sha256": sha256(sources21[name])}
                      for name, path in FILES_21.items()})
        figures = {
            "about": "Figures of the LLaDA2 authors' code as the dllm library carries it (transformers %s, torch %s) "
                     "on a tiny checkpoint with the LLaDA2.0-mini config and deterministic weights "
                     "(tests/real_checkpoints.py)." % (transformers.__version__, torch.__version__.split("+")[0]),
            "command": "/tmp/tie-lite-llada2-venv/bin/python scripts/reference/llada2.py "
                       "--dllm-repo /work/.mirror/ZHZisZZ+dllm/repo",
            "source": files,
            "config_source": "inclusionAI/LLaDA2.0-mini's config.json as public copies give it (REAL_MINI in the "
                             "script), with tiny sizes %s" % TINY,
            "fixed_ids": FIXED_IDS,
            "logits_convention": "raw model output in float32: output i is the prediction for position i (no shift)",
            "canvases": figures_main,
            "generate_20": runs20,
            "generate_21": runs21,
            "generate_20_unaligned": unaligned20,
            "generate_21_unaligned": unaligned21,
            "generate_recipe_20": recipe20,
            "generate_recipe_21": recipe21,
            "notes": [
                "Block placement (both generate()): blocks are numbered from position 0 of the sequence, not from "
                "the end of the prompt. With P prompt tokens, G = gen_length and B = block_length: num_blocks = "
                "(P + G + B - 1) // B, the canvas x holds num_blocks * B positions (prompt, then masks), blocks "
                "start at multiples of B from position 0 and decoding starts at block P // B, each forward seeing "
                "x[:, :(block + 1) * B] under the block-causal mask (a position sees the positions of its block and "
                "of earlier blocks, prompt positions included). When P % B != 0 the first generated block is "
                "partial: its first P % B positions are the prompt's last tokens (attending to that block's masks "
                "and attended by them) and it holds B - P % B masks; its steps use the schedule of a whole block "
                "(2.0: num_transfer_tokens of B over `steps`), committing k = min(num_to_transfer, masks left) "
                "when fewer pass the threshold, and it ends once no mask is left. The last block may reach past "
                "P + G: those positions are decoded like the others (they compete for the block's commits, and in "
                "2.1 may be edited) and cut: the output is x[:, P:P + G] cut after the first end-of-text.",
                "generate_20 and generate_21: three prompts of 16 tokens, a multiple of every block size used "
                "(8, 16), where blocks numbered from position 0 and from the end of the prompt coincide. "
                "generate_20_unaligned and generate_21_unaligned: the same settings on prompts of 13 tokens "
                "(13 % 8 = 5, 13 % 16 = 13: first generated blocks of 3 masks) and 21 tokens (21 % 8 = 5, "
                "21 % 16 = 5: first generated blocks of 3 and 11 masks); with them every output differs from "
                "the one blocks numbered from the end of the prompt (block(p) = floor((p - P) / B)) give, which "
                "the script checks by replaying both layouts with the authors' model and sampler.",
                "generate() (2.0): each step commits the masked positions of the block whose "
                "probability exceeds `threshold` (strictly) if there are at least num_transfer_tokens[step] of "
                "them (an even split of block_length over `steps`), else the num_transfer_tokens[step] most "
                "probable; x0 = argmax of softmax(logits).",
                "generate() (2.1): the same threshold with at least num_to_transfer = 1 a step and no step budget; "
                "in the same step, committed non-prompt positions of the block whose argmax differs from their "
                "token and whose probability exceeds editing_threshold are replaced; once a block has no masks it "
                "runs again while edits happen, at most max_post_steps more forwards.",
                "generate() builds its mask in bfloat16; the harness casts it to float32 for the float32 model "
                "(its values, 0 and -inf, are exact in both).",
                "2.0 stops decoding further blocks once an end-of-text id stands in x[:, P:window end]; 2.1 does "
                "so only with eos_early_stop (default False, as run here), so it decodes every block. Both cut "
                "the output at P + G, then after the first end-of-text.",
            ],
        }
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(saved)
        (out / "tensors.json").write_text(json.dumps(table, indent=1) + "\n")
        (out / "figures.json").write_text(compact_json(figures) + "\n")
        print(f"wrote {out}: dllm {commit[:12]}")
        for r in runs20 + unaligned20:
            print("2.0 P=%d" % len(r["prompt"]), r["gen_length"], r["block_length"], r["steps"], r["threshold"],
                  r["forwards"], "distinct", len(set(r["output"])), r["output"])
        for r in runs21 + unaligned21:
            print("2.1 P=%d" % len(r["prompt"]), r["gen_length"], r["block_length"], r["threshold"],
                  r["editing_threshold"], r["forwards"], "edits", r["edits"], "distinct", len(set(r["output"])),
                  r["output"])
        for r in recipe20 + recipe21:
            commits = mask_commits(r)
            print("recipe %s P=%d" % ("2.1" if "editing_threshold" in r else "2.0", len(r["prompt"])),
                  "forwards", r["forwards"], "masks", sum(commits), "threshold fired (forwards committing >1 mask)",
                  sum(c > 1 for c in commits), "edits", r.get("edits", 0), "distinct", len(set(r["output"])),
                  "len", len(r["output"]), r["output"][:10])
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
