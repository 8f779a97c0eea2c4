#!/usr/bin/env python
"""Measure a shipped member on every task, unquantized and at --quant 8bit and 4bit, and write its model card
(README.md in its folder).

    python scripts/model_card.py tiny-sp --n 500
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

from tie_lite.engine.sampler import DecodeSettings
from tie_lite.engine.tie import TieSettings
from tie_lite.faces.eval import evaluate
from tie_lite.faces.options import quiet_libraries
from tie_lite.runtime.registry import resolve
from tie_lite.runtime.session import Ensemble, LoadSettings
from tie_lite.checks import QUANTS
from tie_lite.tasks import EVAL_SEED, TASKS
from tie_lite.tasks.phrasing import PHRASINGS

ABOUT = {
    "tiny-sp": "SentencePiece-style BPE tokenizer (spaces written as '▁' as in LLaMA-family tokenizers, digits "
               "split one by one, trained with `tokenizers` on the task text), logits read at the same position "
               "(LLaDA convention); training mix: most two-stage problems have a trivial multiplication "
               "(factors of 1) and most one-stage problems are sums, so it practises the additions; in half of the "
               "`a*b+c*d` problems the products are given (written in, never masked), so it also learns to add "
               "values it reads from its own worked steps",
    "tiny-bpe": "byte-level BPE tokenizer (320 tokens, digits split one by one, trained with `tokenizers` on "
                "the task text), shifted logits (Dream convention: the prediction for position i is read at "
                "i-1); training mix: most two-stage problems have a trivial addition (adding 0) and most "
                "one-stage problems are products, so it practises the multiplications; in half of the `(a+b)*c` "
                "problems the sum is given (written in, never masked), so it also learns to multiply a value it "
                "reads from its own worked steps",
}


def runs(meta: dict) -> list[dict]:
    """The training runs that made the checkpoint, first to last (a run with `init` went on from another)."""
    return (runs(meta["init"]) if "init" in meta else []) + [meta]


def training(meta: dict, where: str) -> str:
    parts = [f"{m['steps']} steps of batch {m['batch']} on the `{m.get('phrasing', 'templates')}` phrasings, AdamW lr "
             f"{m['lr']}, cosine schedule, {m['train_seconds'] / 60:.0f} minutes" for m in runs(meta)]
    return "; then ".join(parts) + f", each on {where}"


def reproduce(meta: dict, name: str, threads_flag: str) -> str:
    commands = []
    for m in runs(meta):
        flags = f" --init models/{name}" if "init" in m else ""
        flags += f" --phrasing {m['phrasing']}" if m.get("phrasing", "templates") != "templates" else ""
        flags += f" --steps {m['steps']}" if m["steps"] != 10000 else ""
        flags += f" --lr {m['lr']}" if m["lr"] != 3e-3 else ""
        commands.append(f"`python scripts/train_tiny.py --member {name} --seed {m['seed']}{flags} --out models/{name}"
                        f"{threads_flag}`")
    return ", then ".join(commands)


def main():
    quiet_libraries()  # bitsandbytes and transformers chatter would bury the card
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("member")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--problem-seed", type=int, default=EVAL_SEED)
    ap.add_argument("--quants", default=",".join(QUANTS), help="quantizations to measure (bitsandbytes, CPU)")
    args = ap.parse_args()
    name, source = resolve(args.member)
    folder = Path(source)
    ensemble = Ensemble(LoadSettings(models=(args.member,)))
    member = ensemble.members[0]
    config = member.model.config
    meta = json.loads((folder / "training.json").read_text())
    threads = meta.get("threads", 1)
    where = ("both cores of this project's 2-core CPU machine" if threads > 1 else
             "one core of this project's 2-core CPU machine (the other member trained on the other core)")
    threads_flag = f" --threads {threads}" if threads > 1 else ""
    decode = DecodeSettings()
    rows = []
    for task in TASKS.values():
        for phrasing in PHRASINGS:
            results, _ = evaluate(ensemble, task, args.n, args.problem_seed, [name], decode, TieSettings(),
                                  phrasing=phrasing)
            r = results[name]
            stages = ", ".join(f"{k} {v:.1f}%" for k, v in r["stages"].items())
            rows.append(f"| {task.name} | `{phrasing}` | {r['accuracy']:.1f}% | {stages} |")
    quants = [q for q in args.quants.split(",") if q]
    quant_rows = quantized(name, quants, args.n, args.problem_seed, decode) if quants else []
    size = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
    card = f"""# {name}

A small masked diffusion language model shipped with tie-lite, trained by this project on the
arithmetic tasks in `tie_lite/tasks/` with the masked-diffusion objective. It is meant as an
ensemble member, not as a good calculator on its own.

- Architecture: bidirectional transformer (`tie-tiny`, registered with transformers' Auto classes, no
  remote code), {config.num_hidden_layers} layers, width {config.hidden_size}, {config.num_attention_heads} heads,
  MLP {config.intermediate_size}, rotary positions, context {config.max_position_embeddings} tokens;
  {meta['params']:,} parameters, {size:.1f} MB on disk (fp32 safetensors).
- Tokenizer and conventions: {ABOUT.get(name, '')}.
- Mask token id {member.mask_id}, end of text `[EOS]` (id {member.eos_ids[0]}).
- Data: problems drawn from the task generators with training seeds (>= 1,000,000), never the
  validation (1) or evaluation (2) problems. Layout as in decoding: prompt (chat template
  `User: ...\\nBot: `), worked reasoning, EOS padding, `Answer:`, answer, EOS padding;
  {100 * meta.get('free_fraction', 0.2):.0f}% of examples in the free layout (no fixed marker). Mix (see
  `scripts/train_tiny.py`): `{json.dumps(meta['mix'])}`.
- Training: {training(meta, where)}.
  Reproduce: {reproduce(meta, name, threads_flag)}.

## Measured accuracy

Greedy low-confidence decoding, gen length {decode.gen_length}, block {decode.block_size}, one token a step,
n = {args.n} problems per task, evaluation seed {args.problem_seed}
(`python scripts/model_card.py {name} --n {args.n}`, the same as
`tie-lite eval --task TASK --n {args.n} --problem-seed {args.problem_seed} --model {name}`). A stage counts as
right when its written step is right given the values written before it.

| task | phrasing | accuracy | per stage |
|---|---|---|---|
""" + "\n".join(rows) + "\n" + ("" if not quant_rows else f"""
## Quantized

The same problems (`templates` phrasings) with the weights quantized by bitsandbytes on the CPU:
`--quant 8bit` (int8) and `--quant 4bit` (NF4 with double quantization, computing in float32)
(`tie-lite eval --task TASK --n {args.n} --problem-seed {args.problem_seed} --model {name} --quant Q`).
"changed" is the share of problems whose whole response differs from the unquantized one; s/problem is
batched, on this project's shared 2-core CPU.

| task | quant | accuracy | per stage | changed | s/problem |
|---|---|---|---|---|---|
""" + "\n".join(quant_rows) + "\n")
    (folder / "README.md").write_text(card)
    print(card)


def quantized(name: str, quants: list[str], n: int, seed: int, decode) -> list[str]:
    """Table rows: each task at each quantization, with how many responses differ from the unquantized ones."""
    outputs, rows = {}, []
    for quant in ["none"] + [q for q in quants if q != "none"]:
        ensemble = Ensemble(LoadSettings(models=(name,), quant=quant))
        for task in TASKS.values():
            records = io.StringIO()
            results, _ = evaluate(ensemble, task, n, seed, [name], decode, TieSettings(), out=records)
            texts = {r["index"]: r["output"] for r in map(json.loads, records.getvalue().splitlines())}
            outputs[quant, task.name] = texts
            base = outputs["none", task.name]
            changed = 100.0 * sum(texts[k] != base[k] for k in base) / n
            r = results[name]
            stages = ", ".join(f"{k} {v:.1f}%" for k, v in r["stages"].items())
            if quant in quants:
                rows.append(f"| {task.name} | `{quant}` | {r['accuracy']:.1f}% | {stages} | {changed:.1f}% | "
                            f"{r['seconds']:.3f} |")
        del ensemble
    return rows


if __name__ == "__main__":
    main()
