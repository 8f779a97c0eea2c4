"""Task generators, checkers and the eval command."""

import json
import re

import pytest

from tie_lite.tasks import EVAL_SEED, TASKS, VALIDATION_SEED, get_task, parse_answer
from tie_lite.tasks.arithmetic import product_step


@pytest.mark.parametrize("name", list(TASKS))
def test_generators_are_seeded_and_gold_solutions_check(name):
    task = TASKS[name]
    a, b = task.generate(50, 7), task.generate(50, 7)
    assert a == b
    assert a != task.generate(50, 8)
    for p in a:
        check = task.check(p, f"{p.reasoning}\nAnswer: {p.answer}")
        assert check.correct and all(check.stages.values()), p


@pytest.mark.parametrize("name", list(TASKS))
def test_one_stage_cases_and_phrasings_are_generated(name):
    problems = TASKS[name].generate(400, 3)
    assert {len(p.stages) for p in problems} == {1, 2}
    assert len({p.prompt.split(" ")[0] for p in problems}) >= 4  # several phrasings


@pytest.mark.parametrize("name", list(TASKS))
def test_held_out_phrasings_ask_the_same_problems_in_templates_training_never_uses(name):
    from tie_lite.tasks.phrasing import (
        HELD_OUT_TEMPLATES,
        TRAINING_TEMPLATES,
        find_expression,
    )

    task = TASKS[name]
    train, held = task.generate(300, EVAL_SEED), task.generate(300, EVAL_SEED, phrasing="held-out")
    assert [p.prompt for p in train] == [p.prompt for p in task.generate(300, EVAL_SEED, phrasing="templates")]
    assert [p.reasoning for p in train] == [p.reasoning for p in held]  # only the wording differs
    stems = [t.replace("{e}", "").strip(" .?!").lower() for t in HELD_OUT_TEMPLATES]
    training_prompts = [p.prompt.lower() for p in task.generate(3000, 11, phrasing="varied")]  # what training draws
    for stem in stems:
        assert not any(stem in q for q in training_prompts), stem
    assert not set(HELD_OUT_TEMPLATES) & set(TRAINING_TEMPLATES)
    for p in train + held:  # every prompt still asks for its expression, however it is worded
        expr = find_expression(p.prompt)
        gold = p.reasoning.split(";")[-1].split("=")[0] if len(p.stages) == 1 else None
        assert expr is not None, p.prompt
        if gold is not None:
            assert expr == gold, (p.prompt, expr)


def test_prompts_vary_as_people_type():
    prompts = [p.prompt for t in TASKS.values() for p in t.generate(500, 5, {"one_digit": 0.2}, phrasing="varied")]
    assert any(" + " in q for q in prompts) and any("+" in q and " + " not in q for q in prompts)  # spaces or not
    assert any("plus" in q for q in prompts) and any("times" in q or "multiplied by" in q for q in prompts)
    assert any(q == q.lower() for q in prompts) and any(not q.rstrip().endswith(("?", ".")) for q in prompts)
    assert any(re.search(r"(?<!\d)\d(?!\d)", q) for q in prompts)  # one-digit operands


def test_the_issues_phrasings_are_understood_as_arithmetic():
    from tie_lite.tasks.phrasing import find_expression

    asked = {"What is 8 + 5?": "8+5", "what's 37 plus 85?": "37+85", "Calculate 48 + 39": "48+39",
             "How much is 64+29": "64+29", "(23 plus 41) times 7": "(23+41)*7", "12 x 4 + 7 x 3": "12*4+7*3",
             "add 5 and 9": "5+9", "multiply 64 by 7": "64*7"}
    for prompt, expr in asked.items():
        assert find_expression(prompt) == expr, prompt
    for prose in ("hello", "Tell me a story about 3 cats", "how are you today?", "what is love"):
        assert find_expression(prose) is None, prose


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
    from tie_lite.faces.cli import main

    out, plot = tmp_path / "trace.jsonl", tmp_path / "acc.png"
    code = main(["eval", "--task", "product-sum", "--n", "3", "--problem-seed", "5", "--json", "--out", str(out),
                 "--plot", str(plot), "--methods", "tiny-sp,tiny-bpe,postgen,tie,oracle-relay,oracle-pick"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["task"] == "product-sum" and data["n"] == 3 and data["problem_seed"] == 5
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
    from tie_lite.faces.cli import main

    assert main(["eval", "--list-tasks"]) == 0
    assert capsys.readouterr().out.split() == list(TASKS)


def test_eval_compares_round_scores_in_one_run(capsys):
    """`--score tcc,verify` turns `tie` into one row per score; the members run once."""
    from tie_lite.faces.cli import main

    code = main(["eval", "--task", "sum-product", "--n", "2", "--problem-seed", "5", "--json", "--score", "tcc,verify",
                 "--methods", "tiny-sp,tie"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert list(data["results"]) == ["tiny-sp", "tie:tcc", "tie:verify"]


def test_eval_rejects_an_unknown_score_in_a_list(capsys):
    from tie_lite.faces.cli import main

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
