"""The sandbox that runs model-written code (tasks/sandbox.py): what it contains, in each of its two modes.

"namespaces": the strong containment, where the kernel lets an unprivileged process create namespaces (each
test that needs one says so when it skips); "session": the fallback (a session, a child subreaper on Linux,
limits), forced here. Each hostile program below succeeds, and so makes its test fail, when what the test checks
is not contained: they are bounded so that even then they do no harm.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tie_lite.tasks import sandbox
from tie_lite.tasks.sandbox import containment, run_tests

PROMPT = 'def add(a, b):\n    """Sum of a and b."""\n'
TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n"
NAMES = {"pid-namespace", "network-namespace", "read-only-root", "scratch-quota", "process-limit",
         "syscall-filter", "subreaper"}


def run(body: str, **limits) -> bool:
    return run_tests(PROMPT, body, TEST, "add", **limits)


def indent(code: str) -> str:
    return "".join(f"    {line}\n" for line in code.strip("\n").splitlines())


@pytest.fixture(params=["namespaces", "session"])
def active(request, monkeypatch) -> frozenset:
    """The mode under test, and what it contains on this machine (a trivial run reports it)."""
    monkeypatch.setattr(sandbox, "_contained", None)
    if request.param == "session":
        monkeypatch.setattr(sandbox, "_namespaces", False)
    found = containment()
    if request.param == "namespaces" and "pid-namespace" not in found:
        pytest.skip(f"the kernel here refuses unprivileged namespaces (contained by: {sorted(found) or 'limits'})")
    return found


def need(active: frozenset, *names: str) -> None:
    if not any(name in active for name in names):
        pytest.skip(f"needs {' or '.join(names)}; contained here by: {sorted(active) or 'the limits only'}")


def marked(marker: str) -> list[int]:
    """Processes whose command line holds marker (the program's source is its command line: `python -c`)."""
    found = []
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and marker.encode() in Path(f"/proc/{name}/cmdline").read_bytes():
                found.append(int(name))
        except OSError:
            continue
    return found


def gone(marker: str, within: float = 0.0) -> bool:
    end = time.monotonic() + within
    while marked(marker):
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def survivor(marker: str, path: Path, sleep: float) -> str:
    """Code that leaves a grandchild in a session of its own (setsid, double fork) which sleeps, then writes path."""
    return f"""
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep({sleep})  # {marker}
        try:
            open({str(path)!r}, "w").write("outlived the run")
        finally:
            os._exit(0)
    os._exit(0)
"""


def test_passing_and_failing_programs(active):
    assert run("    return a + b\n")
    assert not run("    return a - b\n")
    assert not run("    raise SystemExit(3)\n")
    assert set(active) <= NAMES


def test_the_wall_clock_ends_a_sleeping_program():
    start = time.monotonic()
    assert not run("    import time\n    time.sleep(60)\n    return a + b\n", time_limit=1)
    assert time.monotonic() - start < 1 + 5 + 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="scans /proc")
def test_setsid_and_double_fork_do_not_outlive_the_run(active, tmp_path):
    need(active, "pid-namespace", "subreaper")
    marker, late = uuid.uuid4().hex, tmp_path / "late.txt"
    assert run(indent(survivor(marker, late, 1.0)) + "    return a + b\n")  # the normal exit path
    assert gone(marker), "a process the program started outlived run_tests"
    time.sleep(1.5)
    assert not late.exists() and gone(marker)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="scans /proc")
def test_an_exception_in_the_evaluation_ends_the_program(active, tmp_path, monkeypatch):
    need(active, "pid-namespace", "subreaper")
    marker, late = uuid.uuid4().hex, tmp_path / "late.txt"
    real = sandbox._read
    calls = []

    def interrupted(fd, out, seconds):  # the first wait is interrupted once the program runs
        calls.append(1)
        if len(calls) == 1:
            end, started = time.monotonic() + 5, 4 if "pid-namespace" in active else 3  # the grandchild too
            while len(marked(marker)) < started and time.monotonic() < end:
                time.sleep(0.05)
            time.sleep(0.2)
            raise RuntimeError("interrupted")
        return real(fd, out, seconds)

    monkeypatch.setattr(sandbox, "_read", interrupted)
    body = indent(survivor(marker, late, 30) + "time.sleep(30)\n") + "    return a + b\n"
    with pytest.raises(RuntimeError, match="interrupted"):
        run(body)
    assert gone(marker, within=1.0), "the program or what it started outlived the evaluation"
    assert not late.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="scans /proc")
def test_a_killed_evaluation_takes_the_program_with_it(active, tmp_path):
    need(active, "pid-namespace")  # the fallback loses a setsid() grandchild when its supervisor is killed
    marker = uuid.uuid4().hex
    body = indent(survivor(marker, tmp_path / "late.txt", 30) + "time.sleep(30)\n") + "    return a + b\n"
    script = ("import importlib.util, sys\n"
              f"spec = importlib.util.spec_from_file_location('sandbox', {sandbox.__file__!r})\n"
              "module = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(module)\n"
              f"module.run_tests({PROMPT!r}, sys.argv[1], {TEST!r}, 'add', time_limit=60)\n")
    # its scratch folder, which a killed evaluation cannot remove, in tmp_path
    evaluation = subprocess.Popen([sys.executable, "-c", script, body], env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        end = time.monotonic() + 10
        while len(marked(marker)) < 5 and time.monotonic() < end:  # this, the supervisor, init, program, grandchild
            time.sleep(0.05)
        assert marked(marker), "the program did not start"
        time.sleep(0.3)
    finally:
        evaluation.send_signal(signal.SIGKILL)
        evaluation.wait()
    assert gone(marker, within=2.0), "the program or what it started outlived a killed evaluation"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="scans /proc")
def test_a_fork_bomb_is_contained(active):
    need(active, "process-limit")
    marker = uuid.uuid4().hex
    # A tree of at most 2**8 processes (bounded even if nothing stops it), each alive for a while, each failing
    # when a fork failed below it: the program passes only if all 256 ran at once.
    bomb = f"""
import os, time
try:  # as root, the real uid is nobody's, the effective root's: taking root's back would lift the limit
    os.setresuid(os.geteuid(), os.geteuid(), os.geteuid())
except OSError:
    pass
root, kids, failed = os.getpid(), [], False  # {marker}
for _ in range(8):
    try:
        pid = os.fork()
    except OSError:
        failed = True
        break
    if pid == 0:
        kids = []
    else:
        kids.append(pid)
time.sleep(0.5)
for pid in kids:
    failed |= os.waitpid(pid, 0)[1] != 0
if os.getpid() != root:
    os._exit(1 if failed else 0)
assert not failed
"""
    start = time.monotonic()
    assert not run(indent(bomb) + "    return a + b\n", time_limit=2)
    assert time.monotonic() - start < 2 + 5
    assert gone(marker)
    assert run("    return a + b\n")  # and the evaluation goes on


def test_no_write_outside_the_scratch(active, tmp_path):
    need(active, "read-only-root")
    escape, existing = tmp_path / "escape.txt", tmp_path / "existing.txt"
    existing.write_text("before")
    inside = 'open("inside.txt", "w").write("x")\nimport os\nos.makedirs("a/b")\n'
    assert run(indent(inside) + "    return a + b\n")  # the scratch is writable
    for path in (escape, existing):
        assert not run(indent(inside + f"open({str(path)!r}, 'a').write('x')\n") + "    return a + b\n")
    assert not escape.exists() and existing.read_text() == "before"
    for device in ("/dev/null", "/dev/zero", "/dev/urandom"):  # the harmless devices still work
        assert run(indent(f"open({device!r}, 'rb' if {device!r} != '/dev/null' else 'wb').close()")
                   + "    return a + b\n"), device


def test_the_scratch_has_a_total_quota(active):
    need(active, "scratch-quota")
    files = "for i in range({n}):\n    open(f'f{{i}}', 'wb').write(b'x' * (1 << 20))\n"  # 1 MiB each
    assert run(indent(files.format(n=8)) + "    return a + b\n")
    over = sandbox.SCRATCH_QUOTA // (1 << 20) + 16  # each file far below the per-file limit
    assert not run(indent(files.format(n=over)) + "    return a + b\n")


def test_no_network_even_around_the_guard(active):
    need(active, "network-namespace", "syscall-filter")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        port = server.getsockname()[1]
        raw = f"import _socket\ns = _socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {port}))\n"
        assert not run(indent(raw) + "    return a + b\n")
        guarded = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        assert not run(indent(guarded) + "    return a + b\n")
    finally:
        server.close()


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix-domain sockets here")
def test_no_unix_socket_on_the_host(active):
    need(active, "syscall-filter")
    folder = Path(f"/tmp/tie-lite-test-{uuid.uuid4().hex[:8]}")  # short: a socket path has at most 107 bytes
    folder.mkdir()
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(folder / "s"))
        server.listen(1)
        raw = f"import _socket\ns = _socket.socket(_socket.AF_UNIX)\ns.connect({str(folder / 's')!r})\n"
        assert not run(indent(raw) + "    return a + b\n")
    finally:
        server.close()
        shutil.rmtree(folder)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="no unshare(1) to ask the kernel independently")
def test_namespaces_are_used_where_the_kernel_allows_them(monkeypatch):
    allowed = subprocess.run(["unshare", "--user", "--pid", "--mount", "--net", "--fork",
                              "true"], capture_output=True).returncode == 0
    if not allowed:
        pytest.skip("the kernel here refuses unprivileged namespaces")
    monkeypatch.setattr(sandbox, "_contained", None)
    assert {"pid-namespace", "network-namespace", "read-only-root", "scratch-quota"} <= containment()
