"""The command line: JSON output a script can rely on, and one-line errors with exit 2 for bad input."""

import json
import subprocess
import sys

import pytest


def tie_lite(*args, env=None):
    import os

    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "tie_lite.faces.cli", *args], capture_output=True, text=True,
                          env=full_env, stdin=subprocess.DEVNULL, timeout=300)


def test_generate_json_single_member():
    out = tie_lite("generate", "What is (23+41)*7?", "--model", "tiny-sp", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)  # nothing but the JSON on stdout
    assert data["members"] == ["tiny-sp"]
    assert "Answer:" in data["text"] and data["answer"] == data["text"].rsplit("Answer:", 1)[1].strip()
    assert data["steps"] > 0
    assert data["timings"]["total_s"] >= data["timings"]["load_s"] > 0
    assert data["memory"]["peak_bytes"] > 0


def test_generate_json_ensemble_reports_rounds():
    out = tie_lite("generate", "What is 23*4+17*5?", "--json", "--score", "verify")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["members"] == ["tiny-sp", "tiny-bpe"]
    assert data["final_member"] in data["members"]
    assert len(data["rounds"]) == 4 and all(set(r["scores"]) == set(data["members"]) for r in data["rounds"])
    assert data["leader_changes"] == sum(a["leader"] != b["leader"] for a, b in zip(data["rounds"], data["rounds"][1:]))


def test_generate_plain_output():
    out = tie_lite("generate", "What is 37+85?", "--model", "tiny-bpe")
    assert out.returncode == 0, out.stderr
    assert "Answer:" in out.stdout
    assert "forward passes" in out.stderr


@pytest.mark.parametrize(
    "args,needle",
    [
        (["generate", "   "], "prompt is empty"),
        (["generate", "hi", "--gen-length", "50", "--block-size", "16"], "multiple of --block-size"),
        (["generate", "hi", "--gen-length", "48", "--block-size", "16", "--steps", "10"], "--steps"),
        (["generate", "What is 2+3? " + "x" * 400], "context"),
        (["generate", "hi", "--model", "/nonexistent/model/dir"], "neither a known name"),
        (["generate", "hi", "--model", "tests"], "not a model folder"),
        (["generate", "hi", "--quant", "3bit"], "--quant"),
        (["generate", "hi", "--quant", "4bit", "--quant-backend", "nope"], "--quant-backend"),
        (["generate", "hi", "--gen-length", "abc"], "not a whole number"),
        (["generate", "hi", "--temperature", "warm"], "not a number"),
        (["generate", "hi", "--unmask", "sideways"], "--unmask"),
        (["generate", "hi", "--device", "cuda"], "CUDA"),
        (["generate", "hi", "--interval", "0"], "--interval"),
        (["generate", "hi", "--score", "vibes"], "--score"),
        (["generate", "hi", "--select", "loudest"], "--select"),
        (["generate", "hi", "--model", "tiny-sp", "--score", "verify"], "at least two"),
        (["generate", "What is 2+3?", "--gen-length", "16", "--answer-length", "16"], "no room"),
        (["generate", "hi"], "only do arithmetic"),  # what the shipped members cannot answer (faces/client_settings)
        (["eval", "--task", "nope"], "unknown task"),
        (["eval", "--task", "sum-product", "--model", "tiny-sp", "--methods", "tie"], "at least two"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, needle, capsys):
    from tie_lite.faces.cli import main

    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert needle.lower() in lines[0].lower()
    assert "Traceback" not in err


def test_bad_input_through_the_real_entry_point():
    out = tie_lite("generate", "hi", "--gen-length", "50")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_models_lists_the_shipped_defaults():
    out = tie_lite("models")
    assert out.returncode == 0
    assert "tiny-sp" in out.stdout and "(default)" in out.stdout


def test_the_light_copies_of_engine_facts_match_the_engine():
    """--help must not import the engine, so the CLI keeps its own copies of a few facts: they must not drift."""
    from tie_lite.faces import cli, plan
    from tie_lite.runtime import plan as runtime_plan
    from tie_lite.tasks import TASKS

    assert cli.EXAMPLES == tuple(ex for t in TASKS.values() for ex in t.examples)
    assert plan.DEFAULT_PROMPT_LENGTH == runtime_plan.DEFAULT_PROMPT_LENGTH
