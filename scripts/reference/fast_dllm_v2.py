"""Reference figures for Fast-dLLM v2 (NVlabs), computed by the authors' own code (never imported by tie-lite).

Fast-dLLM v2 is Qwen2.5-7B-Instruct fine-tuned into a block-diffusion model. Its model code and generate() are
the hub folder's (Efficient-Large-Model/Fast_dLLM_v2_7B: modeling.py, configuration.py, model_type
"Fast_dLLM_Qwen"); the `v2/` folder of NVlabs/Fast-dLLM loads that folder with trust_remote_code and calls
`model.generate(...)` (v2/run_chatbot.py) or its own `batch_sample` (v2/generation_functions.py, the lm-eval
harness v2/eval.py). Run this in a scratch virtualenv with the transformers v2/requirements.txt pins (4.53.1, the
config's transformers_version too):

    bash scripts/reference/make_venv.sh /tmp/tie-lite-fastdllm2-venv 4.53.1
    /tmp/tie-lite-fastdllm2-venv/bin/python scripts/reference/fast_dllm_v2.py

The authors' files are read with `git show COMMIT:PATH` from git mirrors (the fetch tool's /work/.mirror/...)
into a temporary folder; nothing of them is copied into this repository. Where they come from (SOURCES below):

- v2/generation_functions.py (batch_sample) and v2/run_chatbot.py, v2/eval.py (the settings they pass):
  NVlabs/Fast-dLLM at af42f511f705a2db0d16aa63ebcfcbc26f29181d ("update news", Chengyue Wu, 2026-01-28), an
  upstream commit read from the fork Arya333/Fast-dLLM (whose history carries NVlabs' commits unchanged; the
  NVlabs mirror here is a June-2025 snapshot without v2/). generation_functions.py last changed upstream in
  65b6c8f ("update v2", 2025-10-07).
- modeling.py of the hub folder: not in NVlabs/Fast-dLLM. Read from PunchlineAAAA/Fastdllm-v2-embedding
  (Fast-dLLM-v2/modeling.py at b110b56b0029a45a41758d55762dbf8e25edb5f2), a verbatim copy: it is identical to
  the copy of the whole hub folder in Satgoy152/DualDiffusion (189fa7a, FastDLLM-inferencing/Fast_dLLM_v2_7B/)
  but for the `steps` argument that commit says it added to generate(); the generate() signature and body agree
  with further public copies (and the hub folder's v2/ callers).
- configuration.py, config.json, generation_config.json, tokenizer files of the hub folder: Satgoy152/DualDiffusion
  at 189fa7a74a83119647dad36b24363cc4e89370ab, FastDLLM-inferencing/Fast_dLLM_v2_7B/ (config.json with
  transformers_version 4.53.1 and the hub's auto_map; the folder's `latest` reads global_step2500).

The modeling file decorates a flex-attention helper with torch.compile (used in training only) and runs
inference through transformers' "sdpa" attention with its own boolean block mask: everything here runs on CPU
in float32 with no substitution.

What it writes under --out (default tests/fixtures/reference/fast_dllm_v2/): config.json (as the authors'
save_pretrained wrote it for the tiny model: the released config with hidden 64, 3 layers, 4 heads, 2 key/value
heads, intermediate 128), tensors.json (name, shape, dtype: tests/real_checkpoints.py's deterministic_tensor
rebuilds the weights, times GAINS), tokenizer_config.json (the hub's, with its chat template added under
"chat_template" from chat_template.jinja), figures.json (logits of fixed canvases; the ids generate() and
batch_sample() return, with every forward's input; see "notes" there and the docstrings of replay()).
"""

from __future__ import annotations

import argparse
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

MIRROR = "/work/.mirror"
HUB_DIR = "FastDLLM-inferencing/Fast_dLLM_v2_7B"
# name in the temporary folder -> (mirror folder, GitHub repository, commit, path, what it is)
SOURCES = {
    "modeling.py": ("PunchlineAAAA+Fastdllm-v2-embedding", "PunchlineAAAA/Fastdllm-v2-embedding",
                    "b110b56b0029a45a41758d55762dbf8e25edb5f2", "Fast-dLLM-v2/modeling.py",
                    "hub folder Efficient-Large-Model/Fast_dLLM_v2_7B: modeling.py (model, eval mask, generate())"),
    "configuration.py": ("Satgoy152+DualDiffusion", "Satgoy152/DualDiffusion",
                         "189fa7a74a83119647dad36b24363cc4e89370ab", f"{HUB_DIR}/configuration.py",
                         "hub folder: configuration.py (Fast_dLLM_QwenConfig)"),
    "generation_functions.py": ("Arya333+Fast-dLLM", "NVlabs/Fast-dLLM (via the fork Arya333/Fast-dLLM)",
                                "af42f511f705a2db0d16aa63ebcfcbc26f29181d", "v2/generation_functions.py",
                                "v2/: batch_sample(), what v2/eval.py runs"),
}
# read and hashed for the record (settings, config, tokens), not run
RECORDED = {
    "config.json": ("Satgoy152+DualDiffusion", "Satgoy152/DualDiffusion", SOURCES["configuration.py"][2],
                    f"{HUB_DIR}/config.json"),
    "generation_config.json": ("Satgoy152+DualDiffusion", "Satgoy152/DualDiffusion", SOURCES["configuration.py"][2],
                               f"{HUB_DIR}/generation_config.json"),
    "tokenizer_config.json": ("Satgoy152+DualDiffusion", "Satgoy152/DualDiffusion", SOURCES["configuration.py"][2],
                              f"{HUB_DIR}/tokenizer_config.json"),
    "chat_template.jinja": ("Satgoy152+DualDiffusion", "Satgoy152/DualDiffusion", SOURCES["configuration.py"][2],
                            f"{HUB_DIR}/chat_template.jinja"),
    "special_tokens_map.json": ("Satgoy152+DualDiffusion", "Satgoy152/DualDiffusion", SOURCES["configuration.py"][2],
                                f"{HUB_DIR}/special_tokens_map.json"),
    "run_chatbot.py": ("Arya333+Fast-dLLM", "NVlabs/Fast-dLLM (via the fork Arya333/Fast-dLLM)",
                       SOURCES["generation_functions.py"][2], "v2/run_chatbot.py"),
    "eval.py": ("Arya333+Fast-dLLM", "NVlabs/Fast-dLLM (via the fork Arya333/Fast-dLLM)",
                SOURCES["generation_functions.py"][2], "v2/eval.py"),
    "requirements.txt": ("Arya333+Fast-dLLM", "NVlabs/Fast-dLLM (via the fork Arya333/Fast-dLLM)",
                         SOURCES["generation_functions.py"][2], "v2/requirements.txt"),
}
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2)
# query/key projections sharper (attention that depends on position), output head sharper (confidences above
# 0.9 at some positions, not all): see the printed threshold statistics
GAINS = {"q_proj.weight": 3.0, "k_proj.weight": 3.0, "lm_head.weight": 12.0}

MASK, STOP, PAD = 151665, 151645, 151643  # |<MASK>|, <|im_end|> (eos, generate()'s stop_token), <|endoftext|>
IM_START, NL, SYSTEM, USER, ASSISTANT = 151644, 198, 8948, 872, 77091
SYSTEM_TURN = [IM_START, SYSTEM, NL, 2610, 525, 264, 10950, 17847, 13, STOP, NL]  # "You are a helpful assistant."


def chat(content: list[int], system: bool) -> list[int]:
    """Token ids laid out as the chat template renders one user turn and the generation prompt (Qwen2.5-style
    ids for the role words; the content ids are arbitrary)."""
    return (SYSTEM_TURN if system else []) + [IM_START, USER, NL] + content + [STOP, NL, IM_START, ASSISTANT, NL]


def content(n: int, seed: int) -> list[int]:
    return [(1009 + 7919 * (k + seed)) % 150000 for k in range(n)]


# prompts of 13 (shorter than a block), 45 (45 % 32 = 13) and 64 (a multiple of 32) tokens; and one of exactly 32
PROMPTS = [chat(content(5, 0), False), chat(content(26, 1), True), chat(content(45, 2), True)]
EDGE_PROMPT = chat(content(13, 3), True)  # 32 tokens: generate() never prefills it (see the notes)
assert [len(p) for p in PROMPTS] == [13, 45, 64] and len(EDGE_PROMPT) == 32
MAX_NEW = 64
# What `tie-lite generate "What is 2+3?" --model FOLDER` sends to the tiny checkpoint tests/real_checkpoints.py builds
# (its small word vocabulary under Qwen2.5's chat template, default system turn; 20 tokens): the "cli_recipe" run
# decodes it at the model card's settings (tie-lite's recipe), so a test runs the CLI itself
CLI_PROMPT = [151644, 3, 6, 7, 8, 9, 2, 10, 151645, 151644, 1, 0, 17, 26, 19, 27, 13, 151645, 151644, 2]
STOP_PROBE = 95646  # the tiny model's most frequent output token (checked): the *_stop runs use it as stop_token
# fixed canvases for the logits figures: a prompt then masks over three blocks of 32 (the last partial), and the
# same prompt with some tokens committed
CANVASES = [PROMPTS[1] + [MASK] * 35, PROMPTS[1] + [17, MASK, 900, MASK, MASK, 13, MASK, STOP] + [MASK] * 27]
POSITIONS = [[0, 31, 32, 44, 45, 46, 63, 64, 79], [12, 31, 44, 45, 46, 52, 53, 63, 64, 79]]
FIXED_IDS = [0, 13, 17, 900, PAD, STOP, MASK, 152063]

# the settings runs use; each is checked against the signature (every argument recorded)
GENERATE_DEFAULTS = dict(mask_id=MASK, threshold=1, small_block_size=8, block_size=32, stop_token=STOP,
                         stopping_criteria=None, top_p=0.95, temperature=0, use_block_cache=False)
# v2/run_chatbot.py (and the hub README's quick start): block_size 32, small_block_size 8, threshold 0.9
GENERATE_CHATBOT = dict(GENERATE_DEFAULTS, threshold=0.9)
GENERATE_BLOCK_CACHE = dict(GENERATE_CHATBOT, use_block_cache=True)
GENERATE_BLOCK16 = dict(GENERATE_CHATBOT, block_size=16, small_block_size=4)
# v2/eval.py's defaults for batch_sample: bd_size 32, small_block_size 8, threshold 0.9, no block cache
BATCH_DEFAULTS = dict(mask_id=MASK, threshold=0.95, stop_token=STOP, use_block_cache=False, top_p=0.95,
                      temperature=0.0)
BATCH_EVAL = dict(BATCH_DEFAULTS, block_size=32, small_block_size=8, threshold=0.9)


def load_sources(work: Path) -> tuple[dict, dict]:
    files, texts = {}, {}
    for name, (mirror, repo, commit, path, *what) in {**SOURCES, **RECORDED}.items():
        clone = f"{MIRROR}/{mirror}/repo"
        full = git(clone, "rev-parse", commit).strip()
        texts[name] = show(clone, full, path)
        files[name] = {"repo": f"https://github.com/{repo.split(' ')[0]}", "commit": full, "path": path,
                       "sha256": sha256(texts[name]), "ran": name in SOURCES}
        if " (via " in repo:
            files[name]["read_from"] = f"https://github.com/{mirror.replace('+', '/')}"
        if what:
            files[name]["what"] = what[0]
    return files, texts


def build(work: Path, texts: dict, config: dict):
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = work / "build"
    folder.mkdir()
    for name in ("modeling.py", "configuration.py"):
        (folder / name).write_text(texts[name])
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    cfg = AutoConfig.from_pretrained(str(folder), trust_remote_code=True)
    model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=True, torch_dtype=torch.float32).eval()
    fill_deterministic(model, gains=GAINS)
    model.config._name_or_path = "Efficient-Large-Model/Fast_dLLM_v2_7B"
    ckpt = work / "tiny-fast-dllm-v2"
    model.save_pretrained(str(ckpt))
    for name in ("modeling.py", "configuration.py"):
        shutil.copy(folder / name, ckpt / name)
    loaded = AutoModelForCausalLM.from_pretrained(str(ckpt), trust_remote_code=True, torch_dtype=torch.float32).eval()
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys(), ours.keys() ^ theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    return loaded, (ckpt / "config.json").read_text(), tensor_table(ckpt)


def canvas_figures(model) -> list[dict]:
    """Raw logits of a forward with no cache (the model's block mask, blocks of 32 from position 0), and a check
    that generate()'s way (prefill the whole blocks before the window with update_past_key_values=True, then the
    window against that cache) gives the same logits."""
    rows = []
    with torch.no_grad():
        for k, (ids, positions) in enumerate(zip(CANVASES, POSITIONS)):
            x = torch.tensor([ids])
            full = model(x).logits[0]
            full16 = model(x, block_size=16).logits[0]
            worst = 0.0
            for start in (32, 64):  # the window [start, start + 32) (the last one partial) against a cache
                pre = model(input_ids=x[:, :start], use_cache=True, update_past_key_values=True, block_size=32)
                win = model(input_ids=x[:, start:start + 32], use_cache=True, past_key_values=pre.past_key_values,
                            update_past_key_values=False).logits[0]
                worst = max(worst, float((win - full[start:start + 32]).abs().max()))
            assert worst < 1e-4, worst
            rows.append({"canvas": k, "ids": ids, "positions": top_figures(full, positions, FIXED_IDS),
                         "block_size_16": {"positions": top_figures(full16, positions, FIXED_IDS)},
                         "cached_window_max_abs_diff": worst})
    return rows


class ForwardLog:
    """Wraps the model's forward (generate() and batch_sample() call self.forward): notes each call's input ids,
    the position of its first id (the cache length, plus replace_position for a sub-block against the block
    cache) and whether it writes the cache, then calls it unchanged."""

    def __init__(self, model):
        self.model, self.calls = model, []
        self.original = model.forward

    def __enter__(self):
        def forward(*args, **kw):
            ids = kw["input_ids"]
            past = kw.get("past_key_values")
            start = past.get_seq_length() if past is not None else 0
            if kw.get("block_past_key_values") is not None:
                kind = "sub-block vs block cache"
                start += kw.get("replace_position") or 0
            elif kw.get("update_past_key_values"):
                kind = "write cache"
            else:
                kind = "step"
            self.calls.append({"start": start, "kind": kind, "ids": ids[0].tolist()})
            return self.original(*args, **kw)

        self.model.forward = forward
        return self

    def __exit__(self, *exc):
        del self.model.forward


def threshold_stats(calls: list[dict]) -> dict:
    """From consecutive 'step' inputs of one window: masks each step committed (>1: the threshold fired)."""
    commits = []
    for a, b in zip(calls, calls[1:]):
        if a["kind"] == "write cache" or a["start"] != b["start"]:
            continue
        n = min(len(a["ids"]), len(b["ids"]))
        commits.append(sum(1 for x, y in zip(a["ids"][:n], b["ids"][:n]) if x == MASK and y != MASK))
    return {"steps_with_successor": len(commits), "steps_committing_more_than_one": sum(c > 1 for c in commits),
            "max_committed_in_one_step": max(commits, default=0)}


def run_generate(model, prompt: list[int], settings: dict, max_new_tokens: int = MAX_NEW) -> dict:
    sig = inspect.signature(model.generate)
    assert set(settings) == set(sig.parameters) - {"input_ids", "max_new_tokens", "kwargs"}, set(sig.parameters)
    with ForwardLog(model) as log, torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, **settings)
    return {"function": "modeling.Fast_dLLM_QwenForCausalLM.generate", "prompt": prompt,
            "max_new_tokens": max_new_tokens, **settings, "output": out[0, len(prompt):].tolist(),
            "returned_length": out.shape[1], "forwards": len(log.calls), "threshold_stats": threshold_stats(log.calls),
            "forward_inputs": log.calls}


def run_batch_sample(model, gf, prompt: list[int], settings: dict, max_new_tokens: int = MAX_NEW) -> dict:
    sig = inspect.signature(gf.Fast_dLLM_QwenForCausalLM.batch_sample)
    assert set(settings) == set(sig.parameters) - {"self", "input_ids", "tokenizer", "max_new_tokens", "min_len",
                                                   "seq_len"}, set(sig.parameters)
    sample = types.MethodType(gf.Fast_dLLM_QwenForCausalLM.batch_sample, model)
    tokenizer = types.SimpleNamespace(pad_token_id=PAD)  # the hub tokenizer's pad token, <|endoftext|>
    run = {"function": "generation_functions.Fast_dLLM_QwenForCausalLM.batch_sample", "prompt": prompt,
           "max_new_tokens": max_new_tokens, "min_len": len(prompt), "seq_len": [len(prompt)],
           "tokenizer.pad_token_id": PAD, **settings}
    with ForwardLog(model) as log, torch.no_grad():
        try:
            got = sample(torch.tensor([prompt]), tokenizer=tokenizer, max_new_tokens=max_new_tokens,
                         min_len=len(prompt), seq_len=torch.tensor([len(prompt)]), **settings)
        except TypeError as e:  # see the notes: a sample finishing while past_key_values is still None
            return {**run, "error": f"TypeError: {e}", "forwards": len(log.calls),
                    "threshold_stats": threshold_stats(log.calls), "forward_inputs": log.calls}
    out = got[0]
    return {**run, "output": out[len(prompt):].tolist(), "returned_length": out.shape[0], "forwards": len(log.calls),
            "threshold_stats": threshold_stats(log.calls), "forward_inputs": log.calls}


def replay(model, run: dict) -> dict:
    """The decoding loop as this script reads it, on the no-cache forward (the whole canvas up to the end of the
    current block, the model's block mask with blocks of block_size from position 0): a check of the notes, not
    the authors' code. generate() and batch_sample() (one prompt) decode the same way and differ in how they stop.

    P = len(prompt), B = block_size, S = small_block_size. If P > B the first P // B * B tokens are prefilled
    (one forward, written to the cache), and if P % B == 0 the argmax of its last output is appended (token
    shift: output i predicts position i + 1). Then max_new_tokens // B blocks: the canvas is padded with masks to
    the next multiple of B (a block that holds the prompt's last P % B tokens, or the token appended at the end of
    the previous block, is partial); the window is that block, x[end - B:end]. Sub-blocks of S positions are
    decoded in order; while a sub-block holds masks, one forward of the window: prediction for window position j
    = output j - 1 (j = 0 takes its own output), p = softmax, x0 = argmax; among the sub-block's masks commit those
    with p > threshold, and always the most probable one (the first on a tie). When the block has no mask left,
    one more forward of the window writes it to the cache, and the argmax of its last output is appended: the
    first token of the next block. Stop (generate()): before every forward, if stop_token stands at or after the
    block's first new position with no mask before it, the block ends (no cache write); before each block, if
    stop_token stands anywhere in the output, decoding ends; the output is cut after the first stop_token.
    Stop (batch_sample()): a sample finishes when a step commits stop_token; its block is still decoded to the
    end (no cache write), positions after the first stop_token are set to the pad id, and nothing is cut."""
    prompt, B, S = run["prompt"], run["block_size"], run["small_block_size"]
    thr, stop = run["threshold"], run["stop_token"]
    batch = run["function"].endswith("batch_sample")
    x = list(prompt)
    P = len(x)
    forwards = 0

    def forward(end: int) -> torch.Tensor:
        nonlocal forwards
        forwards += 1
        with torch.no_grad():
            return model(torch.tensor([x[:end]]), block_size=B).logits[0]

    def stop_reached(first: int) -> bool:
        if stop not in x[first:]:
            return False
        return MASK not in x[first:first + x[first:].index(stop)]

    if P > B:
        out = forward(P // B * B)
        if P % B == 0:
            x.append(int(out[-1].argmax()))
    finished = False
    for _ in range(run["max_new_tokens"] // B):
        if not batch and stop in x[P:]:
            break
        first = len(x)
        x += [MASK] * (B - first % B)
        end = len(x)
        ws = end - B
        while True:
            if not batch and stop_reached(first):
                break
            if MASK not in x[ws:end]:
                if batch and finished:
                    break
                x.append(int(forward(end)[end - 1].argmax()))
                break
            for s in range(B // S):
                a, e = ws + s * S, ws + (s + 1) * S
                while MASK in x[a:e] and not (not batch and stop_reached(first)):
                    out = forward(end)[ws:end]
                    shifted = torch.cat([out[:1], out[:-1]])[a - ws:e - ws]
                    p = torch.softmax(shifted, dim=-1)
                    x0 = p.argmax(-1)
                    conf = p.gather(-1, x0[:, None])[:, 0]
                    masked = torch.tensor([t == MASK for t in x[a:e]])
                    conf = torch.where(masked, conf, torch.tensor(-torch.inf))
                    take = conf > thr
                    take[conf.argmax()] = True
                    take &= masked
                    for i in take.nonzero().flatten().tolist():
                        x[a + i] = int(x0[i])
                    if batch and bool(((x0 == stop) & take).any()):
                        finished = True
        if batch and finished:
            if stop in x[P:]:
                cut = P + x[P:].index(stop) + 1
                x[cut:] = [PAD] * (len(x) - cut)
            break
    out = x[P:]
    if not batch and stop in out:
        out = out[:out.index(stop) + 1]
    return {"output": out, "forwards": forwards}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "reference" / "fast_dllm_v2"))
    args = ap.parse_args()
    import transformers

    torch.manual_seed(0)
    torch.set_num_threads(1)  # one summation order on every machine
    work = Path(tempfile.mkdtemp(prefix="tie-lite-fast-dllm-v2-ref-"))
    try:
        files, texts = load_sources(work)
        released = json.loads(texts["config.json"])
        config = dict(released, **TINY)
        config["layer_types"] = released["layer_types"][:TINY["num_hidden_layers"]]
        model, saved, table = build(work, texts, config)
        sys.path.insert(0, str(work / "gf"))
        (work / "gf").mkdir()
        (work / "gf" / "generation_functions.py").write_text(texts["generation_functions.py"])
        import generation_functions as gf  # noqa: E402  (the authors' v2/ file, from the temporary folder)

        # the defaults written above are the signatures' own, and the v2/ callers pass the settings said
        defaults = {k: v.default for k, v in inspect.signature(model.generate).parameters.items()
                    if v.default is not inspect.Parameter.empty}
        assert defaults == GENERATE_DEFAULTS, defaults
        defaults = {k: v.default for k, v in inspect.signature(gf.Fast_dLLM_QwenForCausalLM.batch_sample).parameters
                    .items() if v.default is not inspect.Parameter.empty}
        assert defaults == BATCH_DEFAULTS, defaults
        for name, phrases in (("run_chatbot.py", ("block_size=32,", "small_block_size=8,", "threshold=0.9,")),
                              ("eval.py", ("small_block_size=8,", "bd_size=32,", "threshold=0.9,",
                                           "use_block_cache=False,"))):
            assert all(ph in texts[name] for ph in phrases), name
        figures_canvases = canvas_figures(model)
        gen_runs = {
            "generate_defaults": [run_generate(model, p, GENERATE_DEFAULTS) for p in PROMPTS],
            "generate_chatbot": [run_generate(model, p, GENERATE_CHATBOT) for p in PROMPTS],
            "generate_block_cache": [run_generate(model, p, GENERATE_BLOCK_CACHE) for p in PROMPTS],
            "generate_block16": [run_generate(model, p, GENERATE_BLOCK16) for p in PROMPTS],
            "batch_sample_eval": [run_batch_sample(model, gf, p, BATCH_EVAL) for p in PROMPTS],
        }
        # a stop token the tiny model does produce (its most frequent one here), to exercise both stop rules
        produced = [t for r in gen_runs["generate_chatbot"] for t in r["output"]]
        assert max(set(produced), key=produced.count) == STOP_PROBE
        stop = STOP_PROBE
        gen_runs["generate_chatbot_stop"] = [run_generate(model, p, dict(GENERATE_CHATBOT, stop_token=stop))
                                             for p in PROMPTS]
        gen_runs["batch_sample_eval_stop"] = [run_batch_sample(model, gf, p, dict(BATCH_EVAL, stop_token=stop))
                                              for p in PROMPTS]
        edge = {"generate_defaults": run_generate(model, EDGE_PROMPT, GENERATE_DEFAULTS),
                "generate_chatbot": run_generate(model, EDGE_PROMPT, GENERATE_CHATBOT)}

        print("replay (no-cache forward, the loop of replay()) against the authors' functions:")
        for key, runs in gen_runs.items():
            for r in runs:
                if "error" in r:
                    print("  %-24s P=%d raised %s" % (key, len(r["prompt"]), r["error"]))
                    continue
                if r.get("use_block_cache"):
                    r["replay"] = ("not replayed: the block cache reuses stale keys/values of the block's other "
                                   "sub-blocks")
                    continue
                mine = replay(model, r)
                same = mine["output"] == r["output"] and mine["forwards"] == r["forwards"]
                r["replay_matches"] = same
                print("  %-24s P=%d %s (forwards %d / authors %d)" % (key, len(r["prompt"]), "same" if same else
                      "DIFFERENT", mine["forwards"], r["forwards"]))
                assert same, (key, mine, r["output"])
        for key, r in edge.items():
            mine = replay(model, r)
            r["replay_matches"] = mine["output"] == r["output"]
            r["replay_output"] = mine["output"]
            print("  edge %-19s P=32 %s" % (key, "same" if r["replay_matches"] else "DIFFERENT (expected: see notes)"))

        tok = json.loads(texts["tokenizer_config.json"])
        tok["chat_template"] = texts["chat_template.jinja"]
        figures = {
            "about": "Figures of the Fast-dLLM v2 authors' code (the hub folder's modeling.py and NVlabs/Fast-dLLM "
                     "v2/generation_functions.py; transformers %s, torch %s, CPU, float32) on a tiny checkpoint "
                     "with the released Fast_dLLM_v2_7B config and deterministic weights (tests/real_checkpoints.py, "
                     "times `gains`)." % (transformers.__version__, torch.__version__.split("+")[0]),
            "command": "/tmp/tie-lite-fastdllm2-venv/bin/python scripts/reference/fast_dllm_v2.py",
            "source": files,
            "released_config": released,
            "released_generation_config": json.loads(texts["generation_config.json"]),
            "config_source": "Efficient-Large-Model/Fast_dLLM_v2_7B config.json as the copy of the hub folder in "
                             "Satgoy152/DualDiffusion gives it (released_config), with tiny sizes %s and layer_types "
                             "cut to the layers" % TINY,
            "gains": GAINS,
            "tokens": {"mask_id": MASK, "mask_token": "|<MASK>|", "stop_token": STOP, "stop_text": "<|im_end|>",
                       "pad_token_id": PAD, "pad_text": "<|endoftext|>",
                       "generation_config_eos_token_id": json.loads(texts["generation_config.json"])["eos_token_id"],
                       "config_eos_token_id": released["eos_token_id"], "config_pad_token_id": released["pad_token_id"],
                       "config_bos_token_id": released["bos_token_id"]},
            "fixed_ids": FIXED_IDS,
            "logits_convention": "raw model output in float32, output i at position i, with no cache: the model's "
                                 "eval mask lets position q see position k iff q // block_size >= k // block_size "
                                 "(blocks numbered from position 0; block_size is forward()'s argument, default 32, "
                                 "`block_size_16` passes 16). Token shift: output i predicts the token at position "
                                 "i + 1 (generate() takes output j - 1 for window position j).",
            "canvases": figures_canvases,
            **gen_runs,
            "stop_probe_token": stop,
            "edge_prompt_32": edge,
            "cli_recipe": run_generate(model, CLI_PROMPT, GENERATE_CHATBOT),
            "notes": NOTES,
        }
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(saved)
        (out / "tensors.json").write_text(json.dumps(table, indent=1) + "\n")
        (out / "tokenizer_config.json").write_text(json.dumps(tok, indent=2, ensure_ascii=False) + "\n")
        (out / "figures.json").write_text(compact_json(figures) + "\n")
        print(f"wrote {out}")
        for key, runs in list(gen_runs.items()) + [("edge", list(edge.values()))]:
            for r in runs:
                o = r.get("output", [])
                print("%-24s P=%d B=%d S=%d thr=%s stop=%d forwards=%d len=%d distinct=%d %s %s" % (
                    key, len(r["prompt"]), r["block_size"], r["small_block_size"], r["threshold"], r["stop_token"],
                    r["forwards"], len(o), len(set(o)), r["threshold_stats"], o[:12]))
    finally:
        shutil.rmtree(work, ignore_errors=True)


NOTES = [
    "Layout (generate() and batch_sample()): blocks are numbered from position 0 of the sequence. With P prompt "
    "tokens and B = block_size: if P > B, one prefill forward of x[:P // B * B] writes those positions to the "
    "KV cache (update_past_key_values=True); if moreover P % B == 0, the argmax of its last output is appended "
    "(the first generated token, decoded autoregressively). Then max_new_tokens // B blocks: masks are appended "
    "up to the next multiple of B, and every forward of the block sees the window x[end - B:end] (which may "
    "start with prompt tokens, or with the token appended after the previous block) against the cache of "
    "everything before it, positions continuing from the cache length. Inside the window attention is "
    "bidirectional (the eval mask q // 32 >= k // 32 is all true there); the cache is attended in full.",
    "Sub-blocks: the window is cut into B // small_block_size sub-blocks decoded left to right; while the current "
    "sub-block holds a mask, one forward of the whole window (use_block_cache False), logits token-shifted "
    "(torch.cat([logits[:, :1], logits[:, :-1]], 1): window position j takes output j - 1, position 0 its own "
    "output), softmax (temperature 0: p = softmax(logits), x0 = argmax; top_p unused), and the sub-block's masks "
    "with p > threshold (strict) are committed, plus always the single most probable mask of the sub-block "
    "(argmax, the first on a tie). threshold=1 (generate()'s default) thus commits one token per forward.",
    "KV cache: once the window has no mask, one more forward of the window with update_past_key_values=True "
    "writes its keys/values (computed from the final tokens) to the cache, and the argmax of its last output is "
    "appended as the first token of the next block. So the cache always holds exactly the completed blocks, "
    "as a no-cache forward under the block mask would compute them: replay() re-derives every output of "
    "the non-block-cache runs with no cache at all. max_new_tokens // B blocks are decoded (the first may be "
    "partial), and the output ends with that appended token when no stop cut it: its length is not "
    "max_new_tokens in general.",
    "use_block_cache=True (generate_block_cache): the window forward also returns the window's own keys/values "
    "(block cache); a later sub-block whose first position is no longer a mask is run alone (input = the "
    "sub-block, positions cache length + its offset, no mask: it attends to the whole cache and the whole block "
    "cache), its keys/values replacing its slice of the block cache; the other sub-blocks' keys/values stay as "
    "computed at the last full-window forward. Its logits are shifted within the sub-block. A sub-block whose "
    "first position is still a mask gets a full-window forward (the shift needs the previous position's output).",
    "Stop: generate() ends a block as soon as stop_token stands at or after the block's first new position with "
    "no mask before it (before any forward, leaving masks after it, and without writing the block to the "
    "cache), stops before a new block if stop_token is in the output, and cuts the returned ids after the first "
    "stop_token. batch_sample() marks a sample finished when a step commits stop_token, still decodes the rest "
    "of that block, sets the positions after the first stop_token to tokenizer.pad_token_id (151643) and "
    "returns the whole canvas uncut (v2/eval.py then decodes it with skip_special_tokens). The *_stop runs use a "
    "token the tiny model produces (stop_probe_token) as stop_token to exercise both rules; 151645 "
    "(<|im_end|>, the config's eos) is the default and the chat template's turn end; generation_config.json "
    "lists [151645, 151643].",
    "Edge (edge_prompt_32): with P == B exactly, generate() does not prefill (its test is P > B) and starts the "
    "first block with B fresh masks at positions P..P+B-1 as its whole window, past_key_values None: the prompt "
    "is never seen and the masks get RoPE positions 0..B-1. replay() (which keeps the prompt in the cache) "
    "gives another output there; recorded as the authors' code does it. batch_sample() shares the test "
    "(min_len > block_size).",
    "forward(block_size=...) builds the eval mask with the block_size it is given; the prefill and the cache "
    "writes pass B, but generate()'s and batch_sample()'s step forwards pass none (default 32). With B dividing "
    "32 the window lies inside one block of 32 and is bidirectional either way (generate_block16: B = 16, "
    "small_block_size 4); with B = 64 the step forwards see the window block-causal in halves of 32 (checked "
    "once by hand on the tiny model: such a window's logits then differ from a 64-block mask's; no run of it "
    "here). The token shift at window position 0 only matters in the P == B edge, where that position is a "
    "mask.",
    "batch_sample() with P <= B (no prefill, past_key_values still None) raises TypeError (len(None)) when the "
    "sample finishes in that first block: batch_sample_eval_stop's 13-token run records the error. With "
    "max_new_tokens < B neither function decodes a block (max_new_tokens // B == 0).",
    "generation_config.json (Qwen2.5's: do_sample, temperature 0.7, top_p 0.8, top_k 20, repetition_penalty "
    "1.05) plays no part: the model class overrides generate(), whose own defaults (temperature 0) apply.",
    "Defaults: generate(input_ids, max_new_tokens, mask_id=151665, threshold=1, small_block_size=8, "
    "block_size=32, stop_token=151645, stopping_criteria=None, top_p=0.95, temperature=0, use_block_cache=False, "
    "**kwargs) (tokenizer= is accepted and ignored through **kwargs). v2/run_chatbot.py calls it with block_size "
    "32, small_block_size 8, threshold 0.9, max_new_tokens 2048 (generate_chatbot); v2/eval.py runs "
    "batch_sample with bd_size 32, small_block_size 8, threshold 0.9, use_block_cache False, max_new_tokens 2048 "
    "(batch_sample_eval; batch_sample's own threshold default is 0.95); the hub README's quick start calls "
    "generate() with max_new_tokens 512, small_block_size 8, threshold 0.9 (block_size default 32). "
    "max_new_tokens here is 64.",
]


if __name__ == "__main__":
    main()
