"""Answer checkers for questions read from data files: is the answer a member wrote the gold one?

Each checker takes the answer text (what follows the layout's marker, or the whole response in the free
layout) and the item's gold, and returns a `Check` (tasks/arithmetic.py) whose `answer` is what it read.

- number: the last number in the answer (thousands separators, `$` and a trailing `.` ignored) equals the gold
  number (GSM8K writes its gold after `####`; that prefix is read too).
- choice: the multiple-choice label the answer names (`B`, `(B)`, `B.`, `The answer is B`) is the gold label.
- exact: the answer, stripped of surrounding whitespace, is the gold string.
- regex: the stripped answer matches the gold as a regular expression, whole (re.fullmatch).
- math: the last `\\boxed{...}` in the answer (or the whole answer) is the gold expression, compared by
  math-verify (the MATH/MATH500 reference comparison: LaTeX parsed, numbers and sets compared as values).
- code: the answer's Python code, with the item's tests appended, runs in a subprocess (tasks/sandbox.py);
  only with an explicit permission, since it runs code a model wrote.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tie_lite.errors import UserError

from .arithmetic import Check
from .sandbox import run_tests

CHECKERS = ("number", "choice", "exact", "regex", "math", "code")

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


@dataclass(frozen=True)
class CodeTests:
    """What a code item's tests need besides the answer: the function's prompt (its signature and docstring),
    the test code and the name `check` is called with (HumanEval's `prompt`, `test`, `entry_point`)."""

    prompt: str
    test: str
    entry_point: str


def read_number(text: str) -> str | None:
    """The last number written in `text`, as a plain decimal string (`1,234.50` -> `1234.50`)."""
    if "####" in text:  # GSM8K's gold and answers written in its style: the number after the last ####
        text = text.rsplit("####", 1)[1]
    found = _NUMBER.findall(text.replace("$", ""))
    return found[-1].replace(",", "") if found else None


def same_number(a: str, b: str) -> bool:
    try:
        return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(b)))
    except ValueError:
        return False


def read_choice(text: str, labels: tuple[str, ...]) -> str | None:
    """The label the answer names: an explicit `answer is X` first, then a label standing alone at the start,
    then the first label standing alone anywhere (labels are compared as written: A-E, or 1-4 for some ARC items)."""
    if not labels:
        return None
    alternatives = "|".join(re.escape(label) for label in sorted(labels, key=len, reverse=True))
    standalone = rf"(?<![A-Za-z0-9])\(?({alternatives})\)?(?![A-Za-z0-9])"
    for pattern in (rf"answer\s*(?:is|:)?\s*{standalone}", rf"^\s*{standalone}", standalone):
        if m := re.search(pattern, text, re.I if pattern.startswith("answer") else 0):
            return m.group(1)
    return None


def last_boxed(text: str) -> str | None:
    r"""The content of the last \boxed{...} (or \fbox{...}) in `text`, braces balanced; None when there is none."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        return None
    depth = 0
    for k in range(brace, len(text)):
        depth += {"{": 1, "}": -1}.get(text[k], 0)
        if depth == 0:
            return text[brace + 1 : k]
    return None


def same_math(answer: str, gold: str) -> bool:
    """math-verify's comparison of two LaTeX answers (each read as math, `$...$` added when missing)."""
    import math_verify  # deferred: its LaTeX grammar takes a while to import and only math items need it

    def parse(text: str):
        text = text.strip()
        return math_verify.parse(text if "$" in text or "\\(" in text else f"${text}$")

    gold_parsed, answer_parsed = parse(gold), parse(answer)
    if not gold_parsed or not answer_parsed:
        return answer.strip() == gold.strip()
    return bool(math_verify.verify(gold_parsed, answer_parsed))


def code_from(answer: str) -> str:
    """The Python code in an answer: the first fenced block's content; with a single fence, the side of it that
    holds code (a response that opened a fence and ran out, or code followed by a closing fence)."""
    parts = answer.split("```")
    strip_tag = lambda s: re.sub(r"^[ \t]*(?:python|py)?[ \t]*\n", "", s, count=1)  # noqa: E731
    if len(parts) >= 3:
        return strip_tag(parts[1])
    if len(parts) == 2:
        return parts[0] if re.search(r"^\s*(def|import|from|class)\s", parts[0], re.M) else strip_tag(parts[1])
    return answer


def check_answer(checker: str, answer: str | None, gold, *, labels: tuple[str, ...] = (), tests: CodeTests | None = None,
                 run_code: bool = False, time_limit: float = 10.0, memory_limit: int = 1 << 30) -> Check:
    """Check one answer (None: the response had no answer) against `gold` with the named checker."""
    text = answer or ""
    if checker == "number":
        read = read_number(text)
        gold_number = read_number(str(gold)) or str(gold).strip()
        ok = read is not None and same_number(read, gold_number)
    elif checker == "choice":
        read = read_choice(text, labels or tuple(str(gold).strip()))
        ok = read is not None and read == str(gold).strip()
    elif checker == "exact":
        read = text.strip()
        ok = answer is not None and read == str(gold).strip()
    elif checker == "regex":
        read = text.strip()
        ok = answer is not None and re.fullmatch(str(gold), read) is not None
    elif checker == "math":
        boxed = last_boxed(text)
        read = (boxed if boxed is not None else text).strip()
        ok = answer is not None and bool(read) and same_math(read, str(gold))
    elif checker == "code":
        if not run_code:
            raise UserError("the code checker runs code a model wrote; allow it with --run-code (it runs in a "
                            "subprocess with time and memory limits and no network)")
        read = code_from(text)
        ok = answer is not None and tests is not None and run_tests(tests.prompt, read, tests.test, tests.entry_point,
                                                                    time_limit=time_limit, memory_limit=memory_limit)
    else:
        raise UserError(f"unknown checker '{checker}'; use one of {', '.join(CHECKERS)}")
    return Check(correct=bool(ok), answer=read, stages={})
