"""Bad files, through the CLI as a user runs it (issue 45): data files that are not what their name says, lm-eval
tasks and model arguments that do not exist, a config.json with a context no model has, a missing or damaged
tokenizer. Each is exit 2 and exactly one line on stderr naming the file (the line, the field, the task or the
argument) — never an internal error, and no library's log line before ours."""

from __future__ import annotations

import gzip
import json
import logging
import random
import shutil

import pytest

from tie_lite.runtime.registry import models_dir

try:
    from test_ui import tiny_models  # noqa: F401  (a fixture: a frozen copy of the shipped members)
except ImportError:
    from .test_ui import tiny_models  # noqa: F401


def one_line(argv: list[str], capfd) -> str:
    """`tie-lite ARGV` in-process; everything written to the process's stderr (a library's logging handler or a
    warning as much as our own line) must be exactly one line, with exit 2. Returns that line."""
    from tie_lite.faces.cli import main

    capfd.readouterr()
    code = main(argv)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, (argv, code, err)
    assert lines[0].startswith("tie-lite: error: "), lines
    return lines[0]


def noise(n: int = 2000) -> bytes:
    """Random bytes (fixed seed) that are not UTF-8 from their first byte."""
    return b"\xff" + random.Random(45).randbytes(n)


# --- eval --data: files that are not what their name says ---------------------------------------------------------

GOOD = b'{"question": "What is 2+2?", "answer": "4"}\n'


def data_cases():
    """(file name, its bytes, words the one line must hold besides the file's path)."""
    return [
        ("noise.jsonl", noise(), ["line 1", "UTF-8"]),
        ("noise.csv", noise(), ["line 1", "UTF-8"]),
        ("noise.json", noise(), ["line 1", "UTF-8"]),
        ("noise.parquet", noise(), ["parquet"]),
        ("fake.jsonl.gz", GOOD, ["gzip", ".gz"]),  # named .gz, not compressed
        ("cut.jsonl.gz", gzip.compress(GOOD * 50)[:40], ["gzip"]),  # compressed, then cut short
        ("latin1.jsonl", GOOD + '{"question": "Größe?", "answer": "4"}\n'.encode("latin-1"), ["line 2", "UTF-8"]),
        ("latin1.csv", "question,answer\nWhat is 2+2?,4\nGröße?,5\n".encode("latin-1"), ["line 3", "UTF-8"]),
        # the readers log their failure ("Failed to read file ...") before ours: one line only
        ("fields.csv", b"question,answer\nWhat is 2+2?,4\nWhat is 3+3?,6,7,8\n", ["csv", "line 3"]),
        ("magic.parquet", b"PAR1" + random.Random(1).randbytes(64) + b"PAR1", ["parquet"]),
        ("text.json", b"What is 2+2? 4\n", ["json"]),
    ]


@pytest.mark.parametrize("name,raw,words", data_cases(), ids=[c[0] for c in data_cases()])
def test_unreadable_data_files_get_one_line_naming_file_and_line(tmp_path, capfd, name, raw, words):
    path = tmp_path / name
    path.write_bytes(raw)
    line = one_line(["eval", "--data", str(path)], capfd)
    assert str(path) in line, line
    for word in words:
        assert word in line, (word, line)


# --- lm-eval: unknown tasks and bad model arguments, before lm-eval indexes its tasks ---------------------------------


@pytest.fixture
def no_task_index(monkeypatch):
    """lm-eval's task index (half a minute and more to build) must not be reached: building it fails the test.
    lm-eval's logging, which its command sets up once per process on this test's captured stderr, is put back."""
    tasks = pytest.importorskip("lm_eval.tasks")
    import lm_eval.utils

    def refuse(*args, **kwargs):
        raise AssertionError("lm-eval indexed its tasks before the bad input was refused")

    monkeypatch.setattr(tasks.TaskManager, "__init__", refuse)
    logger = logging.getLogger("lm_eval")
    for name in ("handlers", "propagate", "level"):
        monkeypatch.setattr(logger, name, list(logger.handlers) if name == "handlers" else getattr(logger, name))
    monkeypatch.setattr(lm_eval.utils, "_LOGGING_CONFIGURED", getattr(lm_eval.utils, "_LOGGING_CONFIGURED", False),
                        raising=False)


@pytest.mark.parametrize("tasks,unknown", [("no_such_task", "no_such_task"), ("gsm8k,gsm8k_typo", "gsm8k_typo")])
def test_unknown_lm_eval_task_is_one_line_before_the_task_index(tiny_models, no_task_index, capfd, tasks, unknown):
    # --limit: lm-eval would log a warning as it reads its settings; the check comes before that too
    line = one_line(["lm-eval", "--tasks", tasks, "--limit", "1"], capfd)
    assert f"'{unknown}'" in line and "tie-lite lm-eval ls tasks" in line, line
    assert "gsm8k," not in line  # the known task is not named unknown


def test_old_task_listing_spelling_says_how_to_list(tiny_models, no_task_index, capfd):
    line = one_line(["lm-eval", "--tasks", "list"], capfd)
    assert "tie-lite lm-eval ls tasks" in line, line


@pytest.mark.parametrize("model_args,words", [
    ("interval=abc", ["interval=abc", "whole number"]),
    ("colour=blue", ["colour", "members=A+B"]),
    ("members=no-such-model", ["no-such-model"]),
    ("members=tiny-sp,trust_remote_code=maybe", ["trust_remote_code=maybe"]),
    ("members=tiny-sp,gen_length=1e9x", ["gen_length=1e9x"]),
])
def test_bad_model_args_are_one_line_before_the_task_index(tiny_models, no_task_index, capfd, model_args, words):
    line = one_line(["lm-eval", "--tasks", "gsm8k", "--limit", "1", "--model_args", model_args], capfd)
    for word in words:
        assert word in line, (word, line)


# --- config.json: a context no model has --------------------------------------------------------------------------


def member_copy(tmp_path, **changes):
    """The shipped tiny-sp in a folder of its own, with config.json fields set (None: removed)."""
    folder = tmp_path / "member"
    shutil.copytree(models_dir() / "tiny-sp", folder)
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        config.pop(key) if value is None else config.__setitem__(key, value)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("field,value,words", [
    ("max_position_embeddings", 10**12, ["1000000000000", "beyond any known model", "1048576"]),
    ("max_position_embeddings", 2**20 + 1, ["1048577", "beyond any known model"]),
    ("max_sequence_length", 10**12, ["beyond any known model"]),  # LLaDA's name for it (and its rotary table's)
    ("n_positions", 10**15, ["beyond any known model"]),
    ("max_position_embeddings", -4096, ["-4096", "positive whole number"]),
    ("max_position_embeddings", 4096.5, ["4096.5", "positive whole number"]),
    ("max_position_embeddings", "4096", ['"4096"', "positive whole number"]),
])
def test_config_context_beyond_any_model_is_one_line(tiny_models, tmp_path, capfd, field, value, words):
    folder = member_copy(tmp_path, **{field: value})
    line = one_line(["generate", "What is 37+85?", "--model", str(folder), "--gen-length", "16"], capfd)
    assert "config.json" in line and field in line, line
    for word in words:
        assert word in line, (word, line)


def test_config_context_at_the_bound_still_loads(tiny_models, tmp_path, capfd):
    from tie_lite.faces.cli import main

    folder = member_copy(tmp_path, max_position_embeddings=2**20)
    assert main(["generate", "What is 37+85?", "--model", str(folder), "--gen-length", "16"]) == 0


# --- the tokenizer: missing or damaged files ----------------------------------------------------------------------


def damage(path, how: str) -> None:
    if how == "missing":
        path.unlink()
    elif how == "noise":
        path.write_bytes(noise(600))
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "list":
        path.write_text("[1, 2, 3]")
    elif how == "not-a-tokenizer":
        path.write_text('{"version": "1.0", "model": {"type": "NoSuchModel"}}')
    elif how == "bad-merge":
        path.write_text("#version: 0.2\nĠ t h e\n")


@pytest.mark.parametrize("file,how", [
    ("tokenizer.json", "missing"), ("tokenizer.json", "noise"), ("tokenizer.json", "truncated"),
    ("tokenizer.json", "empty"), ("tokenizer.json", "list"), ("tokenizer.json", "not-a-tokenizer"),
    ("tokenizer_config.json", "noise"), ("chat_template.jinja", "noise"),
])
def test_damaged_tokenizer_is_one_line_naming_the_file(tiny_models, tmp_path, capfd, file, how):
    folder = member_copy(tmp_path)
    damage(folder / file, how)
    line = one_line(["generate", "What is 37+85?", "--model", str(folder), "--gen-length", "16"], capfd)
    assert str(folder / file) in line and "copy the tokenizer files" in line, line


@pytest.fixture(scope="module")
def dream_folder(tmp_path_factory):
    """A tiny Dream checkpoint as the hub ships one: vocab.json + merges.txt, no tokenizer.json."""
    try:
        from real_checkpoints import build_dream
    except ImportError:
        from .real_checkpoints import build_dream
    return build_dream(tmp_path_factory.mktemp("dream")).path


@pytest.mark.parametrize("file,how", [("vocab.json", "missing"), ("merges.txt", "missing"), ("vocab.json", "noise"),
                                      ("merges.txt", "noise"), ("merges.txt", "bad-merge")])
def test_damaged_byte_level_tokenizer_is_one_line_naming_the_file(dream_folder, tmp_path, capfd, file, how):
    folder = tmp_path / "dream"
    shutil.copytree(dream_folder, folder)
    damage(folder / file, how)
    line = one_line(["generate", "What is 37+85?", "--model", str(folder), "--gen-length", "16"], capfd)
    assert str(folder / file) in line and "copy the tokenizer files" in line, line
