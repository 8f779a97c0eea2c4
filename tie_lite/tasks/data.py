"""Questions from a data file: JSONL (also gzipped, as HumanEval ships), JSON, CSV or parquet, read through the
`datasets` library from local files only, with named fields (a question, a gold answer, and per checker what
it needs), and an answer layout (a marker such as "Answer:", a code fence, or none).

A file that cannot be used fails with one line naming the file, the line (row, for parquet) and the field.
"""

from __future__ import annotations

import csv
import gzip
import json
import tempfile
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tie_lite.checks import CHARS_PER_TOKEN, MAX_LENGTH, one_line
from tie_lite.errors import UserError

from .arithmetic import Check
from .checkers import CHECKERS, CodeTests, check_answer

FORMATS = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}  # ours -> datasets' builder
LONGEST_RECORD = MAX_LENGTH * CHARS_PER_TOKEN  # characters: the longest context at the fewest tokens a character
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class Record:
    """One record of a data file and where it is, as a person would look for it."""

    values: dict
    where: str  # "line 3" (JSONL, CSV), "record 3" (JSON array), "row 3" (parquet)
    written: frozenset[str] | None = None  # JSONL: the fields the line itself has (datasets fills the others with None)


@dataclass(frozen=True)
class Item:
    """A question to ask, its gold answer, and what its checker needs. Shaped like an arithmetic Problem where
    eval reads one (prompt, reasoning, answer)."""

    prompt: str
    answer: str  # the gold answer, as the checker compares it
    where: str
    labels: tuple[str, ...] = ()  # multiple choice: the labels the question offers
    tests: CodeTests | None = None
    reasoning: str = ""  # no gold worked solution in the members' words: oracle relay does not apply
    stages: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Fields:
    """Which field holds what (names in the file); `choices` and the code fields only for those checkers."""

    question: str = "question"
    answer: str = "answer"
    choices: str | None = None
    test: str = "test"
    entry_point: str = "entry_point"


def data_format(path: Path, given: str | None = None) -> str:
    """jsonl | json | csv | parquet, from --data-format or the file's suffix (a trailing .gz is allowed)."""
    if given is not None:
        if given not in FORMATS:
            raise UserError(f"{path}: unknown --data-format '{given}'; use one of {', '.join(FORMATS)}")
        return given
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    fmt = SUFFIXES.get(suffixes[-1] if suffixes else "")
    if fmt is None:
        raise UserError(f"{path}: unknown format '{''.join(path.suffixes) or 'no suffix'}'; use a .jsonl, .json, "
                        f".csv or .parquet file (or say which with --data-format)")
    return fmt


def _text_lines(path: Path):
    """(line number, text) of each line of a text data file (gunzipped when its name ends in .gz). A line that
    is not UTF-8, a .gz file that is not gzip (or is damaged), or a file that cannot be read is one line naming
    the file (and the line)."""
    gz = path.suffix.lower() == ".gz"
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            for number, raw in enumerate(f, start=1):  # lines end at b"\n", as the readers of datasets count them
                try:
                    yield number, raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise UserError(f"{path} line {number} is not valid UTF-8 text; save the file as UTF-8") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise UserError(f"{path}: cannot be decompressed as gzip ({one_line(exc)[:120]}); re-download it, or drop "
                        f"the .gz from its name if it is not compressed") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__}); check the file and its "
                        f"permissions") from None


def _kind(value) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    return "a list" if isinstance(value, list) else "an object"


def _jsonl_lines(path: Path) -> list[tuple[int, frozenset[str]]]:
    """The line number and field names of each record of a JSONL file (blank lines hold none). A line that is not a JSON object,
    or a field written as text on one line and as a number on another, is an error naming the line and field:
    `datasets` reads each field as one column of one type, and would otherwise turn "007" into 7 or fail."""
    numbers = []
    first_kind: dict[str, tuple[str, int]] = {}
    for number, line in _text_lines(path):
        if not line.strip():
            continue
        if len(line) > LONGEST_RECORD:  # before json and datasets copy it: no context holds it anyway
            raise UserError(f"{path} line {number}: {len(line):,} characters, more than any model's context holds "
                            f"({LONGEST_RECORD:,}); shorten the record")
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} line {number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(value, dict):
            raise UserError(f"{path} line {number}: a record must be a JSON object with named fields, not "
                            f"{_kind(value)}")
        for name, field_value in value.items():
            if field_value is None:
                continue
            kind, (seen, at) = _kind(field_value), first_kind.setdefault(name, (_kind(field_value), number))
            if kind != seen and {kind, seen} != {"a number"}:
                raise UserError(f"{path} line {number}: field '{name}' is {kind} here but {seen} on line {at}; "
                                f"write it the same way in every record (e.g. every gold answer as text)")
        numbers.append((number, frozenset(value)))
    return numbers


def _csv_features(path: Path):
    """Every CSV column read as text: a gold answer `007` or `1` stays what the file says (not 7 or 1.0)."""
    import datasets  # deferred: importing datasets costs over a second, and only data files need it

    lines = _text_lines(path)
    try:
        header = next(csv.reader(line for _, line in lines), None)
    except csv.Error as exc:
        raise UserError(f"{path} line 1: the header cannot be read as CSV ({one_line(exc)[:120]})") from None
    for _ in lines:  # the rest is read by datasets: first every line is checked to be UTF-8, naming the line
        pass
    if not header:
        raise UserError(f"{path}: empty file (no header line, no records)")
    return datasets.Features({name: datasets.Value("string") for name in header})


def read_records(path: str, fmt: str | None = None) -> list[Record]:
    """Every record of a local data file, in order. Local files only: no hub names, no URLs."""
    file = Path(path)
    if "://" in str(path) or not file.is_file():
        raise UserError(f"{path}: no such file (--data reads a local JSONL, JSON, CSV or parquet file)")
    fmt = data_format(file, fmt)
    if file.stat().st_size == 0:
        raise UserError(f"{path}: empty file (no records)")
    import datasets  # deferred: importing datasets costs over a second, and only data files need it

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    lines = _jsonl_lines(file) if fmt == "jsonl" else None
    if lines == []:
        raise UserError(f"{path}: empty file (no records)")
    if fmt == "json":
        for _ in _text_lines(file):  # UTF-8 throughout, or one line naming the line that is not
            pass
    options = {"features": _csv_features(file), "keep_default_na": False} if fmt == "csv" else {}
    # The readers log their failures as errors ("Failed to read schema from ...") and pandas warns: the one line
    # is ours, made from the exception that follows.
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="tie-lite-data-") as cache, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            table = datasets.load_dataset(FORMATS[fmt], data_files=str(file.resolve()), split="train",
                                          cache_dir=cache, keep_in_memory=True, **options)
            rows = table.to_list()
        except Exception as exc:  # datasets wraps the reader's error: report the reader's own words
            cause = exc.__cause__ or exc
            raise UserError(f"{path}: cannot read it as {fmt} ({type(cause).__name__}: "
                            f"{one_line(cause)[:300]})") from None
        finally:
            datasets.logging.set_verbosity(verbosity)
    if not rows:
        raise UserError(f"{path}: empty file (no records)")
    if lines is not None:
        return [Record(row, f"line {n}", written) for row, (n, written) in zip(rows, lines)]
    if fmt == "csv":
        where = [f"line {k + 2}" for k in range(len(rows))]  # line 1 is the header
    else:
        where = [f"{'row' if fmt == 'parquet' else 'record'} {k + 1}" for k in range(len(rows))]
    return [Record(row, w) for row, w in zip(rows, where)]


def field_value(path: str, record: Record, name: str, hint: str, kind: type | tuple = str):
    """A record's field, or one line naming the file, the line and the field, and `hint`: what to do about it
    (the flag that names the field, or the format the file should have)."""
    if name not in record.values or (record.written is not None and name not in record.written):
        have = ", ".join(sorted(record.written) if record.written is not None else record.values) or "none"
        raise UserError(f"{path} {record.where}: no field '{name}' (the record has: {have}); {hint}")
    value = record.values[name]
    if value is None or (isinstance(value, str) and not value.strip()):
        raise UserError(f"{path} {record.where}: field '{name}' is empty")
    if not isinstance(value, kind):
        if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # a number where text is expected: its written form (JSON golds like 72)
        raise UserError(f"{path} {record.where}: field '{name}' should be {getattr(kind, '__name__', 'text')}, "
                        f"not {type(value).__name__}")
    return value


def choices_text(labels: list[str], texts: list[str]) -> str:
    return "\n".join(f"{label}. {text}" for label, text in zip(labels, texts))


def generic_item(path: str, record: Record, fields: Fields, checker: str) -> Item:
    """An item from plain named fields: the question (with its choices listed under it, when a choices field
    is named), the gold answer, and for code the function prompt, tests and entry point."""
    question = field_value(path, record, fields.question, "name the field with --question-field")
    labels: tuple[str, ...] = ()
    if fields.choices is not None:
        choices = field_value(path, record, fields.choices, "name the field with --choices-field", (list, dict))
        texts = choices["text"] if isinstance(choices, dict) and "text" in choices else choices
        if not isinstance(texts, list) or not texts:
            raise UserError(f"{path} {record.where}: field '{fields.choices}' should be a list of choices")
        given = choices.get("label") if isinstance(choices, dict) else None
        labels = tuple(given or [chr(ord("A") + k) for k in range(len(texts))])
        question = f"{question}\n{choices_text(list(labels), [str(t) for t in texts])}"
    if checker == "code":
        tests = CodeTests(prompt=question, test=field_value(path, record, fields.test, "name the field with --test-field"),
                          entry_point=field_value(path, record, fields.entry_point, "name the field with --entry-point-field"))
        return Item(question, "", record.where, tests=tests)
    gold = field_value(path, record, fields.answer, "name the field with --answer-field")
    return Item(question, gold, record.where, labels=labels)


@dataclass
class DataTask:
    """A task over a data file's items, shaped like the arithmetic tasks where eval uses one: `generate` gives
    the items (in file order; --n takes the first n), `check` reads a response's answer and checks it."""

    name: str
    items: list[Item]
    checker: str
    marker: str | None  # the layout's answer marker; None: the free layout, the whole response is read
    run_code: bool = False
    code_time_limit: float = 10.0
    code_memory_limit: int = 1 << 30

    def generate(self, n: int, seed: int = 0, phrasing: str | None = None) -> list[Item]:
        return self.items[:n]

    def answer_text(self, response: str) -> str | None:
        """What the checker reads: the text after the marker (None when it is missing), or the whole response."""
        if self.marker is None:
            return response
        if self.marker not in response:
            return None
        answer = response.rsplit(self.marker, 1)[1]
        if self.marker.startswith("```"):  # a code fence was opened: the code runs to the closing fence
            return answer.split("```", 1)[0]
        return answer.strip()

    def check(self, item: Item, response: str) -> Check:
        return check_answer(self.checker, self.answer_text(response), item.answer, labels=item.labels,
                            tests=item.tests, run_code=self.run_code, time_limit=self.code_time_limit,
                            memory_limit=self.code_memory_limit)


def load_task(path: str, *, fields: Fields, checker: str, marker: str | None, fmt: str | None = None,
              make_item: Callable[[str, Record], Item] | None = None, name: str | None = None,
              run_code: bool = False) -> DataTask:
    """Read a data file into a task: every record becomes an item through `make_item` (a benchmark preset's
    reader), or through `fields` and `checker` for a file of the user's own."""
    if checker not in CHECKERS:
        raise UserError(f"unknown --checker '{checker}'; use one of {', '.join(CHECKERS)}")
    if checker == "code" and not run_code:
        raise UserError("the code checker runs code a model wrote; allow it with --run-code (it runs in a "
                        "subprocess with time and memory limits and no network)")
    records = read_records(path, fmt)
    build = make_item or (lambda p, r: generic_item(p, r, fields, checker))
    items = [build(path, record) for record in records]
    return DataTask(name or Path(path).name, items, checker, marker, run_code=run_code)
