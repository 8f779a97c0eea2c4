"""Task generators, checkers and the eval command."""

import json
import random

import pytest

from tie_lite.tasks.arithmetic import product_step
from tie_lite.tasks import EVAL_SEED, TASKS, VALIDATION_SEED, get_task, parse_answer


@pytest.mark.parametrize("name", list(TASKS))
def test_generators_are_seeded_and_gold_solutions_check(name):
    task = TASKS[name]
    a, b = task.generate(50, 7), task.generate(50, 7)
    assert a == b
    assert a != task.generate(50, 8)
    for p in a:
        check = task.check(p, f"{p.reasoning}\nAnswer: {p.answer}")
        assert check.correct and all(check.stages.values()), p
        assert any(p.prompt == ph.format(e=p.prompt.split()[0]) or True for ph in task.phrasings)


@pytest.mark.parametrize("name", list(TASKS))
def test_one_stage_cases_and_phrasings_are_generated(name):
    problems = TASKS[name].generate(400, 3)
    assert {len(p.stages) for p in problems} == {1, 2}
    assert len({p.prompt.split(" ")[0] for p in problems}) >= 4  # several phrasings


def test_product_steps_are_written_as_tens_and_units():
    assert product_step(64, 7) == "64*7=420+28=448"
    task = TASKS["product-sum"]
    p = next(p for p in task.generate(50, 1) if len(p.stages) == 2)
    bad = p.reasoning.split(";")
    a, rest = bad[0].split("*")
    b = int(rest.split("=")[0])
    tens = (int(a) - int(a) % 10) * b
    bad[0] = f"{a}*{b}={tens + 10}+{int(a) % 10 * b}={int(a) * b}"  # a wrong partial product
    assert task.check(p, ";".join(bad) + f"\nAnswer: {p.answer}").stages["products"] is False


def test_checker_rejects_wrong_and_malformed_answers():
    task = TASKS["sum-product"]
    p = next(p for p in task.generate(50, 1) if len(p.stages) == 2)
    wrong = str(int(p.answer) + 1)
    assert not task.check(p, f"{p.reasoning}\nAnswer: {wrong}").correct
    assert not task.check(p, f"{p.reasoning}\nAnswer: {p.answer}abc").correct
    assert not task.check(p, f"{p.reasoning}\nAnswer:").correct
    assert not task.check(p, f"{p.reasoning} {p.answer}").correct  # no marker
    assert parse_answer("no marker here") is None


def test_checker_tells_which_stage_went_wrong():
    task = TASKS["sum-product"]
    p = next(p for p in task.generate(50, 1) if len(p.stages) == 2)
    first, second = p.reasoning.split(";")
    a_b, s = first.split("=")
    bad_sum = int(s) + 10
    factor = int(second.split("*")[1].split("=")[0])
    text = f"{a_b}={bad_sum};{product_step(bad_sum, factor)}\nAnswer: {bad_sum * factor}"
    check = task.check(p, text)
    assert check.stages == {"sum": False, "product": True} and not check.correct

    task = TASKS["product-sum"]
    p = next(p for p in task.generate(50, 1) if len(p.stages) == 2)
    e1, e2, _ = p.reasoning.split(";")
    x, y = int(e1.split("=")[-1]), int(e2.split("=")[-1])
    text = f"{e1};{e2};{x}+{y}={x + y + 1}\nAnswer: {x + y + 1}"
    assert task.check(p, text).stages == {"products": True, "sum": False}


def test_validation_and_evaluation_seeds_differ():
    assert VALIDATION_SEED != EVAL_SEED
    for task in TASKS.values():
        val = {p.reasoning for p in task.generate(300, VALIDATION_SEED) if len(p.stages) == 2}
        ev = {p.reasoning for p in task.generate(300, EVAL_SEED) if len(p.stages) == 2}
        assert len(val & ev) < 15  # the expression spaces hold ~10^4 problems: chance overlap only


def test_unknown_task_is_a_user_error():
    from tie_lite.errors import UserError

    with pytest.raises(UserError, match="list-tasks"):
        get_task("nope")


def test_eval_json_and_outputs(tmp_path, capsys):
    from tie_lite.cli import main

    out, plot = tmp_path / "trace.jsonl", tmp_path / "acc.png"
    code = main(["eval", "--task", "product-sum", "--n", "3", "--seed", "5", "--json", "--out", str(out),
                 "--plot", str(plot), "--methods", "tiny-sp,tiny-bpe,postgen,tie,oracle-relay,oracle-pick"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["task"] == "product-sum" and data["n"] == 3 and data["seed"] == 5
    assert set(data["results"]) == {"tiny-sp", "tiny-bpe", "postgen", "tie", "oracle-relay", "oracle-pick"}
    for r in data["results"].values():
        assert set(r) >= {"accuracy", "mean_steps", "seconds"}
    assert data["results"]["oracle-relay"]["bound"] and not data["results"]["tie"]["bound"]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 18 and {"prompt", "output", "answer", "correct"} <= set(lines[0])
    assert plot.stat().st_size > 1000
    # oracle-pick is correct whenever some member alone is
    by = {}
    for line in lines:
        by.setdefault(line["prompt"], {})[line["method"]] = line["correct"]
    for res in by.values():
        if res["tiny-sp"] or res["tiny-bpe"]:
            assert res["oracle-pick"]


def test_list_tasks(capsys):
    from tie_lite.cli import main

    assert main(["eval", "--list-tasks"]) == 0
    assert capsys.readouterr().out.split() == list(TASKS)


def test_eval_compares_round_scores_in_one_run(capsys):
    """`--score tcc,verify` turns `tie` into one row per score; the members run once."""
    from tie_lite.cli import main

    code = main(["eval", "--task", "sum-product", "--n", "2", "--seed", "5", "--json", "--score", "tcc,verify",
                 "--methods", "tiny-sp,tie"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert list(data["results"]) == ["tiny-sp", "tie:tcc", "tie:verify"]


def test_eval_rejects_an_unknown_score_in_a_list(capsys):
    from tie_lite.cli import main

    code = main(["eval", "--task", "sum-product", "--n", "2", "--score", "tcc,bogus"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "bogus" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("name", sorted(TASKS))
def test_one_stage_mix_chooses_the_stage(name):
    """Training mixes can make a member practise one stage: one_stage_sum=1 gives plain sums only."""
    task = TASKS[name]
    sums = task.generate(200, 9, dict(one_stage=1.0, one_stage_sum=1.0))
    products = task.generate(200, 9, dict(one_stage=1.0, one_stage_sum=0.0))
    assert {p.stages for p in sums} == {("sum",)}
    assert {p.stages for p in products} == {("products",) if name == "product-sum" else ("product",)}
