"""The chat (tie_lite/faces/chat/app.py), `tie-lite chat` and the Spaces build, driven the way people and scripts use them:
the app is launched in-process and called through gradio_client; the Space runs as its own process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tie_lite.runtime.registry import DEFAULT_ENSEMBLE, models_dir

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "What is (23+41)*7?"
MASK = "░"

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# gradio's own queue code trips pandas 3 deprecation warnings; they are not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword is deprecated")


# --- fixtures (test_browser.py imports these) ----------------------------------------------------------


def slow_forwards(monkeypatch, ensemble, seconds: float) -> None:
    """The shipped members finish a reply in ~0.2 s: slow each forward so the streamed frames (coalesced
    50 ms apart) and the browser can see the canvas mid-denoising."""
    import time

    for member in ensemble.members:  # every forward goes through Member.forward (cached or not)
        fast = member.forward
        monkeypatch.setattr(member, "forward", lambda request, fast=fast: (time.sleep(seconds), fast(request))[1])



def _members_complete(folder: Path) -> bool:
    return all((folder / m / "config.json").is_file() and (folder / m / "model.safetensors").is_file()
               for m in DEFAULT_ENSEMBLE)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """A frozen copy of the shipped members (the originals may be rewritten while they train), pointed to by
    $TIE_LITE_MODELS for the session; where none exist yet, one-step members from scripts/train_tiny.py."""
    from tie_lite.runtime.loading import load_member

    src, dest = models_dir(), tmp_path_factory.mktemp("models")
    old = os.environ.get("TIE_LITE_MODELS")
    os.environ["TIE_LITE_MODELS"] = str(dest)
    try:
        if _members_complete(src):
            for attempt in range(6):  # a checkpoint caught mid-write fails to load: copy again
                for m in DEFAULT_ENSEMBLE:
                    shutil.rmtree(dest / m, ignore_errors=True)
                    shutil.copytree(src / m, dest / m, ignore=shutil.ignore_patterns("*.log"))
                try:
                    for m in DEFAULT_ENSEMBLE:
                        load_member(m)
                    break
                except Exception:
                    if attempt == 5:
                        raise
                    time.sleep(2)
        else:
            for m in DEFAULT_ENSEMBLE:
                subprocess.run([sys.executable, str(ROOT / "scripts" / "train_tiny.py"), "--member", m, "--steps",
                                "1", "--batch", "4", "--out", str(dest / m)], check=True, capture_output=True)
        yield dest
    finally:
        if old is None:
            os.environ.pop("TIE_LITE_MODELS", None)
        else:
            os.environ["TIE_LITE_MODELS"] = old


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(**kwargs):
    """Build the app on the default members (or `defaults.load`) and serve it on a free local port; (demo, url)."""
    from tie_lite.faces.chat.app import build_app, launch_app
    from tie_lite.runtime.session import Ensemble, LoadSettings

    load = kwargs["defaults"].load if "defaults" in kwargs else LoadSettings()
    demo = build_app(Ensemble(load), **kwargs)
    port = free_port()
    launch_app(demo, port=port, prevent_thread_lock=True, quiet=True)
    return demo, f"http://127.0.0.1:{port}/"


@pytest.fixture(scope="module")
def served(tiny_models):
    demo, url = launch()
    yield demo, url
    demo.close()


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client

    return Client(served[1], verbose=False)


def cli_generate(capsys, *args) -> dict:
    """`tie-lite generate ... --json`, in-process (same command, without a second interpreter)."""
    from tie_lite.faces.cli import main

    capsys.readouterr()
    assert main(["generate", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def wait_for(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def readable(message: str) -> None:
    assert message and len(message.splitlines()) == 1, message
    assert "Traceback" not in message and 'File "' not in message, message


# --- the API through gradio_client -----------------------------------------------------------------------


def test_chat_streams_the_canvas_and_ends_with_the_cli_answer(client, served, capsys, monkeypatch):
    slow_forwards(monkeypatch, served[0].tie_cache.ensemble, 0.01)
    job = client.submit(PROMPT, None, {"steps": 24}, api_name="/chat")
    text = job.result(timeout=300)
    outputs = job.outputs()
    partial = [o for o in outputs if MASK in o]
    assert len(set(partial)) >= 3, outputs  # the canvas fills in step by step
    assert outputs[-1] == text and MASK not in text
    masks = [o.count(MASK) for o in partial]
    assert masks[0] > masks[-1]  # fewer masked positions as it goes

    cli = cli_generate(capsys, PROMPT, "--steps", "24")
    assert text == cli["text"]
    assert "Answer:" in text and cli["answer"] is not None and text.rstrip().endswith(cli["answer"])


def test_history_is_sent_as_earlier_turns(client, served):
    first = client.predict("What is 37+85?", api_name="/chat")
    history = [{"role": "user", "content": "What is 37+85?"}, {"role": "assistant", "content": first}]
    second = client.predict(PROMPT, history, api_name="/chat")
    ensemble, defaults = served[0].tie_cache.ensemble, served[0].tie_defaults  # the chat's own defaults
    expected = ensemble.run(history + [{"role": "user", "content": PROMPT}], defaults.decode, defaults.tie).text
    assert second == expected
    # [user, bot] pairs (the older Gradio format) mean the same
    assert client.predict(PROMPT, [["What is 37+85?", first]], api_name="/chat") == expected


def test_a_follow_up_is_answered_for_itself(client):
    """The shipped members were trained on single questions: a follow-up gets its own answer, not the earlier
    one copied (the chat and the API read the conversation the same way)."""
    first = client.predict(PROMPT, api_name="/chat")
    assert first.endswith(f"Answer: {(23 + 41) * 7}")
    history = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": first}]
    second = client.predict("What is 37+85?", history, api_name="/chat")
    assert second.endswith(f"Answer: {37 + 85}")
    assert second == client.predict("What is 37+85?", api_name="/chat")


@pytest.mark.parametrize("settings, says", [
    ({"gen_length": 50}, "not a multiple of"),
    ({"steps": 7}, "must be a multiple of the number of blocks"),
    ({"select": "verify", "models": ["tiny-sp"]}, "at least two"),
    ({"unmask": "sideways"}, "unknown --unmask"),
    ({"temperature": "hot"}, "temperature 'hot' is not a number"),
    ({"select": "best-model", "select_model": "nobody"}, "best-model needs a member name"),
    ({"beam_width": 4}, "unknown setting 'beam_width'"),
    ({"edit_threshold": 0.9, "edit_steps": 10**9}, "edit-steps must be in 0..256"),
])
def test_bad_settings_return_a_readable_error(client, settings, says):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as info:
        client.predict(PROMPT, None, settings, api_name="/chat")
    readable(str(info.value))
    assert says in str(info.value)


def test_off_task_messages_get_a_plain_answer_and_arithmetic_in_any_wording_is_decoded(client, served):
    engine = served[0].tie_cache.engine()
    forwards = engine.forwards
    for prose in ("hello!", "Tell me a story about 3 cats"):
        reply = client.predict(prose, api_name="/chat")
        assert "only do arithmetic" in reply and "What is (23+41)*7?" in reply
    assert engine.forwards == forwards  # nothing was decoded for them
    assert "Answer:" in client.predict("what's 37 plus 85", None, {"steps": 24}, api_name="/chat")


def test_off_task_reply_only_for_the_tiny_arithmetic_members(tmp_path):
    from tie_lite.faces.client_settings import off_task_reply
    from tie_lite.runtime.session import LoadSettings

    assert off_task_reply(LoadSettings(), "hi there") is not None
    assert off_task_reply(LoadSettings(), "What is 8 + 5?") is None
    assert off_task_reply(LoadSettings(models=("GSAI-ML/LLaDA-8B-Instruct",)), "hi there") is None


def test_a_message_no_context_holds_is_refused_by_its_length(client, served):
    from gradio_client.exceptions import AppError

    engine = served[0].tie_cache.engine()
    forwards = engine.forwards
    with pytest.raises(AppError) as info:
        client.predict("What is 37+85? " + "9" * 300_000, api_name="/chat")
    readable(str(info.value))
    assert "300,015 characters" in str(info.value) and "shorten it" in str(info.value)
    assert engine.forwards == forwards


def test_an_empty_message_is_refused(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="empty"):
        client.predict("   ", api_name="/chat")


def test_stop_cancels_a_running_generation(client, served):
    from gradio_client.exceptions import AppError

    runner = served[0].tie_runner
    long = {"gen_length": 192, "block_size": 16}  # 192 steps a member: far longer than the test waits
    job = client.submit(PROMPT, None, long, api_name="/chat")
    wait_for(lambda: any(MASK in o for o in job.outputs()), 120, "the first canvas")
    client.predict(api_name="/stop")
    with pytest.raises(AppError, match="stopped"):
        job.result(timeout=60)
    assert runner.last_phase == "stopped" and not runner.running
    assert runner.last_forwards < 192

    # a client that drops its job (gradio_client's cancel) stops the engine as well
    job = client.submit(PROMPT, None, long, api_name="/chat")
    wait_for(lambda: any(MASK in o for o in job.outputs()), 120, "the first canvas")
    job.cancel()
    wait_for(lambda: not runner.running, 60, "the engine to stop after cancel")
    assert runner.last_phase == "stopped" and runner.last_forwards < 192
    # and the next request runs normally
    assert "Answer:" in client.predict(PROMPT, None, {"steps": 24}, api_name="/chat")


def test_models_load_once_and_a_subset_of_members_reloads_nothing(client, served):
    cache = served[0].tie_cache
    ensemble, loads = cache.ensemble, cache.loads
    client.predict(PROMPT, None, {"steps": 24, "seed": 3, "score": "top1"}, api_name="/chat")
    assert cache.ensemble is ensemble and cache.loads == loads  # decoding settings: same members
    single = client.predict(PROMPT, None, {"models": ["tiny-sp"], "steps": 24}, api_name="/chat")
    assert "Answer:" in single and cache.ensemble is ensemble and cache.loads == loads
    assert single == cli_generate_text(["--model", "tiny-sp", "--steps", "24"])
    client.predict(PROMPT, None, {"steps": 24}, api_name="/chat")
    assert cache.ensemble is ensemble and cache.loads == loads


def cli_generate_text(args) -> str:
    import contextlib
    import io

    from tie_lite.faces.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["generate", PROMPT, *args, "--json"]) == 0
    return json.loads(out.getvalue())["text"]


def test_clients_cannot_load_what_the_operator_did_not_name(tiny_models, tmp_path):
    """A chat started with --trust-remote-code still runs only its own members: a client naming a folder
    whose remote code would run (or a hub id, or another quantization) gets one line that says nothing
    about the server's files, and nothing loads."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from tie_lite.checks import shown
    from tie_lite.faces.chat.app import Defaults
    from tie_lite.runtime.session import LoadSettings

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "config.json").write_text(json.dumps({"model_type": "evil", "architectures": ["Evil"],
                                                  "auto_map": {"AutoConfig": "evil.EvilConfig",
                                                               "AutoModel": "evil.Evil"}}))
    (evil / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    demo, url = launch(defaults=Defaults(load=LoadSettings(trust_remote_code=True)))
    try:
        client = Client(url, verbose=False)
        loads = demo.tie_cache.loads
        for name in (str(evil), "/etc", "/no/such/folder", "GSAI-ML/LLaDA-8B-Instruct"):  # existing or not: same line
            with pytest.raises(AppError) as err:
                client.predict(PROMPT, None, {"models": [name]}, api_name="/chat")
            assert str(err.value) == f"unknown member '{shown(name)}'; this server runs tiny-sp, tiny-bpe"
        for settings, says in [({"models": ["tiny-sp", "tiny-sp"]}, "once"), ({"quant": "4bit"}, "cannot be changed"),
                               ({"backend": "quanto"}, "cannot be changed")]:
            with pytest.raises(AppError, match=says):
                client.predict(PROMPT, None, settings, api_name="/chat")
        assert not marker.exists() and demo.tie_cache.loads == loads
        assert "Answer:" in client.predict(PROMPT, None, {"models": ["tiny-bpe"], "steps": 24}, api_name="/chat")
    finally:
        demo.close()


# --- pieces, without a server ----------------------------------------------------------------------------


def test_settings_panel_values_parse_and_describe():
    from tie_lite.errors import UserError
    from tie_lite.faces.chat.app import Defaults, describe, parse_settings

    values = Defaults().values() | {"gen_length": 64.0, "steps": 0, "free": True, "select": "most-selected"}
    load, decode, tie = parse_settings(values)
    assert load.models == DEFAULT_ENSEMBLE and decode.gen_length == 64 and decode.steps is None
    assert decode.answer_length is None and tie.select == "most-selected"
    assert describe(decode, tie, 2).startswith("✓ 64 positions in 4 blocks of 16")
    for bad, says in [({"block_size": 2.5}, "block size 2.5 is not a whole number"), ({"gen_length": " "}, "empty"),
                      ({"models": []}, "at least one member"), ({"quant": "3bit"}, "cannot be changed")]:
        with pytest.raises(UserError, match=says):
            parse_settings(Defaults().values() | bad)
    assert parse_settings({"models": ["tiny-bpe"]})[0].models == ("tiny-bpe",)
    with pytest.raises(UserError, match="unknown member '/etc'; this server runs tiny-sp, tiny-bpe"):
        parse_settings({"models": ["/etc"]})


def test_the_settings_panel_sets_token_editing_and_says_what_is_wrong_in_its_own_words():
    """The panel's edit threshold and edit steps (the CLI's --edit-threshold, --edit-steps): empty is no editing, a
    value is described under the panel, a bad one is named by its label, as the panel's other settings are."""
    from tie_lite.faces.chat.app import SETTING_KEYS, build_app

    demo = build_app()  # nothing loads until a message comes
    check = next(f for f in demo.fns.values() if [getattr(o, "elem_id", None) for o in f.outputs] == ["tie-check"])
    labels = {c.label for c in check.inputs}
    assert {"edit threshold", "edit steps"} <= labels
    start = demo.tie_defaults.values()
    assert start["edit_threshold"] is None  # the CLI's default: no editing

    def line(**changes) -> str:
        return check.fn(*[changes.get(k, start[k]) for k in SETTING_KEYS], "")

    assert line().startswith("✓") and "editing" not in line()
    assert "token editing above 0.9, at most 4 more passes a block" in line(edit_threshold=0.9, edit_steps=4)
    assert line(edit_threshold=1.5) == "⚠ edit threshold must be in [0, 1)"
    assert line(edit_threshold=0.9, edit_steps=-1).startswith("⚠ edit steps must be in 0..256")
    assert line(edit_threshold=0.9, edit_steps=10**9).startswith("⚠ edit steps must be in 0..256")


def test_history_formats_and_stopped_turns():
    from tie_lite.faces.chat.app import STOPPED, history_messages

    gradio_style = [
        {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}], "metadata": None},
        {"role": "assistant", "content": [{"type": "text", "text": "2+2=4\nAnswer: 4"}]},
        {"role": "user", "content": "What is 64*7?"},
        {"role": "assistant", "content": f"{STOPPED}\n[tiny-sp · round 1 · step 3]\n4░░"},
    ]
    assert history_messages(gradio_style, "And 3+3?") == [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "2+2=4\nAnswer: 4"},
        {"role": "user", "content": "And 3+3?"},
    ]


def test_chat_command_binds_locally_unless_told(tiny_models, monkeypatch):
    import tie_lite.faces.chat.app
    from tie_lite.faces.cli import main

    calls = []
    monkeypatch.setattr(tie_lite.faces.chat.app, "serve", lambda demo, **kw: calls.append((demo, kw)))
    assert main(["chat"]) == 0
    demo, kw = calls[-1]
    assert kw == {"host": "127.0.0.1", "port": None, "share": False, "auth": None}
    assert demo.tie_cache.ensemble is not None  # loaded before the server starts, reused by every request
    assert main(["chat", "--host", "0.0.0.0", "--port", "8123", "--share", "--score", "verify",
                 "--gen-length", "32", "--login", "me:secret"]) == 0
    demo, kw = calls[-1]
    assert kw == {"host": "0.0.0.0", "port": 8123, "share": True, "auth": ("me", "secret")}
    assert demo.tie_defaults.tie.score == "verify" and demo.tie_defaults.decode.gen_length == 32
    assert main(["chat", "--gen-length", "50"]) == 2  # bad defaults: one line, exit 2, no server


def test_concurrent_chat_users_are_decoded_together(client, served):
    """Users no longer wait for each other: their generations share the batched engine's forwards, and each
    gets the answer it would get alone."""
    from tie_lite.faces.chat.app import MAX_BATCH

    demo = served[0]
    generation = [fn for fn in demo.fns.values() if fn.concurrency_id == "generation"]
    assert generation and all(fn.concurrency_limit == MAX_BATCH for fn in generation)
    assert any(fn.api_name == "chat" for fn in generation)
    stop = [fn for fn in demo.fns.values() if fn.api_name == "stop"]
    assert stop and stop[0].concurrency_limit is None  # Stop is never queued behind the generation
    assert demo.share is False and demo.server_name == "127.0.0.1"
    prompts = [PROMPT, "What is (15+62)*3?", "What is (31+27)*4?"]  # one canvas length: they stack
    alone = [client.predict(p, None, {"steps": 48, "gen_length": 48}, api_name="/chat") for p in prompts]
    engine = demo.tie_cache.engine()
    forwards, batched = engine.forwards, engine.batched
    jobs = [client.submit(p, None, {"steps": 48, "gen_length": 48}, api_name="/chat") for p in prompts]
    assert [job.result(timeout=120) for job in jobs] == alone
    assert engine.batched - batched > engine.forwards - forwards  # some forwards served several users


# --- the Space -----------------------------------------------------------------------------------------

FAKE_SPACES = '''import functools, os
def GPU(fn=None, **kw):
    if fn is None:
        return lambda f: GPU(f, **kw)
    @functools.wraps(fn)
    def wrapper(*a, **k):
        open(os.environ["FAKE_SPACES_MARK"], "a").write(fn.__name__ + "\\n")
        yield from fn(*a, **k)
    return wrapper
'''


def wait_for_space(proc, port: int) -> None:
    """Until the Space's process listens on `port`; its output in the failure if it exits first."""
    def up():
        if proc.poll() is not None:
            raise AssertionError(f"the Space exited: {proc.stdout.read()}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0
    wait_for(up, 300, "the Space to listen")


def test_built_space_imports_and_launches(tiny_models, tmp_path):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    out = tmp_path / "space"
    build = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_space.py"), str(out)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    readme = (out / "README.md").read_text()
    front = readme.split("---")[1]
    for line in ("sdk: gradio", "app_file: app.py", "python_version:", "sdk_version:"):
        assert line in front
    requirements = (out / "requirements.txt").read_text().splitlines()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in requirements  # the CPU build, not CUDA's
    assert any(r.startswith("torch==") and r.endswith("+cpu") for r in requirements)
    assert all("==" in r for r in requirements if not r.startswith("--"))  # every dependency pinned
    assert not any(r.startswith("gradio") for r in requirements)
    for m in DEFAULT_ENSEMBLE:
        assert (out / "models" / m / "model.safetensors").is_file()
    assert (out / "tie_lite" / "runtime" / "session.py").is_file() and (out / "tie_lite" / "faces" / "chat" / "app.py").is_file()

    fake = tmp_path / "fake_site"  # the `spaces` package as Spaces has it: the app must wrap its handlers
    fake.mkdir()
    (fake / "spaces.py").write_text(FAKE_SPACES)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("TIE_LITE_MODELS", "PYTHONPATH")}
    env |= {"PYTHONPATH": str(fake), "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
            "FAKE_SPACES_MARK": str(tmp_path / "gpu_calls"), "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=out, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_space(proc, port)
        space = Client(f"http://127.0.0.1:{port}/", verbose=False)
        text = space.predict(PROMPT, api_name="/chat")
        assert "Answer:" in text and MASK not in text
        with pytest.raises(AppError, match="unknown member .dream-7b-instruct.; this server runs"):  # a public demo loads nothing else
            space.predict(PROMPT, None, {"models": ["tiny-sp", "dream-7b-instruct"]}, api_name="/chat")
        assert "chat" in (tmp_path / "gpu_calls").read_text().split()  # spaces.GPU wrapped the handler
    finally:
        proc.terminate()
        try:
            log, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            log, _ = proc.communicate()
    assert f"from {out.resolve() / 'models'}" in log  # the Space's own copy of the package and models
    assert "(spaces.GPU)" in log


def test_the_space_installs_from_its_own_requirements_and_answers(tiny_models, tmp_path):
    """As Spaces do: a fresh virtualenv gets the Space's requirements.txt plus the gradio of its front matter, and
    nothing else; the app starts from there and answers a question. A CPU Space installs no quantization library."""
    from gradio_client import Client

    out = tmp_path / "space"
    build = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_space.py"), str(out)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    requirements = (out / "requirements.txt").read_text()
    assert "bitsandbytes" not in requirements and "accelerate" not in requirements
    assert "--hardware gpu" in (out / "README.md").read_text()  # how to switch to GPU hardware
    gradio_version = next(line.split(":", 1)[1].strip() for line in (out / "README.md").read_text().splitlines()
                          if line.startswith("sdk_version:"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--retries", "1", "--timeout", "30",
                              "-r", str(out / "requirements.txt"), f"gradio=={gradio_version}"],
                             capture_output=True, text=True, timeout=1800)
    assert install.returncode == 0, install.stderr[-3000:]
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
                            check=True).stdout.lower()
    assert "bitsandbytes" not in listed and "\ntorch==" in "\n" + listed

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("TIE_LITE_MODELS", "PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([str(python), "app.py"], cwd=out, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_space(proc, port)
        text = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(PROMPT, api_name="/chat")
        assert text.endswith(f"Answer: {(23 + 41) * 7}")
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
