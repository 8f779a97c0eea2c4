"""scripts/bench.py at tiny sizes: the figures have the structure the docs and CI read, and the reference
loop produces the engine's output token for token. No timing is asserted anywhere."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench", module)
    spec.loader.exec_module(module)
    return module


bench = _load_bench()
quiet = lambda *a, **k: None  # noqa: E731


@pytest.fixture(scope="module")
def ensemble():
    from tie_lite.runtime.session import Ensemble, LoadSettings

    return Ensemble(LoadSettings(models=bench.SHIPPED))


@pytest.fixture(scope="module")
def decode():
    from tie_lite.engine.sampler import DecodeSettings

    return DecodeSettings(gen_length=32, block_size=16)


@pytest.fixture(scope="module")
def prompts():
    return bench.task_prompts("sum-product", 2)


@pytest.mark.parametrize("name", bench.SHIPPED)
@pytest.mark.parametrize("gen_length,block_size", [(32, 16), (48, 8)])
def test_reference_loop_matches_engine_token_for_token(ensemble, prompts, name, gen_length, block_size):
    from tie_lite.engine.sampler import DecodeSettings

    index = [m.name for m in ensemble.scheduler.loaded].index(name)
    member = ensemble.scheduler.loaded[index]
    settings = DecodeSettings(gen_length=gen_length, block_size=block_size, answer_length=None)
    for messages in prompts:
        ids, result = bench.engine_ids(ensemble, index, messages, settings)
        ref_ids, ref_text, forwards = bench.reference_decode(member, messages, gen_length, block_size)
        assert torch.equal(ids, ref_ids)
        assert result.text == ref_text
        assert result.steps == forwards == gen_length
        assert not (ref_ids == member.mask_id).any()


def test_engine_and_tie_sections(ensemble, prompts, decode):
    engine = bench.engine_overhead(ensemble, prompts[:1], decode, repeats=1, log=quiet)
    assert engine["identical"] is True
    assert set(engine["members"]) == set(bench.SHIPPED)
    for row in engine["members"].values():
        assert row["engine"]["ratio"] > 0 and row["engine"]["pairs"] == 1
        assert set(row["ms_per_forward"]) == {"engine", "trajectory", "reference"}

    tie = bench.tie_overhead(ensemble, prompts[:1], decode, repeats=1, scores=("tcc", "top1", "verify"), log=quiet)
    assert tie["members"] == 2
    assert tie["tie_vs_singles"]["ratio"] > 0
    assert tie["top1_vs_tcc"]["ratio"] > 0 and tie["verify_vs_tcc"]["ratio"] > 0
    fw = tie["forwards_per_prompt"]
    # a confidence score forwards every trajectory through every member each round; verify reads what each
    # judge's first step of the round computed (a round is one block here), and tcc adds nothing
    assert fw["tie:top1"] > fw["tie:tcc"] and fw["tie:verify"] == fw["tie:tcc"]
    assert {k for k in fw if k.startswith("single:")} == {"single:tiny-sp#0", "single:tiny-bpe#1"}

    data = {"sections": {"engine": engine, "tie": tie}}
    figures = bench.headline(data["sections"])
    for key in ("engine_overhead_ratio", "tie_overhead_ratio", "crossmodel_overhead_ratio", "verify_overhead_ratio"):
        assert isinstance(figures[key], float)


def test_acceleration_section(ensemble, decode):
    acc = bench.acceleration(ensemble, "sum-product", 4, decode, log=quiet)
    assert set(acc["policies"]) == {"low_confidence", "threshold", "topk"}
    assert acc["headline_method"] == "tie"
    low, thr, topk = (acc["policies"][p] for p in ("low_confidence", "threshold", "topk"))
    for method in ("tiny-sp", "tiny-bpe", "tie"):
        assert 0 <= low[method]["accuracy"] <= 100
        assert thr[method]["forwards"] <= low[method]["forwards"]
        assert topk[method]["forward_reduction"] >= 1
        assert "accuracy_delta" in thr[method]
    figures = bench.headline({"acceleration": acc})
    assert figures["threshold_forward_reduction"] >= 1


def test_memory_section_runs_every_strategy(prompts, decode):
    mem = bench.memory_section(bench.SHIPPED, prompts[:1], decode, repeats=1, requests=1, threads=1, log=quiet)
    runs = mem["strategies"]
    assert set(runs) == {"resident", "swap", "offload"}
    assert runs["resident"]["strategy"] == "resident"
    assert runs["swap"]["strategy"] == "swap" and runs["swap"]["swaps_per_request"] >= 1
    assert runs["swap"]["budget_bytes"] < mem["weights_bytes"] + mem["working_bytes"]
    for name in ("swap", "offload"):
        assert runs[name]["same_output_as_resident"] is True
        assert runs[name]["vs_resident"] > 0 and runs[name]["vs_resident_fresh_process"] > 0
        assert runs[name]["interleaved"]["pairs"] == 1
    assert bench.headline({"memory": mem})["swap_vs_resident_ratio"] > 0
    assert "| swap |" in "\n".join(bench.memory_markdown(mem))


def test_growth_section_and_plot(tmp_path, prompts):
    g = bench.growth(bench.SHIPPED, (32, 64), (1, 2), prompts, repeats=1, log=quiet)
    assert set(g["lengths"]) == set(bench.SHIPPED)
    assert all(set(row) == {32, 64} for row in g["lengths"].values())
    assert set(g["members"]) == {1, 2} and g["members"][2]["forwards"] > g["members"][1]["forwards"]
    path = tmp_path / "growth.png"
    bench.plot_growth(json.loads(json.dumps(g)), str(path))  # as read back from the JSON (string keys)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_long_context_copy_keeps_the_model(tmp_path):
    from tie_lite.runtime.loading import load_member

    src = load_member("tiny-sp")
    trained = src.max_length
    path = bench.long_context_copy("tiny-sp", trained + 40, tmp_path)
    copy = load_member(path)
    assert copy.max_length == trained + 40
    ids = torch.tensor([[5, 6, 7, src.mask_id, src.mask_id]])
    assert torch.equal(copy.logits(ids), src.logits(ids))  # the same model on the trained context
    assert bench.long_context_copy("tiny-sp", 16, tmp_path) == "tiny-sp"


def test_reports_from_json(tmp_path):
    data = {
        "engine_overhead_ratio": 1.2, "engine_identical_output": True, "tie_overhead_ratio": 0.98,
        "crossmodel_overhead_ratio": 1.1, "verify_overhead_ratio": 1.1, "threshold_forward_reduction": 3.0,
        "threshold_accuracy_delta": -2.0, "swap_vs_resident_ratio": 1.02,
        "machine": bench.machine_info(torch.device("cpu")),
        "settings": {"quick": True, "command": "python scripts/bench.py --quick", "models_dir": "models/"},
        "sections": {}, "seconds": 1.0,
    }
    rows = {what: status for what, _, _, status in bench.goal_rows(data)}
    assert list(rows.values()) == ["MISSED", "met", "met", "MISSED", "met"]
    text = bench.table(data)
    assert "MISSED" in text and "machine:" in text
    block = bench.markdown(data)
    assert "python scripts/bench.py --quick" in block and "| figure | value | goal |" in block
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\nintro\n\n<!-- bench:quick-cpu:begin -->\nold\n<!-- bench:quick-cpu:end -->\n\nafter\n")
    assert bench.doc_key(data) == "quick-cpu"
    bench.write_doc(str(doc), block, "quick-cpu")
    bench.write_doc(str(doc), block, "quick-cpu")  # idempotent: the block is replaced, not appended
    text = doc.read_text()
    assert text.count("<!-- bench:quick-cpu:begin -->") == 1 and "\nold\n" not in text
    assert text.startswith("# Benchmarks\n\nintro") and text.rstrip().endswith("after")
    bench.write_doc(str(doc), block, "full-cuda")  # a new kind of run gets its own section
    assert "## Figures (full-cuda)" in doc.read_text()
