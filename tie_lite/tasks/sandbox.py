"""Running a model's code against an item's tests: in a separate Python process, with a CPU-time, memory and
file-size limit, a wall-clock timeout, a scratch working folder, no inherited environment and no network.

No network, twice over: the child first moves into new user and network namespaces (Linux `unshare`, where
the kernel allows it unprivileged: only a loopback device exists there), and its `socket` module refuses to
open sockets whatever the platform. Neither is a full sandbox against hostile code; the limits stop the code
a model writes by mistake (endless loops, runaway memory, a download) from harming the evaluation.
"""

from __future__ import annotations

import ctypes
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile

CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000  # linux/sched.h
FILE_SIZE_LIMIT = 16 << 20

# Runs in the child before the program: whatever the namespaces did, sockets are refused.
GUARD = """
import socket as _socket
def _refused(*args, **kwargs):
    raise OSError("network access is disabled while checking code")
_socket.socket = _socket.create_connection = _socket.getaddrinfo = _socket.socketpair = _refused
del _socket, _refused
"""


def program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """HumanEval's program: the prompt and the completion (or the completion alone when it writes the whole
    function, with the prompt's imports kept), then the tests and `check(entry_point)`. A body whose first line
    lost its indent (a response's text is stripped where the answer starts) gets it back."""
    completion = completion.lstrip("\n")
    if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", completion, re.M):
        imports = "\n".join(line for line in prompt.splitlines() if re.match(r"\s*(import|from)\s", line))
        body = f"{imports}\n{completion.strip()}"
    else:
        lines = completion.split("\n")
        if lines[0].strip() and not lines[0][:1].isspace():  # a body whose first indent a layout stripped
            lines[0] = "    " + lines[0]
        body = prompt.rstrip("\n") + "\n" + "\n".join(lines)
    return f"{body}\n\n{test}\n\ncheck({entry_point})\n"


def _limit(time_limit: float, memory_limit: int):
    def apply() -> None:  # in the child, between fork and exec
        cpu = max(1, int(time_limit + 0.999))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))
        try:
            ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWUSER | CLONE_NEWNET)
        except (OSError, AttributeError):  # no unshare here (not Linux): the socket guard still holds
            pass

    return apply


def run_tests(prompt: str, completion: str, test: str, entry_point: str, *, time_limit: float = 10.0,
              memory_limit: int = 1 << 30) -> bool:
    """True when the program's tests pass (exit status 0) within the limits."""
    source = GUARD + program(prompt, completion, test, entry_point)
    with tempfile.TemporaryDirectory(prefix="tie-lite-code-") as scratch:
        child = subprocess.Popen([sys.executable, "-I", "-c", source], cwd=scratch, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 env={"PATH": os.defpath, "HOME": scratch, "TMPDIR": scratch},
                                 preexec_fn=_limit(time_limit, memory_limit), start_new_session=True)
        try:
            return child.wait(timeout=time_limit + 5) == 0  # wall clock: also catches code that sleeps
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)  # the child's own session: whatever it started goes too
            child.wait()
            return False
