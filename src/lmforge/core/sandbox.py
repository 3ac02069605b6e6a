"""Run model-written Python programs (MBPP / HumanEval solutions with their tests) in a separate process.

This is damage control for buggy or careless code, NOT a security boundary like a container or a VM:
a program written to attack the machine may find a way out (a kernel bug, a world-writable file, a
setuid helper that trusts its caller). Run untrusted code at scale inside a container or VM as well.

What every run gets (Linux):
- its own process, started through a small bootstrap that applies the limits below and then executes
  `python -I -B -` (isolated mode: no PYTHON* variables, no user site-packages) with the program on
  stdin, in a new session (its own process group);
- a wall-clock limit (`timeout_s`, counted from the start, interpreter start-up included) after which
  the whole process group is killed, grandchildren too; a CPU-time limit per process (`timeout_s` + 1 s,
  rounded up) as a backstop;
- resource limits: address space (`memory_mb`, RLIMIT_AS: allocations past it raise MemoryError),
  processes and threads (`max_processes`, RLIMIT_NPROC), the size of any file written
  (`max_file_bytes`, RLIMIT_FSIZE), no core dumps (RLIMIT_CORE = 0);
- no new privileges (PR_SET_NO_NEW_PRIVS: setuid programs such as `su` run without their privileges);
- a fresh, empty working folder (also its HOME and TMPDIR), removed afterwards;
- an environment holding only PATH, HOME, TMPDIR, LANG and single-thread settings for numerical libraries:
  nothing inherited from the parent, so a secret in the parent's environment is not passed on;
- stdin at end of file, stdout and stderr read incrementally, each bounded to `max_output_bytes`:
  a program printing more is killed (status "output_limit"), so gigabytes of output fill neither memory
  nor disk.

What depends on the machine (`isolation()` reports it; `docs/sandbox.md` has the measurements):
- Parent running as root (a container, CI): each run gets a dedicated unprivileged user and group id
  (no name; one per concurrent run, claimed with a lock file so that several lmforge processes never
  share one). Root is exempt from RLIMIT_NPROC, so without this a fork bomb would not stop. With it,
  the process limit counts this run's processes only, root-owned files outside the working folder cannot
  be changed or deleted, root's 0700 folders (e.g. /root) cannot be read, other processes' environments
  (/proc/<pid>/environ) cannot be read, and after the run every process of that id is killed, also one
  that left the process group with setsid(). The interpreter must then be readable by that user: when
  `sys.executable` is not (a pyenv Python under /root), a system Python (same minor version first)
  is used; `isolation().python` names it and `python=` chooses another.
- Parent running as an ordinary user (a laptop): the program runs as that user and can read, change
  and delete everything that user can (~/.ssh, tokens under ~/.cache). Inside the user namespace that
  comes with the network cut (below) it cannot read `/proc/<pid>/environ` of the user's other processes;
  without one it can, so a secret in the parent's environment is readable that way. RLIMIT_NPROC counts
  a user's processes together: it is set to the number the user runs now plus `max_processes` (inside
  the user namespace it counts this run's processes only). A process that leaves the group with setsid()
  survives the run (until its CPU-time limit).
- Network: the bootstrap moves the run into a new, empty network namespace (unshare(CLONE_NEWNET);
  as an ordinary user together with a new user namespace) where there is no interface but a loopback
  that is down: no connection to the internet, to the host's 127.0.0.1, or to abstract Unix sockets.
  Where the kernel refuses (some container runtimes, user namespaces disabled), the run keeps the
  network and `isolation().network_cut` is False.

Not isolated at all: the file system (the program sees the whole tree; world-writable places such as
/tmp and /dev/shm stay writable and what it leaves there stays), CPU (no share limit beyond time:
it competes with the parent), the total memory of several processes (up to `max_processes` x
`memory_mb`), the kernel, and the machine's hardware information.

Completion check: a program that calls sys.exit(0) or os._exit(0) before its asserts exits with status
0 without testing anything. A line printing a per-run random nonce (from `secrets`) is appended to the
program; a run passes only with exit status 0 and that nonce as the last line of stdout. The program
reaches the interpreter through a pipe (stdin), not a file or the command line, so the nonce is in no
file and in no process's arguments. Residual risk: the nonce is a constant in the running program's
own code object, so a program written to look for it (walking `sys._getframe().f_code.co_consts` or
reading its own memory) can print it; an accidental or lazy early exit cannot.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from lmforge.core.sandbox_pipes import communicate, read_report
from lmforge.core.sandbox_users import (
    claim_uid,
    count_tasks_of,
    kill_processes_of,
    pick_uid_pool,
    release_uid,
)

# passed: exit 0 and the end marker as the last stdout line; failed: a nonzero exit (exception, failed
# assert, a signal) or output after the end marker; timeout: past timeout_s (or the CPU-time limit);
# exited_early: exit 0 without reaching the end; memory: ended by MemoryError (the address-space limit);
# output_limit: more than max_output_bytes on stdout or stderr.
STATUSES = ("passed", "failed", "timeout", "exited_early", "memory", "output_limit")


@dataclass(frozen=True)
class ExecResult:
    passed: bool
    status: str  # one of STATUSES
    returncode: int | None  # negative: killed by that signal (the sandbox's kill on timeout is -9)
    stdout: str  # without the end marker; cut at max_output_bytes with a note saying so
    stderr: str
    seconds: float


@dataclass(frozen=True)
class Isolation:
    """What `run_python` can enforce on this machine (probed once, with a tiny program)."""

    own_user: bool  # each run under a dedicated unprivileged uid (only when the parent runs as root)
    network_cut: bool  # each run in an empty network namespace
    python: str  # the interpreter that runs the programs


_PROBE = "import collections, json, math, re\nassert json.loads('[1]') == [1]\n"
_CLEAN_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    # numerical libraries start one thread per core by default, which counts against max_processes
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}

# Runs as the parent's user (root or not) with the clean environment, in the working folder; applies
# the isolation, reports what it applied on the report pipe (closed by the exec), then becomes the
# program's interpreter. Failing at any step, it reports the error instead and exits 127.
_BOOTSTRAP = r"""
import os, resource, sys
report, network, uid, tasks_now, python = sys.argv[1:6]
report, uid, tasks_now = int(report), int(uid) if uid else None, int(tasks_now) if tasks_now else None
limits = {name: int(value) for name, value in (arg.split("=") for arg in sys.argv[6:])}
step = "start"
try:
    applied = []
    libc = None
    if sys.platform == "linux":
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
    if network != "keep" and libc is not None:
        flags = 0x40000000  # CLONE_NEWNET
        if os.geteuid() != 0:
            flags |= 0x10000000  # CLONE_NEWUSER: lets an ordinary user own the network namespace
        if libc.unshare(ctypes.c_int(flags)) == 0:
            applied.append("network_cut")
            if flags & 0x10000000:
                applied.append("user_namespace")
        elif network == "cut":
            raise OSError(ctypes.get_errno(), "unshare: " + os.strerror(ctypes.get_errno()))
    step = "limits"
    if uid is None and "user_namespace" not in applied:
        if tasks_now is None:
            del limits["NPROC"]  # cannot count the user's other processes: a limit could stop the program
        else:
            limits["NPROC"] += tasks_now  # the user's count includes processes outside the sandbox
    for name, value in limits.items():
        resource.setrlimit(getattr(resource, "RLIMIT_" + name), (value, value))
    if libc is not None:
        no_new_privs = [ctypes.c_int(38)] + [ctypes.c_ulong(v) for v in (1, 0, 0, 0)]
        if libc.prctl(*no_new_privs) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        applied.append("no_new_privs")
    step = "user"
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        applied.append("own_user")
    os.set_inheritable(report, False)
    os.write(report, ("applied " + " ".join(applied) + "\n").encode())
    step = "exec " + python
    os.execv(python, [python, "-I", "-B", "-"])
except BaseException as e:
    os.write(report, ("error " + step + ": " + repr(e) + "\n").encode())
    os._exit(127)
"""


def run_python(
    program: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    max_processes: int = 16,
    max_output_bytes: int = 64 * 1024,
    max_file_bytes: int = 16 * 1024 * 1024,
    python: str | None = None,
) -> ExecResult:
    """Run `program` (its source) in a fresh, limited process; see the module docstring for what is isolated.

    `max_processes` counts processes and threads, the program's own interpreter included.
    Raises RuntimeError only when the sandbox itself cannot be set up (never for what the program does).
    """
    if not isinstance(program, str):
        raise TypeError(f"program must be the source text, got {type(program).__name__}")
    for name, value in (("timeout_s", timeout_s), ("memory_mb", memory_mb), ("max_processes", max_processes)):
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if max_output_bytes < 1 or max_file_bytes < 0:
        raise ValueError(
            f"max_output_bytes must be >= 1 and max_file_bytes >= 0, got {max_output_bytes}, {max_file_bytes}"
        )
    setup = _setup()
    limits = {
        "AS": memory_mb * 1024 * 1024,
        "NPROC": max_processes,
        "FSIZE": max_file_bytes,
        "CORE": 0,
        "CPU": math.ceil(timeout_s) + 1,
    }
    result, _ = _execute(
        program,
        python=python or setup.isolation.python,
        uid_pool=setup.uid_pool,
        network="cut" if setup.isolation.network_cut else "keep",
        limits=limits,
        timeout_s=timeout_s,
        max_output_bytes=max_output_bytes,
    )
    return result


def run_many(
    programs: Sequence[str], *, workers: int = 2, progress: bool = False, **limits: object
) -> list[ExecResult]:
    """`run_python` on each program, at most `workers` at a time; results in the order of `programs`."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    from tqdm.auto import tqdm  # here, so that the sandbox itself needs nothing outside the standard library

    programs = list(programs)
    _setup()  # probe once, before the threads start
    results: list[ExecResult | None] = [None] * len(programs)
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(total=len(programs), desc="running programs", unit="program", disable=not progress) as bar,
    ):
        futures = {pool.submit(run_python, program, **limits): i for i, program in enumerate(programs)}
        try:
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update()
        except BaseException:
            for future in futures:  # running ones finish within their time limit; queued ones never start
                future.cancel()
            raise
    return results  # type: ignore[return-value]


def isolation() -> Isolation:
    """Which protections runs get on this machine (the first call probes it, in well under a second)."""
    return _setup().isolation


# ---------------------------------------------------------------------------------------------------
# Machine setup: probed once per process.


@dataclass(frozen=True)
class _Setup:
    isolation: Isolation
    uid_pool: range | None  # None: the parent is not root, programs run as the parent's user


_setup_lock = threading.Lock()
_setup_done: _Setup | None = None


def _setup() -> _Setup:
    global _setup_done
    with _setup_lock:
        if _setup_done is None:
            _setup_done = _probe()
        return _setup_done


def _probe() -> _Setup:
    """Find an interpreter the sandboxed user can run, and whether the network can be cut."""
    uid_pool = pick_uid_pool() if os.geteuid() == 0 else None
    limits = {"AS": 1024**3, "NPROC": 16, "FSIZE": 1024**2, "CORE": 0, "CPU": 30}
    candidates = [sys.executable] + (_system_pythons() if uid_pool is not None else [])
    failures = []
    for python in candidates:
        try:
            result, applied = _execute(
                _PROBE,
                python=python,
                uid_pool=uid_pool,
                network="try",
                limits=limits,
                timeout_s=30,
                max_output_bytes=4096,
            )
        except RuntimeError as e:
            failures.append(str(e))
            continue
        if result.passed:
            return _Setup(Isolation(uid_pool is not None, "network_cut" in applied, python), uid_pool)
        failures.append(f"{python}: {result.status}, {result.stderr.strip()[-300:]!r}")
    raise RuntimeError(
        "sandbox: no Python interpreter runs under the sandbox's unprivileged user (pass python= one that "
        "every user can read): " + "; ".join(failures)
    )


def _system_pythons() -> list[str]:
    """Pythons outside the parent's (possibly private) installation, the parent's minor version first."""
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    found, seen = [], set()
    for name in (version, "python3"):
        for folder in ("/usr/local/bin", "/usr/bin", "/bin"):
            path = os.path.join(folder, name)
            real = os.path.realpath(path)
            if real not in seen and os.access(real, os.X_OK):
                found.append(path)
                seen.add(real)
    return found


# ---------------------------------------------------------------------------------------------------
# One run.


def _execute(
    program: str,
    *,
    python: str,
    uid_pool: range | None,
    network: str,
    limits: dict[str, int],
    timeout_s: float,
    max_output_bytes: int,
) -> tuple[ExecResult, list[str]]:
    """Run once; also returns what the bootstrap applied. `network`: "cut" (required), "try" or "keep"."""
    nonce = secrets.token_hex(16).encode()
    marker = b"\n" + nonce + b"\n"
    source = program.encode("utf-8", errors="replace")
    # The program's last line may lack a newline. The marker goes straight to fd 1, after what print()
    # buffered, so a program that replaced or wrapped sys.stdout still ends with it.
    source += b"\nimport os as __lmforge_os, sys as __lmforge_sys\n__lmforge_sys.stdout.flush()\n"
    source += b"__lmforge_os.write(1, " + repr(marker).encode() + b")\n"

    uid = lock_fd = workdir = proc = None
    report_r = report_w = -1
    left_behind = None  # processes of the run's uid (zombies) the last sweep saw; None: no sweep yet

    def stop() -> None:
        nonlocal left_behind
        left_behind = _stop(proc, uid)

    try:
        if uid_pool is not None:
            uid, lock_fd = claim_uid(uid_pool)
        workdir = tempfile.mkdtemp(prefix="lmforge-sandbox-")
        report_r, report_w = os.pipe()
        if uid is not None:
            os.chown(workdir, uid, uid)
        tasks_now = None if uid is not None else count_tasks_of(os.getuid())
        # plain arguments: the bootstrap would spend more time importing json than doing its work
        arguments = [
            str(report_w),
            network,
            "" if uid is None else str(uid),
            "" if tasks_now is None else str(tasks_now),
        ]
        arguments += [python, *(f"{name}={value}" for name, value in limits.items())]
        start = time.monotonic()
        deadline = start + timeout_s
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _BOOTSTRAP, *arguments],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env={**_CLEAN_ENV, "HOME": workdir, "TMPDIR": workdir},
            start_new_session=True,
            pass_fds=(report_w,),
        )
        os.close(report_w)
        report_w = -1
        applied = read_report(report_r, proc, deadline)
        caps = {proc.stdout.fileno(): max_output_bytes + len(marker), proc.stderr.fileno(): max_output_bytes}
        out, err, outcome = communicate(proc, source, deadline, caps, stop)
        returncode = proc.wait()
        seconds = time.monotonic() - start
    except BaseException:
        if proc is not None:
            stop()
            proc.wait()
        raise
    finally:
        if proc is not None:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    stream.close()
                except OSError:  # stdin whose reader is gone
                    pass
        for fd in (report_r, report_w):
            if fd >= 0:
                os.close(fd)
        if workdir is not None:
            _remove_folder(workdir)
        if lock_fd is not None:
            release_uid(lock_fd, clean=left_behind == 0)

    status = _status(outcome, returncode, out, err, marker)
    out = out.replace(marker, b"", 1)
    stdout = out[:max_output_bytes].decode("utf-8", errors="replace")
    stderr = err[:max_output_bytes].decode("utf-8", errors="replace")
    if len(out) > max_output_bytes:
        stdout += f"\n[stdout cut at {max_output_bytes} bytes]"
    if len(err) > max_output_bytes:
        stderr += f"\n[stderr cut at {max_output_bytes} bytes]"
    return ExecResult(status == "passed", status, returncode, stdout, stderr, seconds), applied


def _stop(proc: subprocess.Popen, uid: int | None) -> int | None:
    """Kill the program's process group and, with a dedicated uid, every process of that uid.

    Returns how many (dead, unreaped) processes of the uid are left, as `kill_processes_of` counts them.
    """
    if proc.returncode is None:  # the leader is not reaped yet, so its group id cannot have been reused
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return kill_processes_of(uid, reaped_by_caller=proc.pid) if uid is not None else None


def _status(outcome: str, returncode: int | None, out: bytes, err: bytes, marker: bytes) -> str:
    if outcome in ("timeout", "output_limit"):
        return outcome
    if returncode == -signal.SIGXCPU:
        return "timeout"
    if returncode != 0:
        last = err.decode("utf-8", errors="replace").strip().splitlines()[-1:] or [""]
        return "memory" if last[0].startswith("MemoryError") else "failed"
    if out.endswith(marker):
        return "passed"
    return "failed" if marker.strip() in out else "exited_early"  # present but not last: printed after the end


# ---------------------------------------------------------------------------------------------------
# Processes and folders.


def _remove_folder(path: str) -> None:
    """Remove the working folder, also subfolders the program made unreadable (chmod 000)."""
    try:
        shutil.rmtree(path)
        return
    except OSError:
        pass
    for root, dirs, _ in os.walk(path):
        for name in dirs:
            try:
                os.chmod(os.path.join(root, name), 0o700)
            except OSError:
                pass
    shutil.rmtree(path, ignore_errors=True)
