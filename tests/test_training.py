"""The training data that makes the shipped members differ by stage (scripts/train_tiny.py)."""

import importlib.util
import random
from pathlib import Path

import pytest

from tie_lite.tasks import TASKS

spec = importlib.util.spec_from_file_location("train_tiny", Path(__file__).parents[1] / "scripts" / "train_tiny.py")
train_tiny = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_tiny)


@pytest.fixture(scope="module")
def sp_tokenizer():
    return train_tiny.sp_tokenizer(train_tiny.task_texts(0))


def test_a_given_first_stage_is_written_in_and_never_masked(sp_tokenizer):
    """tiny-sp practises the sum of two products it reads from its own steps: there the products are
    given (real operands, not maskable), and the sum, the answer and the padding stay maskable."""
    tok = sp_tokenizer
    data = train_tiny.Examples(tok, train_tiny.MEMBERS["tiny-sp"]["mix"], seed=0)
    data.rng = random.Random(3)
    task = TASKS["product-sum"]
    draws = [data.problem(task) for _ in range(400)]
    given = [p for p, g in draws if g]
    assert 0.25 < len(given) / len(draws) < 0.5  # half of the two-stage problems, one-stage ones aside
    assert all(p.stages == ("products", "sum") and "*1+" not in p.prompt for p in given)
    assert not any(g for p, g in (data.problem(TASKS["sum-product"]) for _ in range(200)))  # its own first stage

    seen = 0
    for _ in range(30):
        ids, maskable = data.batch(16)
        for row, can_mask in zip(ids.tolist(), maskable.tolist()):
            fixed = tok.decode([t for t, m in zip(row, can_mask) if not m]).replace(" ", "")
            products = fixed.split("Bot:", 1)[1].split("Answer:")[0]
            if not products:
                continue  # nothing given in this row
            seen += 1
            steps = products.rstrip(";").split(";")
            assert len(steps) == 2 and all("*" in s for s in steps) and products.endswith(";"), products
            p, q = (s.rsplit("=", 1)[1] for s in steps)
            generated = tok.decode([t for t, m in zip(row, can_mask) if m]).replace(" ", "")
            assert generated.startswith(f"{p}+{q}={int(p) + int(q)}"), generated  # the member's own stage
    assert seen > 20


def test_training_goes_on_from_a_checkpoint_with_its_tokenizer(tmp_path):
    """How the shipped members learned varied phrasing: a run on the templates, then one more from it."""
    import json
    import subprocess
    import sys

    from tie_lite.runtime.loading import load_member

    script = [sys.executable, str(Path(__file__).parents[1] / "scripts" / "train_tiny.py"), "--member", "tiny-bpe",
              "--batch", "4"]
    first, second = tmp_path / "first", tmp_path / "second"
    subprocess.run(script + ["--steps", "1", "--out", str(first)], check=True, capture_output=True)
    subprocess.run(script + ["--steps", "2", "--init", str(first), "--phrasing", "varied", "--seed", "1",
                             "--out", str(second)], check=True, capture_output=True)
    assert (second / "tokenizer.json").read_text() == (first / "tokenizer.json").read_text()
    meta = json.loads((second / "training.json").read_text())
    assert (meta["phrasing"], meta["steps"], meta["init"]["steps"]) == ("varied", 2, 1)
    member = load_member(str(second))
    assert member.model.config.shift_logits  # still a tiny-bpe member
    wrong = subprocess.run(script[:-3] + ["tiny-sp", "--init", str(first), "--out", str(tmp_path / "x")],
                           capture_output=True, text=True)
    assert wrong.returncode != 0 and "not a tiny-sp checkpoint" in wrong.stderr
