"""Bad input, generated: flag values, prompts, chat settings and damaged checkpoint folders thrown at the
CLI and the chat's parser. Whatever comes in, the answer is exit 0, or exit 2 with one line on stderr —
never a traceback, an internal error or a hang (pytest-timeout's limit in pyproject.toml ends a hang; no
test here bounds a time, which a loaded machine would break)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tie_lite.runtime.registry import models_dir

try:
    from test_ui import tiny_models  # noqa: F401  (a fixture: a frozen copy of the shipped members)
except ImportError:
    from .test_ui import tiny_models  # noqa: F401

COUNTS: dict[str, list[int]] = {}  # strategy -> [inputs tried, clean, exit 0]; printed at the end of the session


def run_cli(argv: list[str], kind: str) -> tuple[int, str, str]:
    """`tie-lite ARGV` in-process; asserts the contract and returns (code, stdout, stderr)."""
    from tie_lite.faces.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
            code = exc.code if isinstance(exc.code, int) else 2
    tally = COUNTS.setdefault(kind, [0, 0, 0])
    tally[0] += 1
    tally[2] += code == 0
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    assert "Traceback" not in err.getvalue() + out.getvalue(), (argv, err.getvalue())
    assert code in (0, 2), (argv, code, err.getvalue())
    if code == 2:
        assert len(lines) == 1, (argv, lines)
    tally[1] += 1
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="session", autouse=True)
def report_counts():
    yield
    if COUNTS:
        print("\nbad-input property tests (inputs tried / clean / accepted with exit 0): "
              + ", ".join(f"{k} {n}/{ok}/{zero}" for k, (n, ok, zero) in sorted(COUNTS.items())))


# --- values a careless or hostile user types ---------------------------------------------------------

garbage = st.one_of(
    st.text(max_size=12),
    st.binary(max_size=8).map(os.fsdecode),  # invalid UTF-8 on the command line arrives as lone surrogates
    st.sampled_from(["nan", "inf", "-inf", "1e999", "-1", "0", "-0", "99999999999999999999999", "0x10", "1.5",
                     " 3", "", "--", "\udcff", "10GiB", "1e-9", "2**64", str(2**64), str(2**63)]),
)


def small_int(lo: int, hi: int):
    return st.integers(lo, hi).map(str)


FLAGS = {
    "--gen-length": st.one_of(garbage, st.sampled_from(["16", "32", "48", "10000000", str(1 << 40)])),
    "--block-size": st.one_of(garbage, st.sampled_from(["8", "16", "5", str(1 << 40)])),
    "--steps": st.one_of(garbage, small_int(1, 64)),
    "--temperature": st.one_of(garbage, st.sampled_from(["0", "0.7", "1e308"])),
    "--unmask": st.one_of(garbage, st.sampled_from(["low_confidence", "threshold", "topk", "margin", "entropy",
                                                    "random"])),
    "--threshold": st.one_of(garbage, st.sampled_from(["0.5", "0.9", "1", "2"])),
    "--topk": st.one_of(garbage, small_int(-2, 5)),
    "--seed": st.one_of(garbage, st.sampled_from(["0", "7", str(2**64 - 1), str(2**64), "-5"])),
    "--answer-length": st.one_of(garbage, small_int(0, 12)),
    "--interval": st.one_of(garbage, small_int(0, 40)),
    "--score": st.one_of(garbage, st.sampled_from(["tcc", "top1", "entropy", "margin", "verify", "oracle", "tcc,verify"])),
    "--select": st.one_of(garbage, st.sampled_from(["lowest-tcc", "verify", "most-selected", "best-model",
                                                    "best-model tiny-sp", "best-model nobody", "lowest-tcc extra"])),
    "--schedule": st.one_of(garbage, st.sampled_from(["blocks", "dream"])),
    "--eps": st.one_of(garbage, st.sampled_from(["0.001", "0", "1", "0.5"])),
    "--dtype": st.one_of(garbage, st.sampled_from(["auto", "float32", "bfloat16", "float16"])),
    "--quant": st.one_of(garbage, st.sampled_from(["none", "8bit", "4bit"])),
    "--quant-backend": st.one_of(garbage, st.sampled_from(["bitsandbytes", "quanto"])),
    "--device": st.one_of(garbage, st.sampled_from(["cpu", "cuda", "auto", "mps"])),
    "--max-memory": st.one_of(garbage, st.sampled_from(["1GiB", "600MB", "1B", "1e400GiB", "9" * 30 + "GiB"])),
    "--model": st.one_of(garbage, st.sampled_from(["tiny-sp", "tiny-bpe", "/etc", "/nonexistent", "org/missing",
                                                   "llada-8b-instruct", "."])),
}
SWITCHES = ["--free", "--json", "--trust-remote-code", "--allow-pickle"]


@st.composite
def flag_lists(draw, flags: dict):
    chosen = draw(st.lists(st.sampled_from(sorted(flags)), max_size=4, unique=True))
    argv = []
    for flag in chosen:
        value = draw(flags[flag])
        argv += [flag, *value.split(" ")] if flag == "--select" else [flag, value]
    argv += draw(st.lists(st.sampled_from(SWITCHES), max_size=2, unique=True))
    return argv


prompts = st.one_of(st.text(max_size=40), st.binary(max_size=20).map(os.fsdecode),
                    st.sampled_from(["What is (23+41)*7?", "", "   ", "\x00", "a\udc80b", "What is 64*7?"]))
FAST = ["--gen-length", "16", "--block-size", "16"]  # valid draws decode quickly; drawn flags come after


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(prompt=prompts, flags=flag_lists(FLAGS))
def test_generate_flags_and_prompts(tiny_models, prompt, flags):
    code, out, _ = run_cli(["generate", prompt, *FAST, *flags], "generate")
    if code == 0 and "--json" in flags:
        json.loads(out)  # --json prints one JSON object and nothing else


PLAN_FLAGS = {k: v for k, v in FLAGS.items() if k in ("--model", "--quant", "--quant-backend", "--device",
                                                        "--max-memory", "--gen-length", "--score", "--select")}
PLAN_FLAGS["--prompt-length"] = st.one_of(garbage, small_int(-3, 100))


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(flags=flag_lists(PLAN_FLAGS))
def test_plan_flags(tiny_models, flags):
    run_cli(["plan", *flags], "plan")


EVAL_FLAGS = {k: v for k, v in FLAGS.items() if k in ("--score", "--select", "--interval", "--temperature")}
EVAL_FLAGS.update({"--task": st.one_of(garbage, st.sampled_from(["sum-product", "product-sum"])),
                   "--n": st.one_of(garbage, small_int(-1, 2), st.just(str(10**9))),
                   "--methods": st.one_of(garbage, st.sampled_from(["tiny-sp", "postgen", "tie:verify", "nobody"])),
                   "--out": st.sampled_from(["/nonexistent/x.jsonl", "trace.txt", "OUT/trace.jsonl", "OUT"]),
                   "--plot": st.sampled_from(["plot.bmp", "/nonexistent/p.png", "OUT/plot.png"])})


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(flags=flag_lists(EVAL_FLAGS))
def test_eval_flags_fail_before_the_evaluation(tiny_models, tmp_path_factory, flags):
    out = tmp_path_factory.mktemp("eval")
    flags = [f.replace("OUT", str(out)) for f in flags]
    run_cli(["eval", "--n", "1", *FAST, *flags], "eval")


# --- the chat's settings and history, as any client can send them -------------------------------------

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10),
              st.sampled_from(["tiny-sp", "/etc", "org/model", "verify", "best-model", "4bit", "quanto", "\udcff"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6,
)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(values=st.dictionaries(st.one_of(st.sampled_from(
    ["models", "quant", "backend", "gen_length", "block_size", "steps", "unmask", "threshold", "topk",
     "answer_length", "free", "interval", "score", "select", "select_model", "temperature", "seed", "schedule",
     "eps", "cache"]),
    st.text(max_size=6)), json_values, max_size=6), history=json_values, message=st.one_of(prompts, json_values))
def test_chat_settings_history_and_message(values, history, message):
    from tie_lite.checks import check_text
    from tie_lite.errors import UserError
    from tie_lite.faces.chat.app import Defaults, history_messages, parse_settings

    tally = COUNTS.setdefault("chat settings", [0, 0, 0])
    tally[0] += 1
    for call in (lambda: parse_settings(values, Defaults()), lambda: history_messages(history, "hi"),
                 lambda: check_text(message, "the message")):
        try:
            call()
        except UserError as exc:
            assert str(exc).strip() and "\n" not in str(exc)
    try:  # whatever was accepted names only the operator's members at its quantization
        load, _, _ = parse_settings(values, Defaults())
        assert set(load.models) <= set(Defaults().load.models) and load.quant == "none"
        tally[2] += 1
    except UserError:
        pass
    tally[1] += 1


# --- damaged checkpoint folders ----------------------------------------------------------------------

config_values = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**12), st.floats(allow_nan=True),
                          st.text(max_size=6), st.lists(st.integers(0, 5), max_size=3), st.just({}))


@st.composite
def damaged(draw):
    """(config bytes, safetensors bytes) of the shipped tiny-sp, one or both damaged."""
    src = models_dir() / "tiny-sp"
    config = json.loads((src / "config.json").read_text())
    weights = (src / "model.safetensors").read_bytes()
    how = draw(st.sampled_from(["field", "drop", "bytes", "json-type", "truncate", "header", "empty", "flip"]))
    raw = json.dumps(config).encode()
    if how == "field":
        config[draw(st.sampled_from(sorted(config)))] = draw(config_values)
        raw = json.dumps(config, allow_nan=True).encode()
    elif how == "drop":
        config.pop(draw(st.sampled_from(sorted(config))))
        raw = json.dumps(config).encode()
    elif how == "bytes":
        raw = draw(st.binary(max_size=40))
    elif how == "json-type":
        raw = json.dumps(draw(st.one_of(st.lists(st.integers(), max_size=3), st.integers(), st.text(max_size=5)))).encode()
    elif how == "truncate":
        weights = weights[: draw(st.integers(0, len(weights) - 1))]
    elif how == "header":
        n = int.from_bytes(weights[:8], "little")
        header = json.loads(weights[8:8 + n])
        key = draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
        header[key][field] = draw(config_values)
        body = json.dumps(header).encode()
        weights = len(body).to_bytes(8, "little") + body + weights[8 + n:]
    elif how == "empty":
        weights = b""
    else:  # flip bytes inside the header
        at = draw(st.integers(0, min(len(weights) - 1, 2000)))
        weights = weights[:at] + bytes([weights[at] ^ 0xFF]) + weights[at + 1:]
    return raw, weights


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(case=damaged(), budget=st.booleans())
def test_damaged_checkpoints(tiny_models, tmp_path_factory, case, budget):
    raw, weights = case
    folder = tmp_path_factory.mktemp("damaged") / "member"
    shutil.copytree(models_dir() / "tiny-sp", folder)
    (folder / "config.json").write_bytes(raw)
    (folder / "model.safetensors").write_bytes(weights)
    run_cli(["plan", "--model", str(folder)], "damaged plan")
    run_cli(["generate", "What is 2+3?", "--model", str(folder), *FAST] + (["--max-memory", "2GiB"] if budget else []),
            "damaged generate")


# --- the API server's request bodies -----------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(body=st.one_of(json_values, st.dictionaries(st.sampled_from(
    ["model", "messages", "max_tokens", "temperature", "seed", "stream", "n", "score", "select", "interval",
     "block_size", "steps", "models", "quant", "top_p", "unmask", "schedule"]), json_values, max_size=6)),
    model=st.sampled_from(["tie:tiny-sp+tiny-bpe", "tiny-sp", "nope", None]),
    content=st.one_of(prompts, json_values))
def test_serve_request_bodies(body, model, content):
    from tie_lite.faces.client_settings import Defaults
    from tie_lite.faces.openai_api import APIError, read_ask

    tally = COUNTS.setdefault("serve bodies", [0, 0, 0])
    tally[0] += 1
    if isinstance(body, dict) and model is not None:  # most bodies get a real model and a last user message
        body = {"model": model, "messages": [{"role": "user", "content": content}]} | body
    try:
        ask = read_ask("chat", body, Defaults())
        assert set(ask.load.models) <= set(Defaults().load.models)
        tally[2] += 1
    except APIError as exc:
        assert exc.status in (400, 404) and exc.message.strip() and "\n" not in exc.message
    tally[1] += 1
