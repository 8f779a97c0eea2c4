"""How people ask: a grammar that writes one arithmetic expression the many ways a user types it.

Three phrasing sets (`tie-lite eval --phrasing`):
- templates: the six templates the shipped members were trained on, the expression written tight ("(23+41)*7");
- varied: many templates (questions, imperatives, "=?" forms, bare expressions), spaces around operators and
  parentheses or not, words or symbols for + and * (plus, times, multiplied by, x; "add 5 and 9"), casing and
  punctuation variants: what `scripts/train_tiny.py --phrasing varied` trains on;
- held-out: templates no training uses (nor the text the tokenizers learn from), written like `varied`: whether
  a member learned to read the expression or only its templates.
"""

from __future__ import annotations

import random
import re

# {e} is the expression. Questions, imperatives, "=?" forms, bare expressions.
TRAINING_TEMPLATES = (
    "What is {e}?", "What's {e}?", "what is {e}", "whats {e}", "Compute {e}.", "Compute {e} step by step.",
    "Calculate {e}.", "Calculate {e}", "Solve {e}. Show your work.", "Solve {e}", "{e} = ?", "{e}=?", "{e}",
    "{e} =", "{e}?", "How much is {e}?", "how much is {e}", "Tell me {e}.", "Work out {e}.", "Find {e}.",
    "What does {e} equal?", "Evaluate {e}.", "Please compute {e}.", "Can you calculate {e}?",
    "What do you get for {e}?", "Give me {e}.", "I need {e}.", "Answer this: {e}", "Q: {e}", "Math: {e}",
    "What is the answer to {e}?", "Do {e}.", "Simplify {e}.", "Hey, what is {e}?",
)
SHIPPED_TEMPLATES = (
    "What is {e}?", "Compute {e} step by step.", "Calculate {e}.", "{e} = ?", "Solve {e}. Show your work.", "What's {e}?",
)
HELD_OUT_TEMPLATES = (
    "Could you work out {e} for me?", "Quick question: {e}?", "Determine {e}.", "What is the value of {e}?",
    "Figure out {e}", "{e} equals?", "Help me with {e}", "Result of {e}?", "what would {e} be",
    "I'd like to know {e}.", "Try this one: {e}", "Please tell me what {e} is.",
)
PHRASINGS = {"templates": SHIPPED_TEMPLATES, "varied": TRAINING_TEMPLATES, "held-out": HELD_OUT_TEMPLATES}

SYMBOL_SHARE = 0.6  # operators written as symbols; otherwise as words
OPERATOR_WORDS = {"+": ("plus",), "*": ("times", "multiplied by", "x")}
# Plain sums and products also have verbal forms; {a} and {b} are the operands, in order.
VERBAL = {"+": ("add {a} and {b}", "the sum of {a} and {b}"), "*": ("multiply {a} by {b}", "the product of {a} and {b}")}
VERBAL_SHARE = 0.15


def write_expression(tokens: list, rng: random.Random) -> str:
    """Tokens (ints, '+', '*', '(', ')') as text: symbols or words, with or without spaces."""
    symbols = rng.random() < SYMBOL_SHARE
    spacing = rng.choice(("none", "all", "mixed")) if symbols else "all"
    out = []
    for i, tok in enumerate(tokens):
        text = str(tok)
        if tok in OPERATOR_WORDS and not symbols:
            text = rng.choice(OPERATOR_WORDS[tok])
        spaced = spacing == "all" or (spacing == "mixed" and rng.random() < 0.5)
        if i and spaced and tok != ")" and tokens[i - 1] != "(":
            out.append(" ")
        out.append(text)
    return "".join(out)


def write_prompt(tokens: list, rng: random.Random, phrasing: str = "varied") -> str:
    """A user's question about the expression `tokens`, in one of the phrasing set's templates."""
    templates = PHRASINGS[phrasing]
    if phrasing == "templates":
        return rng.choice(templates).format(e="".join(map(str, tokens)))
    if len(tokens) == 3 and rng.random() < VERBAL_SHARE:
        a, op, b = tokens
        expr = rng.choice(VERBAL[op]).format(a=a, b=b)
    else:
        expr = write_expression(tokens, rng)
    prompt = rng.choice(templates).format(e=expr)
    r = rng.random()
    if r < 0.15:
        prompt = prompt.lower()
    elif r < 0.25:
        prompt = prompt[:1].upper() + prompt[1:]
    r = rng.random()
    if r < 0.15:
        prompt = prompt.rstrip(".?!")
    elif r < 0.2:
        prompt = prompt.rstrip(".?!") + rng.choice(("??", "!", " ?"))
    return prompt


_WORDS = [(re.compile(r"\bmultiplied\s+by\b"), "*"), (re.compile(r"\btimes\b"), "*"), (re.compile(r"\bplus\b"), "+"),
          (re.compile(r"(?<=[\d)])\s*x\s*(?=[\d(])"), "*"),
          (re.compile(r"\badd\s+(\d+)\s+and\s+(\d+)"), r"\1+\2"), (re.compile(r"\bmultiply\s+(\d+)\s+by\s+(\d+)"), r"\1*\2"),
          (re.compile(r"\bthe\s+sum\s+of\s+(\d+)\s+and\s+(\d+)"), r"\1+\2"),
          (re.compile(r"\bthe\s+product\s+of\s+(\d+)\s+and\s+(\d+)"), r"\1*\2")]
# Starts only where a number starts, and a number never ends inside digits: linear in the text (with backtracking,
# a long run of digits took quadratic time: a 5 MB prompt held the CLI for minutes before the context check)
_EXPRESSION = re.compile(r"(?<!\d)\(?\d+(?!\d)\)?(?:[+*]\(?\d+(?!\d)\)?)+")


def find_expression(prompt: str) -> str | None:
    """The arithmetic expression a prompt asks about, written with symbols and no spaces, or None when it
    has none (a greeting, prose): how the chat tells the shipped members' kind of question from others."""
    text = prompt.lower()
    for pattern, symbol in _WORDS:
        text = pattern.sub(symbol, text)
    text = re.sub(r"(?<=[\d()+*])\s+(?=[\d()+*])", "", text)
    found = _EXPRESSION.findall(text)
    return max(found, key=len) if found else None
