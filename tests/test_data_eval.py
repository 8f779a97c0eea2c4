"""`tie-lite eval --data`: questions from the user's own files and from the paper's benchmarks in their published
formats (sample files written here, never the real data), the checkers, and the report's figures."""

import gzip
import json
import subprocess
import sys

import pytest

from tie_lite.tasks.checkers import CodeTests, check_answer, code_from, last_boxed, read_choice, read_number
from tie_lite.tasks.sandbox import run_tests

QUESTIONS = [("What is (23+41)*7?", "448"), ("What is 37+85?", "122"), ("What is 64*7?", "448")]


def tie_lite(*args):
    return subprocess.run([sys.executable, "-m", "tie_lite.faces.cli", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=600)


def write_jsonl(path, records, opener=open):
    with opener(path, "wt") as f:
        f.write("\n".join(json.dumps(r) for r in records) + "\n")
    return path


# --- checkers ---------------------------------------------------------------------------------------------------


def test_number_checker_reads_the_last_number_and_gsm8k_golds():
    assert read_number("so 12 + 30 = 42, the total is $1,234.") == "1234"
    assert read_number("Natalia sold 48/2 = 24 clips.\n#### 72") == "72"
    assert check_answer("number", "1,234", "#### 1234").correct
    assert check_answer("number", "72.0", "72").correct
    assert not check_answer("number", "73", "72").correct
    assert not check_answer("number", None, "72").correct


def test_choice_checker_reads_the_named_label():
    labels = ("A", "B", "C", "D")
    assert read_choice("The answer is C.", labels) == "C"
    assert read_choice("(B) because it is warm", labels) == "B"
    assert read_choice("Apples are red", labels) is None  # a word starting with A is no label
    assert read_choice("2", ("1", "2", "3", "4")) == "2"
    assert check_answer("choice", "D", "D", labels=labels).correct
    assert not check_answer("choice", "A", "D", labels=labels).correct


def test_exact_and_regex_checkers():
    assert check_answer("exact", "  Paris ", "Paris").correct
    assert not check_answer("exact", "paris", "Paris").correct
    assert check_answer("regex", "3.14", r"3\.14\d*").correct
    assert not check_answer("regex", "the value is 3.14", r"3\.14\d*").correct  # the whole answer must match


def test_math_checker_compares_values_with_math_verify():
    assert last_boxed(r"so \boxed{\frac{1}{2}} and then \boxed{x^{2}}") == "x^{2}"
    assert check_answer("math", r"\boxed{\frac{1}{2}}", "0.5").correct
    assert check_answer("math", r"\dfrac{3}{4}", r"\frac34").correct
    assert not check_answer("math", r"\boxed{\frac{1}{3}}", "0.5").correct


ADD = CodeTests(prompt='def add(a, b):\n    """Sum of a and b."""\n',
                test="def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
                entry_point="add")


def test_code_checker_runs_tests_only_when_allowed():
    from tie_lite.errors import UserError

    with pytest.raises(UserError, match="--run-code"):
        check_answer("code", "    return a + b\n", "", tests=ADD)
    assert check_answer("code", "    return a + b\n", "", tests=ADD, run_code=True).correct  # a body
    assert check_answer("code", "```python\ndef add(a, b):\n    return b + a\n```", "", tests=ADD, run_code=True).correct
    assert not check_answer("code", "    return a - b\n", "", tests=ADD, run_code=True).correct
    # as a layout writes the answer region: the fence, a space, the code with its first indent stripped
    assert check_answer("code", "return a + b", "", tests=ADD, run_code=True).correct
    assert code_from("def add(a, b):\n    return a + b\n```\nmore text") == "def add(a, b):\n    return a + b\n"


def test_code_runs_with_limits_and_no_network():
    t = ADD
    assert not run_tests(t.prompt, "    while True:\n        pass\n", t.test, t.entry_point, time_limit=1)
    hog = "    x = bytearray(2 << 30)\n    return a + b\n"  # 2 GiB against a 256 MiB limit
    assert not run_tests(t.prompt, hog, t.test, t.entry_point, memory_limit=256 << 20)
    net = ("    import socket\n    socket.create_connection(('127.0.0.1', 9), timeout=1)\n    return a + b\n")
    assert not run_tests(t.prompt, net, t.test, t.entry_point)
    assert run_tests(t.prompt, "    return a + b\n", t.test, t.entry_point, memory_limit=256 << 20)


# --- data files: bad input --------------------------------------------------------------------------------------


def one_line_error(args, capsys):
    from tie_lite.faces.cli import main

    code = main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    return lines[0]


def test_bad_data_files_get_one_line_naming_file_line_and_field(tmp_path, capsys):
    missing = write_jsonl(tmp_path / "missing.jsonl", [{"question": "What is 2+2?", "answer": "4"},
                                                       {"question": "What is 3+3?", "gold": "6"}])
    line = one_line_error(["eval", "--data", str(missing)], capsys)
    assert str(missing) in line and "line 2" in line and "'answer'" in line and "--answer-field" in line

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert "empty" in one_line_error(["eval", "--data", str(empty)], capsys)
    blank = tmp_path / "blank.csv"
    blank.write_text("\n")
    assert str(blank) in one_line_error(["eval", "--data", str(blank)], capsys)

    unknown = tmp_path / "questions.txt"
    unknown.write_text("What is 2+2?\n")
    line = one_line_error(["eval", "--data", str(unknown)], capsys)
    assert str(unknown) in line and "unknown format" in line

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "a", "answer": "1"}\n\n{"question": "b", answer: 2}\n')
    line = one_line_error(["eval", "--data", str(broken)], capsys)
    assert "line 3" in line and "not valid JSON" in line

    mixed = write_jsonl(tmp_path / "mixed.jsonl", [{"question": "a", "answer": "007"}, {"question": "b", "answer": 7}])
    line = one_line_error(["eval", "--data", str(mixed)], capsys)
    assert "line 2" in line and "'answer'" in line

    csv = tmp_path / "gaps.csv"
    csv.write_text("question,answer\nWhat is 2+2?,4\nWhat is 3+3?,\n")
    line = one_line_error(["eval", "--data", str(csv), "--checker", "number"], capsys)
    assert str(csv) in line and "line 3" in line and "'answer' is empty" in line

    gsm = write_jsonl(tmp_path / "gsm.jsonl", [{"question": "What is 2+2?", "answer": "2+2=4"}])
    line = one_line_error(["eval", "--data", str(gsm), "--benchmark", "gsm8k"], capsys)
    assert "line 1" in line and "####" in line

    good = write_jsonl(tmp_path / "good.jsonl", [{"question": "What is 2+2?", "answer": "2+2=4\n#### 4"}])
    assert "--run-code" in one_line_error(["eval", "--data", str(good), "--benchmark", "humaneval"], capsys)
    assert "not both" in one_line_error(["eval", "--data", str(good), "--task", "sum-product"], capsys)
    assert "oracle-relay" in one_line_error(["eval", "--data", str(good), "--benchmark", "gsm8k", "--methods",
                                             "tie,oracle-relay"], capsys)
    assert "no such file" in one_line_error(["eval", "--data", str(tmp_path / "nope.jsonl")], capsys)


# --- data files: the table --------------------------------------------------------------------------------------


def run_json(*args):
    out = tie_lite("eval", *args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def check_report(data, n, members=("tiny-sp", "tiny-bpe")):
    """The figures agree with one another: intervals hold the accuracy, TIE against the best member adds up."""
    results = data["results"]
    for r in results.values():
        low, high = r["interval95"]
        assert 0 <= low <= r["accuracy"] <= high <= 100
    best = data["best_member"]
    assert best in members and results[best]["accuracy"] == max(results[m]["accuracy"] for m in members)
    v = data["versus"]["tie"]
    assert v["against"] == best and v["won"] + v["lost"] + v["tied"] == n
    # won minus lost items is exactly the gain in points
    assert round(100.0 * (v["won"] - v["lost"]) / n, 2) == round(results["tie"]["accuracy"] - results[best]["accuracy"], 2)


def test_plain_jsonl_csv_and_parquet_give_the_same_table(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"question": q, "answer": a} for q, a in QUESTIONS]
    jsonl = write_jsonl(tmp_path / "mine.jsonl", records)
    csv = tmp_path / "mine.csv"
    csv.write_text("question,answer\n" + "".join(f'"{q}",{a}\n' for q, a in QUESTIONS))
    parquet = tmp_path / "mine.parquet"
    pq.write_table(pa.Table.from_pylist([{"q": q, "gold": a} for q, a in QUESTIONS]), parquet)
    out = tmp_path / "trace.jsonl"
    common = ("--checker", "number", "--methods", "tiny-sp,tiny-bpe,tie")
    a = run_json("--data", str(jsonl), *common[:-1], "tiny-sp,tiny-bpe,tie,oracle-pick", "--out", str(out))
    b = run_json("--data", str(csv), *common)
    c = run_json("--data", str(parquet), "--question-field", "q", "--answer-field", "gold", *common)
    assert a["n"] == 3
    for method in ("tiny-sp", "tiny-bpe", "tie"):
        assert a["results"][method]["accuracy"] == b["results"][method]["accuracy"] == c["results"][method]["accuracy"]
    check_report(a, 3)
    # the bound: an item counts when either member's own response is right, so it is at least each member's accuracy
    pick = a["results"]["oracle-pick"]
    assert pick["bound"] and pick["accuracy"] >= max(a["results"][m]["accuracy"] for m in ("tiny-sp", "tiny-bpe"))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    for method in ("tiny-sp", "tiny-bpe", "tie", "oracle-pick"):  # the table is the per-item record's tally
        hits = [line["correct"] for line in lines if line["method"] == method]
        assert len(hits) == 3 and a["results"][method]["accuracy"] == round(100.0 * sum(hits) / 3, 2)
    # the members know these: the gold answer is what a correct line wrote after the marker
    assert any(line["correct"] and line["answer"] == line["gold"] for line in lines)


def test_table_shows_intervals_and_head_to_head(tmp_path):
    jsonl = write_jsonl(tmp_path / "mine.jsonl", [{"question": q, "answer": a} for q, a in QUESTIONS[:2]])
    out = tie_lite("eval", "--data", str(jsonl), "--checker", "number", "--methods", "tiny-sp,tiny-bpe,tie")
    assert out.returncode == 0, out.stderr
    assert "95% interval" in out.stdout
    assert "tie vs best member" in out.stdout and "won" in out.stdout and "lost" in out.stdout
    assert "tie leader changes" in out.stdout


# --- the paper's benchmarks, in their published formats ---------------------------------------------------------


def benchmark_files(root):
    """One small file per benchmark in its published format, with questions the shipped members can read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    gsm8k = write_jsonl(root / "gsm8k-test.jsonl", [
        {"question": "What is (23+41)*7?", "answer": "23+41=64\n64*7=448\n#### 448"},
        {"question": "What is 37+85?", "answer": "37+85=122\n#### 122"}])
    math500 = write_jsonl(root / "math500-test.jsonl", [
        {"problem": "What is 64*7?", "solution": "64*7=\\boxed{448}", "answer": "448", "subject": "Prealgebra",
         "level": 1, "unique_id": "test/prealgebra/1.json"},
        {"problem": "What is 37+85?", "solution": "37+85=\\boxed{122}", "answer": "122", "subject": "Prealgebra",
         "level": 1, "unique_id": "test/prealgebra/2.json"}])
    arc = root / "arc-challenge-test.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"id": "Mercury_1", "question": "Which is a product of 64 and 7?",
         "choices": {"text": ["448", "71", "57", "4"], "label": ["A", "B", "C", "D"]}, "answerKey": "A"},
        {"id": "Mercury_2", "question": "What is 37+85?",
         "choices": {"text": ["48", "122"], "label": ["1", "2"]}, "answerKey": "2"}]), arc)
    humaneval = write_jsonl(root / "HumanEval.jsonl.gz", [
        {"task_id": "HumanEval/0", "prompt": ADD.prompt, "canonical_solution": "    return a + b\n",
         "test": ADD.test, "entry_point": "add"}], opener=gzip.open)
    return {"gsm8k": gsm8k, "math500": math500, "arc-challenge": arc, "humaneval": humaneval}


def test_benchmark_presets_read_their_published_formats(tmp_path):
    from tie_lite.faces.data_eval import data_task
    from tie_lite.faces.eval import add_eval_parser
    from tie_lite.faces.options import Parser

    parser = Parser(prog="tie-lite")
    add_eval_parser(parser.add_subparsers())
    files = benchmark_files(tmp_path)
    tasks = {}
    for name, path in files.items():
        args = parser.parse_args(["eval", "--data", str(path), "--benchmark", name, "--gen-length", "256", "--run-code"])
        tasks[name] = (data_task(args), args)
    gsm8k, args = tasks["gsm8k"]
    assert [i.answer for i in gsm8k.items] == ["448", "122"] and args.answer_marker == "Answer:"
    assert gsm8k.check(gsm8k.items[0], "23+41=64;64*7=448\nAnswer: 448").correct
    math500, _ = tasks["math500"]
    assert math500.check(math500.items[0], "64*7\nAnswer: \\boxed{448}").correct
    arc, args = tasks["arc-challenge"]
    assert arc.items[0].labels == ("A", "B", "C", "D") and "A. 448" in arc.items[0].prompt
    assert arc.check(arc.items[1], "It is the second.\nAnswer: 2").correct
    assert not arc.check(arc.items[1], "Answer: 1").correct
    humaneval, args = tasks["humaneval"]
    assert args.answer_marker == "```python" and args.answer_length == 192  # the code fence layout: code after it
    item = humaneval.items[0]
    assert item.tests.entry_point == "add"
    assert humaneval.check(item, "Add them.\n```python\ndef add(a, b):\n    return a + b\n```").correct
    assert humaneval.check(item, "Add them.\n```python def add(a, b):\n    return a + b\n```").correct  # Layout.text
    assert not humaneval.check(item, "Add them.\n```python\ndef add(a, b):\n    return a * b\n```").correct


@pytest.mark.parametrize("benchmark", ["gsm8k", "math500", "arc-challenge", "humaneval"])
def test_eval_prints_the_table_for_each_benchmark(tmp_path, benchmark):
    path = benchmark_files(tmp_path)[benchmark]
    extra = ["--run-code"] if benchmark == "humaneval" else []
    data = run_json("--data", str(path), "--benchmark", benchmark, "--methods", "tiny-sp,tiny-bpe,tie", *extra)
    n = 1 if benchmark == "humaneval" else 2
    assert data["n"] == n and set(data["results"]) == {"tiny-sp", "tiny-bpe", "tie"}
    check_report(data, n)
