"""The command line as a Unix tool, driven as a user's shell drives it: real pipes, descriptors and signals.

Output is never lost quietly (a closed pipe ends quietly, a full disk or a closed stdout is a one-line error),
prompts come from standard input or a JSON Lines file, eval writes item by item and resumes after SIGTERM to
the figures of an uninterrupted run, progress shows without a terminal, the thread count is the process's
CPUs, and help and argument errors never import torch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROMPT = "What is 37+85?"
CLI = [sys.executable, "-m", "tie_lite.faces.cli"]


def env(**extra) -> dict:
    return dict(os.environ) | {"TIE_LITE_PROGRESS_SECONDS": "30"} | extra


def tie_lite(*args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, extra_env=None, input=None, **kw):
    return subprocess.run([*CLI, *args], stdin=None if input is not None else stdin, stdout=stdout,
                          stderr=subprocess.PIPE, input=input, env=env(**(extra_env or {})), timeout=600, **kw)


def err_lines(done) -> list[str]:
    text = done.stderr if isinstance(done.stderr, str) else done.stderr.decode()
    return [line for line in text.splitlines() if line.strip()]


# --- output never lost ----------------------------------------------------------------------------------


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """The pipe's reading end is closed before tie-lite writes: the write meets EPIPE, as `| head` causes."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = tie_lite("generate", PROMPT, "--model", "tiny-sp", stdout=write)
    finally:
        os.close(write)
    assert done.returncode == 128 + signal.SIGPIPE and done.stderr == b""


def test_head_in_a_shell_pipeline_sees_no_message():
    line = " ".join(map(repr, [*CLI, "generate", PROMPT, "--model", "tiny-sp", "--json"]))
    done = subprocess.run(["bash", "-c", f"{line} | head -c 10; echo \" ${{PIPESTATUS[0]}}\""],
                          capture_output=True, text=True, env=env(), timeout=600)
    text, status = done.stdout.rsplit(" ", 1)
    assert text == "{\n  \"text\"" and int(status) in (0, 128 + signal.SIGPIPE)
    assert done.stderr == ""


def test_a_full_disk_is_one_line_naming_standard_output():
    with open("/dev/full", "w") as full:
        done = tie_lite("generate", PROMPT, "--model", "tiny-sp", stdout=full, text=True)
    assert done.returncode == 1
    assert err_lines(done) == [line for line in err_lines(done) if line.startswith("tie-lite: error:")]
    assert len(err_lines(done)) == 1 and "standard output" in done.stderr and "No space left" in done.stderr


def test_a_closed_standard_output_is_an_error_not_success():
    line = " ".join(map(repr, [*CLI, "generate", PROMPT, "--model", "tiny-sp"]))
    done = subprocess.run(["bash", "-c", f"{line} >&-"], capture_output=True, text=True, env=env(), timeout=600)
    assert done.returncode == 1
    assert len(err_lines(done)) == 1 and "standard output is closed" in done.stderr


# --- prompts from standard input and from a file ------------------------------------------------------


def test_dash_reads_the_prompt_from_standard_input():
    piped = tie_lite("generate", "-", "--model", "tiny-sp", "--json", input=f"{PROMPT}\n", text=True)
    given = tie_lite("generate", PROMPT, "--model", "tiny-sp", "--json", text=True)
    assert piped.returncode == 0 == given.returncode, piped.stderr
    assert json.loads(piped.stdout)["text"] == json.loads(given.stdout)["text"]
    assert json.loads(piped.stdout)["answer"] == "122"


def test_prompts_file_answers_each_line_batched_as_one_prompt_alone(tmp_path):
    prompts = ["What is (23+41)*7?", "What is 64*7?", "What is 23*4+17*5?"]
    file = tmp_path / "questions.jsonl"
    file.write_text(json.dumps({"prompt": prompts[0], "id": "a"}) + "\n\n" +
                    "".join(json.dumps({"prompt": p}) + "\n" for p in prompts[1:]))
    done = tie_lite("generate", "--prompts", str(file), text=True)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["prompt"] for r in rows] == prompts and [r["line"] for r in rows] == [1, 3, 4]
    assert rows[0]["id"] == "a" and rows[0]["members"] == ["tiny-sp", "tiny-bpe"]
    for row in rows[::2]:  # the batched answer is the answer the prompt gets alone
        alone = json.loads(tie_lite("generate", row["prompt"], "--json", text=True).stdout)
        assert (row["text"], row["final_member"], row["rounds"]) == (alone["text"], alone["final_member"],
                                                                     alone["rounds"])


@pytest.mark.parametrize("content,says", [
    ('{"prompt": "What is 2+3?"}\n{"prompt": "What is 4+5?"\n', "line 2 is not JSON"),
    ('{"prompt": "What is 2+3?"}\n\n["What is 4+5?"]\n', "line 3 has no \"prompt\" text"),
    ('{"prompt": "   "}\n', "line 1: the prompt is empty"),
    ('{"prompt": "What is 2+3?"}\n{"prompt": "Hello there"}\n', "line 2: The members running here"),
    ("\n\n", "holds no prompt"),
])
def test_a_bad_prompts_line_is_one_line_naming_file_and_line(tmp_path, content, says):
    file = tmp_path / "bad.jsonl"
    file.write_text(content)
    done = tie_lite("generate", "--prompts", str(file), text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert len(err_lines(done)) == 1 and str(file) in done.stderr and says in done.stderr


# --- eval: item by item, SIGTERM, --resume, progress ---------------------------------------------------


EVAL = ["eval", "--task", "sum-product", "--n", "6", "--problem-seed", "1", "--methods", "tiny-sp,tiny-bpe,tie",
        "--json"]


def test_eval_resumes_after_sigterm_to_the_figures_of_an_uninterrupted_run(tmp_path):
    straight = tie_lite(*EVAL, "--out", str(tmp_path / "straight.jsonl"), text=True,
                        extra_env={"TIE_LITE_PROGRESS_SECONDS": "0"})
    assert straight.returncode == 0, straight.stderr
    expected = json.loads(straight.stdout)["results"]
    progress = [line for line in err_lines(straight) if line.startswith("eval:")]
    assert len(progress) == 18 and "18/18 problems" in progress[-1]  # a line per problem at 0 seconds apart
    assert all("problem/s" in line and "ETA" in line for line in progress)

    out = tmp_path / "resumed.jsonl"
    run = subprocess.Popen([*CLI, *EVAL, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL, text=True, env=env())
    while not (out.exists() and len(out.read_text().splitlines()) >= 6):  # the first method is written
        assert run.poll() is None, run.stderr.read()
        time.sleep(0.1)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=600)
    kept = out.read_text().splitlines()
    assert run.returncode == 128 + signal.SIGTERM, err
    assert "--resume" in err and len(err.strip().splitlines()) == 1
    assert 6 <= len(kept) < 18 and all(json.loads(line)["method"] for line in kept)  # whole lines only

    with open(out, "a") as f:  # a line cut short, as a kill -9 mid-write leaves it: dropped, decoded again
        f.write('{"method": "tie", "ind')
    resumed = tie_lite(*EVAL, "--out", str(out), "--resume", text=True)
    assert resumed.returncode == 0, resumed.stderr
    got = json.loads(resumed.stdout)["results"]
    for method in expected:
        expected[method].pop("seconds"), got[method].pop("seconds")
    assert got == expected
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["method"], r["index"]) for r in records) == sorted(
        (m, k) for m in ("tiny-sp", "tiny-bpe", "tie") for k in range(6))


def test_resume_refuses_the_records_of_another_run(tmp_path):
    out = tmp_path / "other.jsonl"
    first = tie_lite(*EVAL[:-3], "--methods", "tiny-sp", "--out", str(out), text=True)
    assert first.returncode == 0, first.stderr
    other = [a if a != "1" else "2" for a in EVAL[:-3]]  # another --problem-seed
    done = tie_lite(*other, "--methods", "tiny-sp", "--out", str(out), "--resume", text=True)
    assert done.returncode == 2 and len(err_lines(done)) == 1 and "line 1" in done.stderr
    assert "another task, seed" in done.stderr


def test_eval_seed_is_the_sampling_seed_and_the_problems_have_their_own_flag():
    done = tie_lite("eval", "--task", "sum-product", "--n", "2", "--seed", "1", text=True)
    assert done.returncode == 2 and len(err_lines(done)) == 1 and "--problem-seed" in done.stderr
    wrong = tie_lite("generate", PROMPT, "--problem-seed", "1", text=True)
    assert wrong.returncode == 2 and "--problem-seed" in wrong.stderr


def test_eval_takes_a_seed_at_temperature_0_when_a_member_samples_anyway(tmp_path):
    """A uniform-noise member (DiffusionGemma) starts from random tokens: its answers depend on the seed at any
    temperature, so eval --seed is its sampling seed, not a mistake."""
    from diffusion_gemma_checkpoint import build_diffusion_gemma

    folder = str(build_diffusion_gemma(tmp_path))
    runs = {}
    for seed in ("3", "4"):
        done = tie_lite("eval", "--task", "sum-product", "--n", "2", "--model", folder, "--seed", seed, "--json",
                        text=True)
        assert done.returncode == 0, done.stderr
        runs[seed] = done.stdout
    shipped = tie_lite("eval", "--task", "sum-product", "--n", "2", "--model", "tiny-sp", "--seed", "3", text=True)
    assert shipped.returncode == 2 and "for these members" in shipped.stderr


# --- threads ---------------------------------------------------------------------------------------------


def test_threads_default_to_the_cpus_this_process_may_use_and_show_in_plan():
    plain = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "TIE_LITE_THREADS")}
    one_cpu = sorted(os.sched_getaffinity(0))[:1]
    done = subprocess.run([*CLI, "plan", "--json"], capture_output=True, text=True, env=plain, timeout=600,
                          preexec_fn=lambda: os.sched_setaffinity(0, one_cpu))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["threads"] == {"count": 1, "from": "the CPUs this process may use"}
    both = subprocess.run([*CLI, "plan"], capture_output=True, text=True, env=plain | {"TIE_LITE_THREADS": "3"},
                          timeout=600)
    assert "threads: 3 torch CPU threads (TIE_LITE_THREADS" in both.stdout
    flag = tie_lite("plan", "--threads", "2", "--json", extra_env={"TIE_LITE_THREADS": "3"}, text=True)
    assert json.loads(flag.stdout)["threads"] == {"count": 2, "from": "--threads"}
    bad = tie_lite("plan", extra_env={"TIE_LITE_THREADS": "many"}, text=True)
    assert bad.returncode == 2 and "TIE_LITE_THREADS" in bad.stderr and len(err_lines(bad)) == 1


def test_generate_computes_with_the_threads_asked_for():
    done = tie_lite("generate", PROMPT, "--model", "tiny-sp", "--json", "--threads", "2", text=True)
    assert json.loads(done.stdout)["settings"]["threads"] == 2


# --- start-up: help and argument errors without torch ------------------------------------------------


@pytest.mark.parametrize("args", [["--help"], ["generate", "--help"], ["eval", "--help"], ["plan", "--help"],
                                  ["chat", "--help"], ["generate", "x", "--gen-length", "abc"], ["nonsense"],
                                  ["eval", "--n"]])
def test_help_and_argument_errors_never_import_torch(args):
    done = subprocess.run([sys.executable, "-X", "importtime", *CLI[1:], *args], capture_output=True, text=True,
                          env=env(), timeout=600)
    assert done.returncode in (0, 2)
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert imported and not {m for m in imported if m.split(".")[0] in ("torch", "transformers", "gradio", "fastapi")}
    assert (done.stdout if done.returncode == 0 else done.stderr).strip()


# --- what the shipped members cannot answer, and what loading says ------------------------------------


def test_generate_refuses_what_the_shipped_members_cannot_answer():
    done = tie_lite("generate", "Hello", text=True)
    assert done.returncode == 2 and len(err_lines(done)) == 1 and done.stdout == ""
    assert "only do arithmetic" in done.stderr and "--model GSAI-ML/LLaDA-8B-Instruct" in done.stderr


def test_plan_says_when_the_quanto_backend_is_missing(tmp_path):
    stub = tmp_path / "optimum"  # an optimum without quanto, ahead of the installed one
    (stub / "quanto").mkdir(parents=True)
    (stub / "__init__.py").write_text("")
    (stub / "quanto" / "__init__.py").write_text("raise ImportError('optimum-quanto is not installed')\n")
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    missing = tie_lite("plan", "--quant", "8bit", "--quant-backend", "quanto", extra_env={"PYTHONPATH": path},
                       text=True)
    assert missing.returncode == 2 and len(err_lines(missing)) == 1
    assert "optimum-quanto" in missing.stderr and "pip install 'tie-lite[quanto]'" in missing.stderr
    present = tie_lite("plan", "--quant", "8bit", "--quant-backend", "quanto", text=True)
    assert present.returncode == 0, present.stderr


def test_a_config_transformers_cannot_apply_is_one_line(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from real_checkpoints import build_llada

    folder = build_llada(tmp_path).path
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"num_attention_heads": 5}))
    done = tie_lite("generate", PROMPT, "--model", str(folder), text=True)
    assert done.returncode == 2 and len(err_lines(done)) == 1, done.stderr[:2000]
    assert "cannot load model" in done.stderr


def test_the_offline_hint_names_the_current_download_command():
    done = tie_lite("generate", PROMPT, "--model", "tie-lite-tests/not-there", extra_env={"HF_HUB_OFFLINE": "1"},
                    text=True)
    assert done.returncode == 2 and "`hf download tie-lite-tests/not-there`" in done.stderr


def test_the_api_refuses_what_the_shipped_members_cannot_answer():
    """`tie-lite serve` applies the chat's rule too: a greeting is a 400 saying what the members can do."""
    import socket
    import urllib.error
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([*CLI, "serve", "--port", str(port), "--model", "tiny-sp"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env())
    try:
        def ask(prompt):
            body = json.dumps({"model": "tiny-sp", "messages": [{"role": "user", "content": prompt}]}).encode()
            request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=300) as reply:
                    return reply.status, json.loads(reply.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        while True:  # until the server listens (it loads the member first)
            assert server.poll() is None, server.stderr.read().decode()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.2)
        status, body = ask("Hello")
        assert status == 400 and "only do arithmetic" in body["error"]["message"]
        status, body = ask(PROMPT)
        assert status == 200 and "Answer: 122" in body["choices"][0]["message"]["content"]
    finally:
        server.terminate()
        server.wait(timeout=60)
