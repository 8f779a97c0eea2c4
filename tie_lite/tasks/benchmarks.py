"""The paper's four benchmarks as presets over files people already have, in their published formats, each with
its answer layout and checker. The files are never downloaded here: point --data at your copy.

- gsm8k: openai/grade-school-math `test.jsonl` (or the hub's parquet): `question`, `answer` ending `#### 72`.
- math500: HuggingFaceH4/MATH-500 `test.jsonl`: `problem`, `answer` (or `solution` with a `\\boxed{}`).
- arc-challenge: allenai/ai2_arc ARC-Challenge (parquet or JSONL): `question`, `choices` {`text`, `label`},
  `answerKey`; AI2's own JSONL (`question` {`stem`, `choices` [{`text`, `label`}]}) reads too.
- humaneval: openai/human-eval `HumanEval.jsonl.gz`: `task_id`, `prompt`, `test`, `entry_point`.

The paper's figures (LLaDA-1.5 + Dream-7B-Instruct, greedy, 256 tokens, block 16, interval 16) stand beside
each, so a reproduction knows what to expect.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tie_lite.engine.answer import PAPER_ANSWER_MARKER
from tie_lite.errors import UserError

from .checkers import CodeTests, last_boxed
from .data import Item, Record, choices_text, field_value

CODE_FENCE = "```python"  # the code layout's marker: the answer region is the code, closed by a fence
# what each published format holds, for the line that says a record lacks it
GSM8K = "GSM8K records have 'question' and 'answer' (the solution, ending '#### <number>')"
MATH = "MATH records have 'problem' and 'answer' (or 'solution' with a \\boxed{} answer)"
ARC = "ARC records have 'question', 'choices' ('text' and 'label' lists) and 'answerKey'"
HUMANEVAL = "HumanEval records have 'prompt', 'test' and 'entry_point'"


@dataclass(frozen=True)
class Benchmark:
    name: str
    about: str
    checker: str
    marker: str  # the answer layout's marker (a code fence for code)
    answer_tokens: Callable[[int], int]  # answer positions after the marker, for a generation length
    read: Callable[[str, Record], Item]
    paper: str  # the paper's reported accuracy: LLaDA-1.5 / Dream-7B-Instruct -> TIE (tcc)


def _gsm8k(path: str, record: Record) -> Item:
    question = field_value(path, record, "question", GSM8K)
    solution = field_value(path, record, "answer", GSM8K)
    if "####" not in solution:
        raise UserError(f"{path} {record.where}: field 'answer' has no '#### <number>' line (GSM8K's format)")
    gold = solution.rsplit("####", 1)[1].strip().replace(",", "")
    return Item(question, gold, record.where)


def _math500(path: str, record: Record) -> Item:
    problem = field_value(path, record, "problem", MATH)
    if record.values.get("answer") not in (None, ""):
        gold = field_value(path, record, "answer", MATH)
    else:
        solution = field_value(path, record, "solution", MATH)
        gold = last_boxed(solution)
        if gold is None:
            raise UserError(f"{path} {record.where}: field 'solution' has no \\boxed{{...}} answer (MATH's format)")
    return Item(f"{problem}\nGive the final answer in \\boxed{{}}.", gold, record.where)


def _arc(path: str, record: Record) -> Item:
    question = field_value(path, record, "question", ARC, (str, dict))
    if isinstance(question, dict):  # AI2's own JSONL: question {stem, choices [{text, label}]}
        stem, options = question.get("stem"), question.get("choices")
        if not stem or not isinstance(options, list):
            raise UserError(f"{path} {record.where}: field 'question' should hold 'stem' and 'choices' (AI2's format)")
        labels = [str(c.get("label")) for c in options]
        texts = [str(c.get("text")) for c in options]
    else:
        stem = question
        choices = field_value(path, record, "choices", ARC, dict)
        labels, texts = choices.get("label"), choices.get("text")
        if not isinstance(labels, list) or not isinstance(texts, list) or len(labels) != len(texts) or not labels:
            raise UserError(f"{path} {record.where}: field 'choices' should hold lists 'text' and 'label' of one length")
        labels, texts = [str(x) for x in labels], [str(x) for x in texts]
    gold = field_value(path, record, "answerKey", ARC).strip()
    if gold not in labels:
        raise UserError(f"{path} {record.where}: field 'answerKey' is '{gold}', not one of the labels {', '.join(labels)}")
    prompt = f"{stem}\n{choices_text(labels, texts)}\nAnswer with the label of the correct choice."
    return Item(prompt, gold, record.where, labels=tuple(labels))


def _humaneval(path: str, record: Record) -> Item:
    fmt = HUMANEVAL
    code = field_value(path, record, "prompt", fmt)
    tests = CodeTests(prompt=code, test=field_value(path, record, "test", fmt),
                      entry_point=field_value(path, record, "entry_point", fmt))
    prompt = f"Complete the following Python function.\n```python\n{code}```"
    return Item(prompt, "", record.where, tests=tests)


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("gsm8k", "grade-school math word problems; the number after ####", "number", PAPER_ANSWER_MARKER,
              lambda gen: min(16, gen // 4), _gsm8k, "78.8 / 78.4 -> 83.5"),
    Benchmark("math500", "competition mathematics; \\boxed{} answers compared with math-verify", "math",
              PAPER_ANSWER_MARKER, lambda gen: min(32, gen // 4), _math500, "37.4 / 48.0 -> 48.6"),
    Benchmark("arc-challenge", "grade-school science, multiple choice; the answer's label", "choice",
              PAPER_ANSWER_MARKER, lambda gen: min(8, gen // 4), _arc, "85.2 / 86.7 -> 89.2"),
    Benchmark("humaneval", "Python functions from their docstrings; the code runs against the tests", "code",
              CODE_FENCE, lambda gen: gen * 3 // 4, _humaneval, "TIE 3.7 points below the best member"),
)}


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise UserError(f"unknown --benchmark '{name}'; use one of {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]
