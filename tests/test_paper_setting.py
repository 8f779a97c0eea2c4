"""The README's paper-setting commands (LLaDA-1.5 + Dream-7B-Instruct, greedy, 256 tokens, block 16, interval 16)
run end to end as written, on tiny LLaDA and Dream checkpoints with the real configs and on sample files in each
benchmark's published format: only the model names, the data path and the device are swapped."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from real_checkpoints import build_dream, build_llada
from test_data_eval import benchmark_files

README = Path(__file__).resolve().parents[1] / "README.md"


def paper_commands() -> dict[str, list[str]]:
    """{benchmark: argv} from the bash block under the README's paper-commands marker."""
    text = README.read_text()
    block = text.split("<!-- paper-commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = {}
    for line in block.splitlines():
        if line.startswith("tie-lite eval"):
            argv = shlex.split(line)[1:]
            commands[argv[argv.index("--benchmark") + 1]] = argv
    return commands


def test_the_readme_documents_one_paper_command_per_benchmark():
    commands = paper_commands()
    assert set(commands) == {"gsm8k", "math500", "arc-challenge", "humaneval"}
    for argv in commands.values():
        settings = dict(zip(argv, argv[1:]))
        assert settings["--gen-length"] == "256" and settings["--block-size"] == "16" and settings["--interval"] == "16"
        assert settings["--score"] == "tcc" and settings["--temperature"] == "0"
        # the paper's shared sampler, over the members' own recipes (Dream's is one whole-canvas schedule)
        assert settings["--schedule"] == "blocks" and settings["--unmask"] == "low_confidence"
        assert [v for k, v in zip(argv, argv[1:]) if k == "--model"] == ["llada-1.5", "dream-7b-instruct"]


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    llada = build_llada(root, name="LLaDA-1.5").path
    dream = build_dream(root, name="Dream-v0-Instruct-7B").path
    return {"llada-1.5": str(llada), "dream-7b-instruct": str(dream)}, benchmark_files(root)


@pytest.mark.parametrize("benchmark", ["gsm8k", "math500", "arc-challenge", "humaneval"])
def test_paper_command_runs_end_to_end_on_tiny_checkpoints(tiny_pair, benchmark):
    models, files = tiny_pair
    argv = paper_commands()[benchmark]
    swapped = []
    skip = False
    for k, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--device":  # the documented command says cuda; the tests run on the CPU
            skip = True
            continue
        previous = argv[k - 1] if k else ""
        swapped.append(models[arg] if previous == "--model" else str(files[benchmark]) if previous == "--data" else arg)
    # one item, TIE alone: on the CPU each method decodes 256 steps per member (the full table on a benchmark
    # file is test_data_eval's, on the shipped pair)
    extra = ["--n", "1", "--json", "--methods", "tie"]
    done = subprocess.run([sys.executable, "-m", "tie_lite.faces.cli", *swapped, *extra], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(done.stdout)
    assert data["n"] == 1 and data["settings"]["score"] == "tcc" and data["settings"]["cache"] == "none"
    assert set(data["results"]) == {"tie"}
    tie = data["results"]["tie"]
    assert tie["accuracy"] in (0.0, 100.0) and tie["mean_steps"] > 16  # 256 positions: many steps, not one block
