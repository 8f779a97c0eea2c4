#!/usr/bin/env python
"""Train one of the shipped tiny MDLMs with the masked-diffusion objective.

    python scripts/train_tiny.py --member tiny-sp  --seed 0 --out models/tiny-sp
    python scripts/train_tiny.py --member tiny-bpe --seed 0 --out models/tiny-bpe

(--threads 2 uses both cores for one member; the two can also train side by side, one core each.)

Objective (LLaDA's): sample t in (0, 1], mask each response token with probability t (the prompt
and the fixed answer marker are never masked), cross-entropy on the masked positions weighted by 1/t.
Responses use the decoding layout: reasoning, EOS padding, "Answer:", answer, EOS padding.
The two members differ the way real ensemble members do: tokenizer (SentencePiece-style BPE with '▁'
for spaces vs GPT-style byte-level BPE, each trained on the task text, digits one by one), logit
convention (tiny-bpe reads position i's prediction at i-1, as Dream does) and, above all, training
mix: tiny-sp practises the additions (most products are by 1), tiny-bpe the multiplications (most
sums add 0), over the same ranges. A trivial stage leaves the next stage's operands in the prompt
("37*1+28*1"), and a member that only practised that learned to read them there: 95% on plain sums,
30% on the sum of two products it had to read from its own worked steps. So in half of the problems
whose first stage is the other member's, that stage is given instead: written in with real operands
and never masked, the member learns its own stage from the response without learning the other.
A character-level member (char_tokenizer) was tried first: with prompts three times as long in
tokens it learned the additions far more slowly (8% of sums right after 10,000 steps, where the
subword members were past 50%), so both shipped members use subword tokenizers.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import string
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from tie_lite.families import chat_prompt_ids
from tie_lite.models.tiny import TieTinyConfig, TieTinyForMaskedLM
from tie_lite.tasks import (
    ANSWER_MARKER,
    EVAL_SEED,
    TASKS,
    TRAIN_SEED_BASE,
    VALIDATION_SEED,
)

SPECIALS = ["[PAD]", "[UNK]", "[MASK]", "[EOS]"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}User: {% else %}Bot: {% endif %}"
    "{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}Bot: {% endif %}"
)

MEMBERS = {
    # one_stage_sum: the share of one-stage problems that are plain sums (the rest plain products).
    # given/given_share: that share of the two-stage problems whose first stage is `given` have real
    # operands with the first stage's steps written in and never masked: the member practises its own
    # stage on operands it must read from the response, not from the prompt, without practising `given`.
    "tiny-sp": dict(tokenizer="sp", shift_logits=False,
                    mix=dict(trivial_product=0.7, one_stage=0.25, one_stage_sum=0.8, given="products",
                             given_share=0.5)),
    "tiny-bpe": dict(tokenizer="bpe", shift_logits=True,
                     mix=dict(trivial_sum=0.7, one_stage=0.25, one_stage_sum=0.2, given="sum", given_share=0.5)),
}


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]", eos_token="[EOS]"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def char_tokenizer() -> PreTrainedTokenizerFast:
    chars = sorted(set(string.printable) - set("\x0b\x0c\r"))
    vocab = {t: i for i, t in enumerate(SPECIALS + chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return wrap(tok)


def sp_tokenizer(texts: list[str], vocab_size: int = 256) -> PreTrainedTokenizerFast:
    """SentencePiece-style BPE (spaces as '▁', as LLaMA-family tokenizers write them), digits one by one."""
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    alphabet = sorted(set(string.printable) - set("\x0b\x0c\r ")) + ["▁"]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                                       initial_alphabet=alphabet))
    return wrap(tok)


def task_texts(seed: int, phrasing: str = "templates") -> list[str]:
    """Text to train a subword tokenizer on (its own seed range, below the training streams)."""
    rng = random.Random(TRAIN_SEED_BASE - 1 - seed)
    texts = []
    for task in TASKS.values():
        for _ in range(4000):
            p = task.sample(rng, None, phrasing)
            texts += [f"User: {p.prompt}\nBot: ", p.reasoning, ANSWER_MARKER, p.answer]
    return texts


def bpe_tokenizer(texts: list[str], vocab_size: int = 320) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    return wrap(tok)


def held_out_expressions() -> set[str]:
    """Expressions of the validation and evaluation problems: training never sees them."""
    held = set()
    for task in TASKS.values():
        for seed in (VALIDATION_SEED, EVAL_SEED):
            held |= {p.reasoning for p in task.generate(2000, seed)}
    return held


class Examples:
    """Streams training batches in the decoding layout."""

    def __init__(self, tokenizer, mix, seed, free_fraction=0.1, phrasing="templates"):
        self.tok = tokenizer
        self.mix = mix
        self.phrasing = phrasing
        self.rng = random.Random(TRAIN_SEED_BASE + seed)
        self.free_fraction = free_fraction
        self.held = held_out_expressions()
        self.eos = tokenizer.eos_token_id
        self.marker = tokenizer.encode(ANSWER_MARKER, add_special_tokens=False)

    def problem(self, task):
        """A training problem and whether its first stage is given (written in, never masked)."""
        share = self.mix.get("given_share", 0.0) * (1 - self.mix.get("one_stage", 0.15))
        while True:
            p, given = None, False
            if self.rng.random() < share:  # real operands; kept when the task's first stage is the given one
                p = task.sample(self.rng, dict(one_stage=0.0, one_digit=self.mix.get("one_digit", 0.0)), self.phrasing)
                given = p.stages[0] == self.mix.get("given")
            if not given:
                p = task.sample(self.rng, self.mix, self.phrasing)
            if p.reasoning not in self.held:
                return p, given

    def batch(self, size: int):
        enc = lambda s: self.tok.encode(s, add_special_tokens=False)  # noqa: E731
        rows = []
        task = self.rng.choice(list(TASKS.values()))  # one task a batch: rows of similar length, less padding
        for _ in range(size):
            p, given = self.problem(task)
            prompt = chat_prompt_ids(self.tok, [{"role": "user", "content": p.prompt}])
            reasoning, answer = enc(p.reasoning), enc(p.answer)
            fixed = 0  # leading reasoning tokens that are given, never masked
            if given:
                head = enc(p.reasoning.rsplit(";", 1)[0] + ";")
                fixed = len(head) if reasoning[: len(head)] == head else 0
            answer_pad = self.rng.randint(0, 10 - len(answer)) if len(answer) < 10 else 0
            rows.append((prompt, reasoning, fixed, answer, answer_pad, self.rng.random() < self.free_fraction))
        need = max(len(pr) + len(r) + len(self.marker) + len(a) + ap for pr, r, _, a, ap, _ in rows)
        total = need + self.rng.randint(0, 8)
        ids, maskable = [], []
        for prompt, reasoning, fixed, answer, answer_pad, free in rows:
            if free:  # no fixed marker: everything after the prompt is generated, EOS to the end
                resp = reasoning + self.marker + answer
                resp = resp + [self.eos] * (total - len(prompt) - len(resp))
                ids.append(prompt + resp)
                maskable.append([0] * (len(prompt) + fixed) + [1] * (len(resp) - fixed))
            else:  # answer layout: reasoning, EOS padding, fixed marker, answer, EOS padding
                tail = answer + [self.eos] * answer_pad
                pad = total - len(prompt) - len(reasoning) - len(self.marker) - len(tail)
                ids.append(prompt + reasoning + [self.eos] * pad + self.marker + tail)
                maskable.append([0] * (len(prompt) + fixed) + [1] * (len(reasoning) - fixed + pad)
                                + [0] * len(self.marker) + [1] * len(tail))
        return torch.tensor(ids), torch.tensor(maskable, dtype=torch.bool)


def masked_diffusion_loss(model, ids, maskable, mask_id, shift: bool, eps=1e-3):
    b = ids.shape[0]
    t = (1 - eps) * torch.rand(b, 1) + eps
    masked = maskable & (torch.rand(ids.shape) < t)
    noisy = torch.where(masked, torch.full_like(ids, mask_id), ids)
    logits = model(input_ids=noisy).logits
    if shift:
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
    ce = F.cross_entropy(logits[masked], ids[masked], reduction="none")
    weights = (1.0 / t).expand_as(ids)[masked]
    return (ce * weights).sum() / maskable.sum()


def save(model, tok, out: Path):
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    model.train()


def new_member(spec: dict, args):
    """A freshly initialised member and its tokenizer, trained on the task text."""
    if spec["tokenizer"] == "char":
        tok = char_tokenizer()
    elif spec["tokenizer"] == "sp":
        tok = sp_tokenizer(task_texts(args.seed, args.phrasing))
    else:
        tok = bpe_tokenizer(task_texts(args.seed, args.phrasing))
    config = TieTinyConfig(
        vocab_size=-(-len(tok) // 32) * 32,  # padded for quantized kernels
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        intermediate_size=4 * args.hidden,
        max_position_embeddings=256,
        mask_token_id=tok.mask_token_id,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        shift_logits=spec["shift_logits"],
    )
    return TieTinyForMaskedLM(config), tok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--member", choices=sorted(MEMBERS), required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--phrasing", choices=("templates", "varied"), default="templates",
                    help="templates: the six the shipped members learned; varied: tie_lite/tasks/phrasing.py's grammar "
                         "(with 1-digit operands in a fifth of the sums)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--hidden", type=int, default=64, help="a multiple of 64 (bitsandbytes 4-bit CPU kernels need it)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mix", help='override the member\'s training mix, JSON, e.g. \'{"trivial_product": 0.6}\'')
    ap.add_argument("--init", type=Path, help="go on training this checkpoint (its model and tokenizer), e.g. a member "
                                              "trained on the templates, now on --phrasing varied")
    ap.add_argument("--checkpoint-every", type=int, default=0, help="also save every N steps (to watch training)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    spec = MEMBERS[args.member]
    mix = json.loads(args.mix) if args.mix else dict(spec["mix"])
    if args.phrasing == "varied":
        mix.setdefault("one_digit", 0.2)
    if args.init:
        tok = PreTrainedTokenizerFast.from_pretrained(args.init)
        model = TieTinyForMaskedLM.from_pretrained(args.init)
        if model.config.shift_logits != spec["shift_logits"]:
            raise SystemExit(f"{args.init} is not a {args.member} checkpoint (its logit convention differs)")
    else:
        model, tok = new_member(spec, args)
    data = Examples(tok, mix, args.seed, phrasing=args.phrasing)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = 300
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))
    )
    start = time.time()
    model.train()
    for step in range(args.steps):
        ids, maskable = data.batch(args.batch)
        loss = masked_diffusion_loss(model, ids, maskable, tok.mask_token_id, spec["shift_logits"])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.4f} {time.time() - start:.0f}s", flush=True)
        if args.checkpoint_every and step and step % args.checkpoint_every == 0:
            save(model, tok, args.out)
    save(model, tok, args.out)
    meta = dict(member=args.member, seed=args.seed, steps=args.steps, batch=args.batch, lr=args.lr, phrasing=args.phrasing,
                mix=mix, free_fraction=data.free_fraction, layers=model.config.num_hidden_layers,
                hidden=model.config.hidden_size,
                threads=args.threads, train_seconds=round(time.time() - start), params=model.num_parameters())
    if args.init:  # what it went on from, with how that was trained
        meta["init"] = json.loads((args.init / "training.json").read_text())
    (args.out / "training.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
