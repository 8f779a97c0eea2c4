"""Reference figures for Dream, computed by the model authors' own code (never imported by tie-lite).

Run it in the scratch virtualenv with the transformers the authors used (4.46):

    bash scripts/reference/make_venv.sh            # /tmp/tie-lite-reference-venv (torch 2.13 CPU, transformers 4.46.3)
    /tmp/tie-lite-reference-venv/bin/python scripts/reference/dream.py

The authors' files are read with `git show COMMIT:PATH` from a local clone (no work tree needed) into a
temporary folder; nothing of them is copied into this repository. Where the files come from:

- Default: a copy of the Dream-org/Dream-v0-Instruct-7B hub folder (config.json, generation_config.json,
  configuration_dream.py, modeling_dream.py, generation_utils.py, tokenization_dream.py, tokenizer files;
  LFS pointers for the weights) that monash-yann/dllm-research carries under models/Dream-7B-Instruct/:
      git clone https://github.com/monash-yann/dllm-research    (commit ecd7cd2f8cbe67f49c34763ba56a451078be5635)
  Its config.json names Dream-org/Dream-v0-Instruct-7B (transformers 4.46.2), its code files carry the Dream
  team's headers, and they differ from Fast-dLLM's copy by exactly Fast-dLLM's additions. The hub repo
  itself works the same way:
      GIT_LFS_SKIP_SMUDGE=1 git clone https://huggingface.co/Dream-org/Dream-v0-Instruct-7B
      ... scripts/reference/dream.py --repo Dream-v0-Instruct-7B --repo-url https://huggingface.co/Dream-org/Dream-v0-Instruct-7B --path .
- DreamLM/Dream itself (git clone https://github.com/DreamLM/Dream, commit fac0a7f2664b4adf0925fe682b7866923fa2d62b)
  ships no model files. NVlabs/Fast-dLLM (git clone https://github.com/NVlabs/Fast-dLLM, commit
  24cc59e75f20a6384bae8c905965bb090b96388e) carries a *modified* copy under dream/model/ (a KV cache in
  modeling_dream.py; a `confidence_threshold` alg, a while loop and timing prints in generation_utils.py),
  so it is only compared against (`--compare-repo`: figures.json records which of its files differ).

What it writes under --out (default tests/fixtures/reference/dream/):
- config.json   exactly as the authors' save_pretrained wrote it for the tiny model (the real Dream config,
                real vocabulary and special ids, with tiny dimensions: hidden 64, 4 heads, 2 kv heads,
                2 layers, intermediate 128);
- tensors.json  name, shape and dtype of every tensor of the saved checkpoint (tests/real_checkpoints.py
                rebuilds the identical weights from it with `deterministic_tensor`);
- tokenizer_config.json  the hub's, verbatim (special tokens at their ids, chat template, auto_map);
- figures.json  raw logits at fixed positions of fixed canvases, and the token ids diffusion_generate
                returns at temperature 0 with top_k=None, top_p=None for the algs maskgit_plus, topk_margin
                and entropy, the defaults diffusion_generate really uses, and DreamTokenizer's ids for a few
                texts and chat prompts (over a synthetic vocabulary, see write_tokenizer_files);
                "generate_recipe" holds diffusion_generate called as the Dream README calls it (alg entropy,
                alg_temp 0, steps = max_new_tokens = 64, eps 1e-3, all-ones attention_mask) but greedy (temperature 0,
                top_p and top_k None): what `tie-lite generate --model FOLDER --gen-length 64` runs with no other
                decode flag, for PROMPT and the 9-token RECIPE_PROMPTS[1].

This script must not import tie_lite; it imports tests/real_checkpoints.py for the shared weight filler.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from common import git, sha256, show, top_figures  # noqa: E402  (scripts/reference/, beside this file)
from real_checkpoints import fill_deterministic, tensor_table, write_tokenizer_files

HUB_REPO = "/work/.mirror/monash-yann+dllm-research/repo"
HUB_PATH = "models/Dream-7B-Instruct"
HUB_URL = "https://github.com/monash-yann/dllm-research"
COMPARE_REPO = "/work/.mirror/NVlabs+Fast-dLLM/repo"
COMPARE_URL = "https://github.com/NVlabs/Fast-dLLM"
COMPARE_PATH = "dream/model"
CODE_FILES = ("configuration_dream.py", "modeling_dream.py", "generation_utils.py", "tokenization_dream.py")

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)

MASK, EOS, IM_START, IM_END, NL = 151666, 151643, 151644, 151645, 198
# "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
# in Qwen2.5 ids; only their being fixed matters here.
PROMPT = [IM_START, 8948, NL, 2610, 525, 264, 10950, 17847, 13, IM_END, NL, IM_START, 872, NL, 13048, IM_END, NL,
          IM_START, 77091, NL]
CANVASES = [
    # prompt then masks
    PROMPT + [MASK] * 12,
    # prompt, some committed tokens among masks, end-of-text padding at the end
    PROMPT + [40, MASK, 1079, MASK, MASK, 13, MASK, MASK, IM_END, EOS, EOS, EOS],
    # a short prompt and nothing but masks
    [IM_START, 872, NL, 9707, IM_END, NL] + [MASK] * 10,
]
POSITIONS = [[0, 19, 20, 25, 31], [9, 20, 21, 24, 30], [0, 5, 6, 15]]
FIXED_IDS = [0, 13, NL, 1079, EOS, IM_START, IM_END, 151665, MASK, 152063]
GENERATE = [(32, 32), (32, 16), (24, 8)]  # (max_new_tokens, steps)
ALGS = ("maskgit_plus", "topk_margin", "entropy")
# The Dream README's call (max_new_tokens=512, steps=512, temperature=0.2, top_p=0.95, alg="entropy", alg_temp=0.)
# at tie-lite's greedy recipe: temperature 0, no top_p, top_k None; 64 new tokens as tie-lite's tests pass
# --gen-length (512 costs minutes on CPU with the 152k vocabulary).
RECIPE = dict(max_new_tokens=64, steps=64, temperature=0.0, top_p=None, top_k=None, alg="entropy", alg_temp=0.0)
# PROMPT, and user "Hello" then the assistant tag (CANVASES[2]'s short prompt with the generation prompt)
RECIPE_PROMPTS = [PROMPT, [IM_START, 872, NL, 9707, IM_END, NL, IM_START, 77091, NL]]


# Tokenizer: the hub's tokenizer_config.json (kept as a fixture) over a small synthetic vocab.json + merges.txt
# (the 256 byte symbols, a few merges, fillers up to the first special id), so the tests can check a native
# tokenizer against DreamTokenizer's ids without shipping Qwen's 151643-entry vocabulary.
TEXTS = ["the user", "Hi the user's 12 + 34 = 46", "  two  spaces\n\n\nand lines\r\n", "Ünïcödé ß 🙂",
         "a<|mask|>b<|endoftext|>c", "<|im_start|>user\nhi<|im_end|>\n", "I'M HERE's"]
CHATS = [[{"role": "user", "content": "What is 12+34? Answer the user."}],
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
          {"role": "assistant", "content": "hello"}, {"role": "user", "content": "the  end"}]]


def tokenizer_figures(tokenizer) -> dict:
    texts = [{"text": t, "ids": tokenizer.encode(t, add_special_tokens=False)} for t in TEXTS]
    for row in texts:
        row["decoded"] = tokenizer.decode(row["ids"])
    chats = []
    for messages in CHATS:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        chats.append({"messages": messages, "text": text, "ids": tokenizer.encode(text, add_special_tokens=False)})
    special = {name: getattr(tokenizer, f"{name}_token_id") for name in ("bos", "eos", "pad", "mask", "unk")}
    return {"class": type(tokenizer).__name__, "len": len(tokenizer), "special_ids": special,
            "texts": texts, "chats": chats}


def _code_lines(text: str) -> list[str]:
    """The lines that are code (comments, license headers and blank lines dropped)."""
    return [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", default=HUB_REPO, help="git clone holding the authors' Dream hub folder")
    ap.add_argument("--repo-url", default=HUB_URL, help="where --repo was cloned from (recorded)")
    ap.add_argument("--path", default=HUB_PATH, help="the folder inside --repo")
    ap.add_argument("--commit", default="HEAD")
    ap.add_argument("--compare-repo", default=COMPARE_REPO, help="another copy to diff against ('' to skip)")
    ap.add_argument("--compare-path", default=COMPARE_PATH)
    ap.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "reference" / "dream"))
    args = ap.parse_args()

    import transformers
    from transformers import AutoConfig, AutoModel

    commit = git(args.repo, "rev-parse", args.commit).strip()
    last_change = git(args.repo, "log", "-1", "--format=%H", commit, "--", args.path).strip()
    sources = {name: show(args.repo, commit, f"{args.path}/{name}") for name in CODE_FILES}
    hub_config = json.loads(show(args.repo, commit, f"{args.path}/config.json"))
    hub_generation = json.loads(show(args.repo, commit, f"{args.path}/generation_config.json"))
    hub_tokenizer_config_text = show(args.repo, commit, f"{args.path}/tokenizer_config.json")
    hub_files = sorted(Path(p).name for p in git(args.repo, "ls-tree", "--name-only", commit, f"{args.path}/").split())

    compared = None
    if args.compare_repo and Path(args.compare_repo).exists():
        other = git(args.compare_repo, "rev-parse", "HEAD").strip()
        compared = {"repo": COMPARE_URL if args.compare_repo == COMPARE_REPO else args.compare_repo, "commit": other, "path": args.compare_path, "same_as_used": {}}
        for name in CODE_FILES:
            theirs = show(args.compare_repo, other, f"{args.compare_path}/{name}")
            compared["same_as_used"][name] = _code_lines(theirs) == _code_lines(sources[name])

    work = Path(tempfile.mkdtemp(prefix="tie-lite-dream-ref-"))
    try:
        build = work / "build"
        build.mkdir()
        for name, text in sources.items():
            (build / name).write_text(text)
        config = dict(hub_config, **TINY)
        config.pop("_name_or_path", None)
        (build / "config.json").write_text(json.dumps(config, indent=2))
        (build / "generation_config.json").write_text(json.dumps(hub_generation, indent=2))

        torch.manual_seed(0)
        cfg = AutoConfig.from_pretrained(str(build), trust_remote_code=True)
        model = AutoModel.from_config(cfg, trust_remote_code=True, torch_dtype=torch.float32).eval()
        model.config._name_or_path = hub_config.get("_name_or_path", "")  # as the hub's config.json names it
        rotary = model.model.rotary_emb
        inv_before = rotary.inv_freq.clone()
        persistent = set(model.state_dict().keys())
        assert not any("inv_freq" in k for k in persistent), "inv_freq is persistent: the filler would overwrite it"
        fill_deterministic(model)
        assert torch.equal(rotary.inv_freq, inv_before), "fill_deterministic changed the rotary buffer"
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        expected = 1.0 / (cfg.rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        assert torch.equal(rotary.inv_freq, expected), "the authors' inv_freq is not the textbook RoPE frequency"

        ckpt = work / "tiny-dream"
        model.save_pretrained(str(ckpt))
        for name in (*CODE_FILES, "generation_config.json"):  # the hub folder carries them beside the weights
            if not (ckpt / name).exists():
                shutil.copy(build / name, ckpt / name)
        saved_config = (ckpt / "config.json").read_text()
        table = tensor_table(ckpt)

        loaded = AutoModel.from_pretrained(str(ckpt), trust_remote_code=True, torch_dtype=torch.float32).eval()
        for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
            assert torch.equal(a, b), name
        assert torch.equal(loaded.model.rotary_emb.inv_freq, expected)

        figures_canvases = []
        with torch.no_grad():
            for ids, positions in zip(CANVASES, POSITIONS):
                x = torch.tensor([ids])
                logits = loaded(x).logits[0]  # raw: output i is the prediction for position i + 1
                in_memory = model(x).logits[0]
                assert torch.equal(logits, in_memory)
                figures_canvases.append({"ids": ids, "positions": top_figures(logits, positions, FIXED_IDS)})

            # a left-padded batch, masked the way diffusion_generate masks it (4-D boolean query x key mask,
            # positions counted from the first real token)
            short = CANVASES[2]
            pad = len(CANVASES[0]) - len(short)
            batch = torch.tensor([CANVASES[0], [EOS] * pad + short])
            attn = torch.tensor([[1] * len(CANVASES[0]), [0] * pad + [1] * len(short)])
            tok_idx = attn.long().cumsum(-1) - 1
            tok_idx.masked_fill_(attn == 0, 1)
            mask4 = torch.logical_and(attn.bool()[:, None, None, :], attn.bool()[:, None, :, None])
            padded = loaded(batch, mask4, tok_idx).logits
            assert torch.allclose(padded[0], loaded(batch[:1]).logits[0], atol=1e-5)
            padded_rows = top_figures(padded[1], [pad + p for p in POSITIONS[2]], FIXED_IDS)
            for row in padded_rows:
                row["position_unpadded"] = row["position"] - pad

        from transformers import AutoTokenizer

        tok_dir = work / "tokenizer"
        write_tokenizer_files(tok_dir, json.loads(hub_tokenizer_config_text))
        shutil.copy(build / "tokenization_dream.py", tok_dir / "tokenization_dream.py")
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), trust_remote_code=True)
        assert type(tokenizer).__name__ == "DreamTokenizer", type(tokenizer)
        tokenizer_rows = tokenizer_figures(tokenizer)

        gen_module = sys.modules[type(loaded).__module__.replace("modeling_dream", "generation_utils")]
        from_model = gen_module.DreamGenerationConfig.from_model_config(loaded.config)
        class_defaults = gen_module.DreamGenerationConfig()
        keys = ("temperature", "top_k", "top_p", "steps", "eps", "alg", "alg_temp", "max_length", "max_new_tokens")
        defaults = {
            "used_by_diffusion_generate_without_generation_config": {k: getattr(from_model, k) for k in keys},
            "DreamGenerationConfig_class": {k: getattr(class_defaults, k) for k in keys},
            "generation_config_json": {k: hub_generation.get(k) for k in keys if k in hub_generation},
            "loaded_model_generation_config": {k: getattr(loaded.generation_config, k, None) for k in keys},
        }

        prompt = torch.tensor([PROMPT])
        runs = []
        with torch.no_grad():
            for alg in ALGS:
                for new, steps in GENERATE:
                    out = loaded.diffusion_generate(
                        prompt, max_new_tokens=new, steps=steps, temperature=0.0, top_k=None, top_p=None,
                        alg=alg, alg_temp=0.0, output_history=True, return_dict_in_generate=True)
                    seq = out.sequences[0]
                    history = [prompt[0].tolist() + [MASK] * new] + [h[0].tolist() for h in out.history]
                    per_step = [sum(a == MASK and b != MASK for a, b in zip(h0, h1))
                                for h0, h1 in zip(history, history[1:])]
                    hidden = loaded.diffusion_generate(  # the same call without top_k=None: the hidden default
                        prompt, max_new_tokens=new, steps=steps, temperature=0.0, alg=alg, alg_temp=0.0)
                    runs.append({
                        "alg": alg, "max_new_tokens": new, "steps": steps, "eps": 1e-3,
                        "prompt": PROMPT, "output": seq[len(PROMPT):].tolist(), "transfers_per_step": per_step,
                        "output_with_hidden_top_k": hidden[0][len(PROMPT):].tolist(),
                    })

        recipe_runs = []  # the README's call, greedy (RECIPE); diffusion_generate never stops early
        with torch.no_grad():
            for ids in RECIPE_PROMPTS:
                prompt = torch.tensor([ids])
                mask = torch.ones_like(prompt)
                new = RECIPE["max_new_tokens"]
                out = loaded.diffusion_generate(prompt, attention_mask=mask, output_history=True,
                                                return_dict_in_generate=True, **RECIPE)
                seq = out.sequences[0]
                history = [ids + [MASK] * new] + [h[0].tolist() for h in out.history]
                per_step = [sum(a == MASK and b != MASK for a, b in zip(h0, h1))
                            for h0, h1 in zip(history, history[1:])]
                assert seq[:len(ids)].tolist() == ids and MASK not in seq.tolist()
                hidden = loaded.diffusion_generate(  # the same call without top_k=None: the hidden default
                    prompt, attention_mask=mask, **{k: v for k, v in RECIPE.items() if k != "top_k"})
                recipe_runs.append({
                    "alg": RECIPE["alg"], "max_new_tokens": new, "steps": RECIPE["steps"], "eps": 1e-3,
                    "temperature": RECIPE["temperature"], "top_k": RECIPE["top_k"], "top_p": RECIPE["top_p"],
                    "alg_temp": RECIPE["alg_temp"], "attention_mask": "all ones",
                    "prompt": ids, "output": seq[len(ids):].tolist(), "forwards": len(out.history),
                    "transfers_per_step": per_step,
                    "output_with_hidden_top_k": hidden[0][len(ids):].tolist(),
                })

        figures = {
            "about": "Figures of the Dream authors' own code (transformers %s, torch %s) on a tiny checkpoint with "
                     "the real Dream-v0-Instruct-7B config and deterministic weights (tests/real_checkpoints.py)."
                     % (transformers.__version__, torch.__version__.split("+")[0]),
            "command": "bash scripts/reference/make_venv.sh && /tmp/tie-lite-reference-venv/bin/python "
                       "scripts/reference/dream.py",
            "source": {
                "repo": args.repo_url,
                "commit": commit,
                "path": args.path,
                "path_last_changed_in": last_change,
                "published_as": "huggingface.co/Dream-org/Dream-v0-Instruct-7B (a copy of the hub folder: config.json names "
                                "it; code with the Dream team's headers, differing from Fast-dLLM's by Fast-dLLM's "
                                "additions only)",
                "files_sha256": {name: sha256(text) for name, text in sources.items()},
                "hub_folder_files": hub_files,
                "hub_ships_tokenizer_json": "tokenizer.json" in hub_files,
                "compared_copy": compared,
            },
            "config_source": "config.json of the hub folder above; tiny dimensions %s replace the real ones "
                             "(hidden 3584, intermediate 18944, 28 layers, 28 heads, 4 kv heads)" % TINY,
            "fixed_ids": FIXED_IDS,
            "logits_convention": "raw model output: output i predicts position i + 1 (diffusion_generate shifts "
                                 "with torch.cat([logits[:, :1], logits[:, :-1]], 1))",
            "canvases": figures_canvases,
            "padded": {
                "batch": batch.tolist(), "attention_mask": attn.tolist(), "position_ids": tok_idx.tolist(),
                "row": 1, "positions": padded_rows,
                "how": "4-D boolean mask logical_and(key, query) and position ids cumsum-1 (pads 1), as "
                       "diffusion_generate builds them for a left-padded batch",
            },
            "generate": runs,
            "generate_recipe": recipe_runs,
            "tokenizer": dict(tokenizer_rows, how="DreamTokenizer (tokenization_dream.py) with the hub's "
                              "tokenizer_config.json (fixture) over write_tokenizer_files' synthetic vocab.json + merges.txt"),
            "defaults": defaults,
            "notes": [
                ("diffusion_generate(generation_config=None) builds its config with "
                 "DreamGenerationConfig.from_model_config(model.config), not from generation_config.json (which "
                 "from_pretrained loads into model.generation_config but diffusion_generate does not read); under "
                 "transformers 4.46 PretrainedConfig still carries the legacy generation attributes, so an omitted "
                 "top_k is %r, an omitted temperature %r and an omitted top_p %r (see defaults)."
                 % (from_model.top_k, from_model.temperature, from_model.top_p)),
                ("At temperature 0, top_k=50 keeps the argmax tokens but renormalizes the probabilities over the "
                 "top 50, which changes every alg's confidence and so which positions are committed; "
                 "output_with_hidden_top_k shows the ids such a call returns."),
                ("Per step, number_transfer_tokens = int(num_mask * (1 - s / t)) in float32 with "
                 "timesteps = torch.linspace(1, eps, steps + 1), t = timesteps[i], s = timesteps[i + 1], and all "
                 "remaining masks at the last step; positions are chosen by torch.topk over every masked position "
                 "of the canvas (no blocks). With steps == max_new_tokens the first step commits nothing "
                 "(int(n / steps * (1 - eps)) rounds down) and the last commits two."),
                ("Confidences: maskgit_plus = top-1 probability; topk_margin = top-1 minus top-2 probability; "
                 "entropy = sum(p * log(p + 1e-10)) (negative entropy)."),
            ],
        }
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(saved_config)
        (out / "tensors.json").write_text(json.dumps(table, indent=1) + "\n")
        (out / "figures.json").write_text(json.dumps(figures, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        (out / "tokenizer_config.json").write_text(hub_tokenizer_config_text)
        print(f"wrote {out} from {commit[:12]}:{args.path}")
        for r in runs:
            print(r["alg"], r["max_new_tokens"], r["steps"], r["transfers_per_step"],
                  "hidden top_k differs" if r["output"] != r["output_with_hidden_top_k"] else "")
        for r in recipe_runs:
            print("recipe", len(r["prompt"]), r["forwards"], len(set(r["output"])), r["output"][:10],
                  "hidden top_k differs" if r["output"] != r["output_with_hidden_top_k"] else "")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
