"""Running a model's code against an item's tests (`eval --run-code`), contained: the code runs in its own
Python process under a supervisor process (this file run as a script), and what it starts ends with it.

Always: a CPU-time, memory (address space) and per-file size limit, a wall-clock timeout, a scratch working
folder that is removed afterwards, no inherited environment, and a `socket` module that refuses to open sockets.

On Linux where the kernel lets an unprivileged process create namespaces (`containment()` says what a run got):
- pid-namespace: the program runs under a tiny init (PID 1 of a new PID namespace). When the program ends, or
  the supervisor or the evaluation dies (PR_SET_PDEATHSIG), init exits and the kernel kills every process left
  in the namespace: a child that calls setsid() and double-forks does not outlive the run.
- network-namespace: only an unconfigured loopback device exists (the namespace is new; also IPC and UTS).
- read-only-root: the whole file tree is seen read-only, nosuid and nodev (the device nodes null, zero, full,
  random and urandom excepted), /proc is the namespace's own, read-only. Nested user namespaces are disallowed
  (max_user_namespaces=0), so the view cannot be undone from inside.
- scratch-quota: the scratch folder is a fresh tmpfs of SCRATCH_QUOTA bytes and SCRATCH_FILES files.
- process-limit: RLIMIT_NPROC of PROCESS_LIMIT tasks, counted for the namespace alone. The kernel counts per
  real uid and exempts a real uid of root, so as root the supervisor takes nobody's real uid (keeping root's
  effective uid, so the interpreter stays readable where it is installed under /root) and the syscall filter
  stops the program from setting it back.
- syscall-filter (x86-64, aarch64): seccomp refuses socket, socketpair, io_uring_setup and setuid/setreuid/
  setresuid: no Unix-domain sockets either (a network namespace does not hide those on the file tree).
Where namespaces are refused (macOS, a container that forbids them), the fallback: the program runs in its own
session; on Linux the supervisor is a child subreaper and, once the program ends, kills every process that
descends from it (setsid() and double forks included), and a process limit holds for a non-root user (RLIMIT_NPROC
above what the user already runs; the kernel ignores it for root); elsewhere only the session's process group
is killed. There: no total disk quota (the per-file limit only) and the code may write wherever the user may.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import re
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time

FILE_SIZE_LIMIT = 16 << 20
SCRATCH_QUOTA = 64 << 20  # bytes of the scratch tmpfs, all files together
SCRATCH_FILES = 4096  # files and folders on it
PROCESS_LIMIT = 64  # processes and threads

# Runs in the child before the program: whatever the kernel allows, sockets are refused.
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


def run_tests(prompt: str, completion: str, test: str, entry_point: str, *, time_limit: float = 10.0,
              memory_limit: int = 1 << 30) -> bool:
    """True when the program's tests pass (exit status 0) within the limits."""
    return _run(GUARD + program(prompt, completion, test, entry_point), time_limit, memory_limit)


_namespaces = True  # False once a run found that namespaces are refused here after all
_contained: frozenset[str] | None = None  # what the latest run was contained by


def containment() -> frozenset[str]:
    """What contains the code on this machine, as the latest run (a trivial one when none ran yet) reported:
    names from the module's docstring (pid-namespace, network-namespace, read-only-root, scratch-quota,
    process-limit, syscall-filter, subreaper); an empty set: the session and the limits only."""
    if _contained is None:
        _run("pass\n", 10.0, 1 << 30)
    return _contained or frozenset()


def _run(source: str, time_limit: float, memory_limit: int, *, namespaces: bool | None = None) -> bool:
    global _namespaces, _contained
    use = _namespaces if namespaces is None else namespaces
    wall = time_limit + 5  # the supervisor's clock: also catches code that sleeps
    with tempfile.TemporaryDirectory(prefix="tie-lite-code-", ignore_cleanup_errors=True) as scratch:
        env = {"PATH": os.defpath, "HOME": scratch, "TMPDIR": scratch, "OMP_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1"}  # a library's thread pool within the process limit
        config = {"source": source, "scratch": scratch, "time_limit": time_limit, "memory_limit": memory_limit,
                  "wall": wall, "namespaces": use, "parent": os.getpid(), "env": env, "python": sys.executable}
        # The supervisor is this file run as a script: no preexec_fn (unsafe in a threaded parent).
        child = subprocess.Popen([sys.executable, "-I", "-S", os.path.abspath(__file__), json.dumps(config)],
                                 cwd=scratch, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, env={"PATH": os.defpath}, start_new_session=True)
        out, done = bytearray(), False
        try:
            done = _read(child.stdout.fileno(), out, wall + 5)  # a backstop: the supervisor keeps the wall clock
        finally:  # every path, an exception in this process included
            try:
                if not done:  # the supervisor ends the program and what it started, then reports
                    os.kill(child.pid, signal.SIGTERM)
                    _read(child.stdout.fileno(), out, 2)
                # Then whatever is left of its session. It is alive or an unreaped zombie, so its id still names
                # its own group; and when it dies, its namespace dies too (init's PDEATHSIG).
                os.killpg(child.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            finally:
                child.wait()
                child.stdout.close()
    words = bytes(out).decode(errors="replace").split()
    if words[:1] == ["setup-failed"]:  # namespaces were granted but could not be set up: not again
        _namespaces = False
        return _run(source, time_limit, memory_limit, namespaces=False)
    if words[:1] in (["pass"], ["fail"]):
        _contained = frozenset(words[1:])
    return words[:1] == ["pass"]


def _read(fd: int, out: bytearray, seconds: float) -> bool:
    """Read fd into out until its end (True) or for at most seconds (False)."""
    end = time.monotonic() + seconds
    poller = select.poll()  # not select(): it fails on descriptors past 1024, which a long evaluation may hold
    poller.register(fd, select.POLLIN | select.POLLHUP)
    while (left := end - time.monotonic()) > 0:
        if poller.poll(left * 1000):
            chunk = os.read(fd, 4096)
            if not chunk:
                return True
            out += chunk
    return False


# --- the supervisor: runs as `python -I -S sandbox.py CONFIG` in its own session ------------------------------

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x20000, 0x4000000, 0x8000000  # linux/sched.h
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 8, 32, 4096, 16384
MS_PRIVATE = 1 << 18
# Options a bind remount keeps as they were (the kernel refuses to change locked ones).
MS_KEPT = {"noatime": 1024, "nodiratime": 2048, "relatime": 1 << 21, "strictatime": 1 << 24, "noexec": MS_NOEXEC}
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 1, 2, 4  # linux/mount.h
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE = 442, -100, 0x8000  # 442 on every architecture (Linux 5.12+)
PR_SET_PDEATHSIG, PR_SET_SECCOMP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 22, 36, 38
NOBODY = 65534
DEVICES = ("null", "zero", "full", "random", "urandom")
# seccomp: (audit arch, syscalls refused: socket socketpair io_uring_setup setuid setreuid setresuid)
SECCOMP = {"x86_64": (0xC000003E, (41, 53, 425, 105, 113, 117)),
           "aarch64": (0xC00000B7, (198, 199, 425, 146, 145, 147))}
SETUP_FAILED = 125  # init's exit status when the namespace could not be finished


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return libc


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(libc, source, target: str, fstype, flags: int, data: str | None = None) -> None:
    _check(libc.mount(source and source.encode(), target.encode(), fstype and fstype.encode(), flags,
                      data and data.encode()), f"mount {target}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as file:
        file.write(text)


def _setattr(libc, path: str, set_: int, clear: int, recursive: bool) -> None:
    attr = _MountAttr(set_, clear, 0, 0)
    _check(libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(AT_FDCWD), ctypes.c_char_p(path.encode()),
                        ctypes.c_uint(AT_RECURSIVE if recursive else 0), ctypes.byref(attr),
                        ctypes.c_size_t(ctypes.sizeof(attr))), f"mount_setattr {path}")


def _mounts() -> list[tuple[str, int]]:
    """Each mount point with the flags a bind remount must keep (the kernel refuses to drop locked ones)."""
    mounts = []
    with open("/proc/self/mountinfo") as file:
        for line in file:
            fields = line.split()
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            mounts.append((point, sum(MS_KEPT.get(option, 0) for option in fields[5].split(","))))
    return mounts


def _read_only(libc, path: str, recursive: bool, keep_devices: bool = False) -> None:
    """Make the mounts at (and, recursive, under) path read-only and nosuid, and nodev unless keep_devices:
    one mount_setattr (Linux 5.12+), else a bind remount of each mount as /proc/self/mountinfo lists them."""
    set_ = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | (0 if keep_devices else MOUNT_ATTR_NODEV)
    try:
        return _setattr(libc, path, set_, MOUNT_ATTR_NODEV if keep_devices else 0, recursive)
    except OSError as error:
        if error.errno != 38:  # ENOSYS: an older kernel
            raise
    mounts = _mounts()
    if recursive:
        targets = [(m, f) for m, f in mounts if m == path or m.startswith(path.rstrip("/") + "/")]
    else:  # a bind mount of its own at path, as the last line for it says
        targets = [(path, [f for m, f in mounts if m == path][-1])]
    for point, flags in targets:
        try:
            _mount(libc, None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | flags
                   | (0 if keep_devices else MS_NODEV))
        except OSError as error:
            if error.errno not in (2, 13):  # a mount point hidden under another mount: not reachable anyway
                raise


def _enter_namespaces(libc) -> bool:
    """New user, mount, PID, network, IPC and UTS namespaces for this process (its children join the PID one);
    False, nothing changed, where the kernel refuses. Root first takes nobody's real uid (see the docstring)."""
    ids = os.geteuid(), os.getegid()
    if ids[0] == 0:
        os.setgroups([])
        hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        resource.setrlimit(resource.RLIMIT_NPROC, (hard, hard))  # the namespace's ceiling is taken from here
        os.setresuid(NOBODY, 0, 0)
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS):
        if ids[0] == 0:
            os.setresuid(0, 0, 0)
        return False
    return True


def _jail(libc, scratch: str, ids: tuple[int, int]) -> list[str]:
    # One id each, the effective ones from before, mapped to nobody: inside no one is root, so the program's
    # exec keeps no capability and cannot undo the mounts below.
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{NOBODY} {ids[0]} 1")
    _write("/proc/self/gid_map", f"{NOBODY} {ids[1]} 1")
    features = ["pid-namespace", "network-namespace", "read-only-root", "scratch-quota"]
    try:  # no nested user namespace: its capabilities could undo the view below or reset the real uid
        _write("/proc/sys/user/max_user_namespaces", "0")
        nested = False
    except OSError:
        nested = True
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)  # nothing mounted later on the host shows up here
    _read_only(libc, "/", recursive=True)
    for name in DEVICES:  # the harmless devices, each as its own bind mount with devices allowed again
        path = f"/dev/{name}"
        if os.path.exists(path):
            _mount(libc, path, path, None, MS_BIND)
            _read_only(libc, path, recursive=False, keep_devices=True)
    _mount(libc, "tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={SCRATCH_QUOTA},nr_inodes={SCRATCH_FILES},mode=0700")
    os.chdir(scratch)  # onto the tmpfs
    if not nested:
        features.append("process-limit")
    return features


def _filter_syscalls(libc) -> bool:
    """A seccomp filter (see SECCOMP); False where this architecture has none here or the kernel refuses."""
    arch, refused = SECCOMP.get(platform.machine(), (None, ()))
    if arch is None:
        return False
    n = len(refused)
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
    code = [(ld, 0, 0, 4), (jeq, 0, n + 3, arch),  # another ABI (i386, x32 below): refused whole
            (ld, 0, 0, 0), (jge, n + 1, 0, 0x40000000)]
    code += [(jeq, n - i, 0, nr) for i, nr in enumerate(refused)]
    code += [(ret, 0, 0, 0x7FFF0000), (ret, 0, 0, 0x00050000 | 1)]  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO|EPERM

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

    filters = (Filter * len(code))(*[Filter(*op) for op in code])
    program = Program(len(code), filters)  # both kept alive until the kernel has copied them
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
        return False
    return libc.prctl(PR_SET_SECCOMP, 2, ctypes.addressof(program), 0, 0) == 0


def _user_tasks() -> int:
    """How many processes and threads this real uid runs now (RLIMIT_NPROC counts them all)."""
    count, uid = 0, os.getuid()
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/status") as file:
                status = dict(line.split(":", 1) for line in file if ":" in line)
            if int(status["Uid"].split()[0]) == uid:
                count += int(status["Threads"])
        except (OSError, KeyError, ValueError):
            continue
    return count


def _exec_program(libc, config: dict, devnull: int, process_limit: int | None) -> None:
    try:
        if libc is not None:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # dies with its parent
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        cpu = max(1, int(config["time_limit"] + 0.999))
        memory = config["memory_limit"]
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if process_limit is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (process_limit, process_limit))
        python = config["python"]
        os.execve(python, [python, "-I", "-c", config["source"]], config["env"])
    finally:
        os._exit(127)


def _init(libc, config: dict, devnull: int, alive: int) -> None:
    """PID 1 of the namespace: runs the program, reaps whatever is orphaned, and exits with the program; the
    kernel then kills everything else in the namespace."""
    try:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if select.select([alive], [], [], 0)[0]:  # the supervisor died before the line above: end now
            os._exit(1)
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # PID 1 ignores signals it does not handle
        os.dup2(devnull, 1)
        try:  # the namespace's own /proc (read-only): no other process, no way into the host's mounts
            _mount(libc, "proc", "/proc", "proc", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
        except OSError:  # a /proc the kernel finds too masked to mount again (containers): hide it
            _mount(libc, "tmpfs", "/proc", "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k")
    except OSError:
        os._exit(SETUP_FAILED)
    child = os.fork()
    if child == 0:
        _exec_program(libc, config, devnull, PROCESS_LIMIT)
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            os._exit(0 if status == 0 else 1)


def _kill_descendants() -> None:
    """As a child subreaper: kill the children, reap, repeat; what a killed child left behind is re-parented here
    before its exit can be reaped, so the loop ends only when nothing that descends from this process is left."""
    me = str(os.getpid())
    while True:
        for name in os.listdir("/proc"):
            try:
                with open(f"/proc/{name}/stat") as file:
                    if file.read().rpartition(")")[2].split()[1] == me:
                        os.kill(int(name), signal.SIGKILL)
            except (OSError, IndexError, ValueError):
                continue
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _supervise(config: dict) -> str:
    libc = _libc()
    if libc is not None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # dies with the evaluation
    if os.getppid() != config["parent"]:
        return "fail"
    devnull = os.open(os.devnull, os.O_RDWR)
    features: list[str] = []
    ids = os.geteuid(), os.getegid()
    jailed = config["namespaces"] and libc is not None and _enter_namespaces(libc)
    if jailed:
        try:
            features += _jail(libc, config["scratch"], ids)
        except OSError as error:
            return f"setup-failed {error}"
        process_limit = PROCESS_LIMIT
    else:
        if libc is not None and libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0:
            features.append("subreaper")
        process_limit = None  # the kernel ignores RLIMIT_NPROC for root; per uid, so above what it runs now
        if os.getuid() != 0 and os.path.isdir("/proc"):
            process_limit = _user_tasks() + PROCESS_LIMIT
            features.append("process-limit")
    if libc is not None and _filter_syscalls(libc):
        features.append("syscall-filter")
    elif jailed and os.getuid() != os.geteuid() and "process-limit" in features:
        features.remove("process-limit")  # root's program could set its real uid back to root's
    if jailed:
        alive, held = os.pipe()
        target = os.fork()
        if target == 0:
            os.close(held)
            _init(libc, config, devnull, alive)
        os.close(alive)
    else:
        target = os.fork()
        if target == 0:
            _exec_program(libc, config, devnull, process_limit)
    timed_out = []  # the wall clock, or the evaluation asking to stop: the program (or init) is killed
    for stop in (signal.SIGALRM, signal.SIGTERM):
        signal.signal(stop, lambda *_: (timed_out.append(1), os.kill(target, signal.SIGKILL)))
    signal.setitimer(signal.ITIMER_REAL, config["wall"])
    if hasattr(os, "waitid"):  # ended, not reaped: the alarm cannot hit another process with its id
        os.waitid(os.P_PID, target, os.WEXITED | os.WNOWAIT)
        signal.setitimer(signal.ITIMER_REAL, 0)
    status = os.waitpid(target, 0)[1]
    signal.setitimer(signal.ITIMER_REAL, 0)  # (no waitid, e.g. macOS before Python 3.13: only once it is reaped)
    for stop in (signal.SIGALRM, signal.SIGTERM):  # its id is free now: a late signal must not reach another
        signal.signal(stop, signal.SIG_IGN)
    if not jailed and libc is not None:
        _kill_descendants()
    if jailed and os.WIFEXITED(status) and os.WEXITSTATUS(status) == SETUP_FAILED:
        return "setup-failed init"
    verdict = "pass" if status == 0 and not timed_out else "fail"
    return " ".join([verdict, *features])


if __name__ == "__main__":
    line = _supervise(json.loads(sys.argv[1]))
    os.write(1, (line + "\n").encode())
