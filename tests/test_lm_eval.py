"""lm-evaluation-harness on tie-lite: its Python API and its command line (`tie-lite lm-eval`) run a small custom
task (a task YAML and a local data file written here) against the shipped pair, with TIE's own answers."""

import json
import re
import subprocess
import sys

import pytest

lm_eval = pytest.importorskip("lm_eval")

QUESTIONS = [("What is (23+41)*7?", "448"), ("What is 37+85?", "122"), ("What is 64*7?", "448")]

TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: {output_type}
doc_to_text: "{{{{question}}}}"
{target}
metadata:
  version: 1
"""
GENERATE = """doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["\\n\\n"]
filter_list:
  - name: answer
    filter:
      - function: regex
        regex_pattern: "Answer: *(-?[0-9]+)"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true"""
CHOICE = """doc_to_choice: ["448", "122"]
doc_to_target: 0
metric_list:
  - metric: acc"""


def write_task(folder, name="tie_arith", output_type="generate_until"):
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "arith.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in QUESTIONS))
    target = GENERATE if output_type == "generate_until" else CHOICE
    (folder / f"{name}.yaml").write_text(TASK.format(name=name, data=data, output_type=output_type, target=target))
    return folder


def tie_lite(*args):
    return subprocess.run([sys.executable, "-m", "tie_lite.faces.cli", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=600)


def test_simple_evaluate_gives_tie_lites_own_answers(tmp_path):
    from lm_eval.tasks import TaskManager

    from tie_lite.faces.lm_eval_model import TieLiteLM

    lm = TieLiteLM(members="tiny-sp+tiny-bpe", answer_length=8, gen_length=64)
    out = lm_eval.simple_evaluate(model=lm, tasks=["tie_arith"], log_samples=True,
                                  task_manager=TaskManager(include_path=str(write_task(tmp_path / "tasks"))))
    samples = out["samples"]["tie_arith"]
    assert len(samples) == len(QUESTIONS)
    matches = []
    for sample in samples:
        question, gold = sample["doc"]["question"], sample["doc"]["answer"]
        response = sample["resps"][0][0]
        # the same settings from the command line give the same text: lm-eval sees TIE's answer, not another
        generated = subprocess.run([sys.executable, "-m", "tie_lite.faces.cli", "generate", question, "--json"],
                                   capture_output=True, text=True, timeout=300)
        assert generated.returncode == 0, generated.stderr
        assert response == json.loads(generated.stdout)["text"].split("\n\n")[0]
        found = re.search(r"Answer: *(-?[0-9]+)", response)
        matches.append(bool(found) and found.group(1) == gold)
    assert out["results"]["tie_arith"]["exact_match,answer"] == pytest.approx(sum(matches) / len(matches))


def test_lm_eval_command_runs_with_tie_lite_as_default_model(tmp_path):
    tasks = write_task(tmp_path / "tasks")
    results = tmp_path / "results"
    # no gen_length: lm-eval's default generation length (256), shortened to what fits the members' context
    done = tie_lite("lm-eval", "--tasks", "tie_arith", "--include_path", str(tasks), "--limit", "2",
                    "--model_args", "members=tiny-sp+tiny-bpe,answer_length=8,score=tcc", "--output_path", str(results))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tie_arith" in done.stdout and "exact_match" in done.stdout
    written = json.loads(next(results.rglob("results_*.json")).read_text())
    assert written["config"]["model"] == "tie-lite"
    assert 0.0 <= written["results"]["tie_arith"]["exact_match,answer"] <= 1.0
    assert written["n-samples"]["tie_arith"]["effective"] == 2


def test_log_likelihood_tasks_are_refused_in_one_line(tmp_path):
    tasks = write_task(tmp_path / "tasks", name="tie_choice", output_type="multiple_choice")
    done = tie_lite("lm-eval", "--tasks", "tie_choice", "--include_path", str(tasks), "--limit", "1")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("tie-lite: error")]
    assert len(errors) == 1 and "log-likelihood" in errors[0] and "generate_until" in errors[0]


def test_lm_eval_arguments_pass_through():
    from tie_lite.faces.lm_eval_command import lm_eval_argv

    assert lm_eval_argv(["--tasks", "gsm8k"]) == ["run", "--model", "tie-lite", "--tasks", "gsm8k"]
    assert lm_eval_argv(["run", "--model", "hf", "--tasks", "x"]) == ["run", "--model", "hf", "--tasks", "x"]
    assert lm_eval_argv(["ls", "tasks"]) == ["ls", "tasks"]


def test_unknown_model_argument_is_named():
    from tie_lite.errors import UserError
    from tie_lite.faces.lm_eval_model import TieLiteLM

    with pytest.raises(UserError, match="colour"):
        TieLiteLM(members="tiny-sp", colour="blue")
