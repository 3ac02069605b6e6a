"""Run model-written Python programs (MBPP / HumanEval solutions with their tests) in a separate process.

This is damage control for buggy, careless or reward-hacking code, NOT a security boundary like a
container or a VM: a program written to attack the machine may find a way out (a kernel bug, a
world-writable file, a setuid helper that trusts its caller). Run untrusted code at scale inside a
container or VM as well. docs/sandbox.md has the full picture and the measurements; in short:

- Verdict (`generation/sandbox_checks.py`): a task's asserts are split into probes (calls into the
  program), evaluated in the sandbox and sent back as plain values by an exact-type encoder, and tests,
  evaluated here on those values. Expected values and any notion of success stay in this process.
  A bare program (a string) passes when it ran to the end with exit status 0.
- Every run: a bootstrap (`generation/sandbox_bootstrap.py`) that dies with lmforge, forks the program in
  a session of its own and kills whatever it leaves behind; a wall-clock limit; RLIMIT_AS / NPROC /
  FSIZE / CORE / CPU; PR_SET_NO_NEW_PRIVS; stdin at end of file; bounded stdout / stderr; an
  environment of PATH, HOME, TMPDIR, LANG and single-thread settings only.
- Where the kernel allows ("full" mode, `isolation().private_mounts`): new network, mount, IPC and
  PID namespaces; /tmp, /var/tmp, /dev/shm and /run/lock are one private tmpfs of `max_disk_bytes`
  that holds the working folder (HOME, TMPDIR) and vanishes with the run; reference data folders
  (lmforge's bundled datasets, the checkout's .git, what a task names) are covered by empty folders;
  the program cannot signal or see processes outside its PID namespace.
- As root, each run gets an unprivileged uid of its own (`generation/sandbox_users.py`); afterwards every
  process of that uid is killed and every file it owns in the shared writable places is removed.
- Clean-up never follows a symlink (`generation/sandbox_files.py`); host working folders (where there is no
  mount namespace) live in a per-process parent the program cannot rename entries in.
"""

from __future__ import annotations

import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from lmforge.generation.sandbox_bootstrap import BOOTSTRAP
from lmforge.generation.sandbox_checks import HARNESS, Program, judge, payload, read_results
from lmforge.generation.sandbox_files import remove_files_of, remove_path, work_parent
from lmforge.generation.sandbox_pipes import communicate, has_exited, read_report
from lmforge.generation.sandbox_users import (
    claim_uid,
    count_tasks_of,
    kill_processes_of,
    pick_uid_pool,
    pidfd,
    release_uid,
)

# passed: every check held (a bare program: exit status 0 after its last line); failed: a check did not
# hold, a nonzero exit (exception, a signal) or a value that is not plain; timeout: past timeout_s (or
# the CPU-time limit); exited_early: exit 0 before the end (sys.exit(0) before the asserts); memory:
# ended by MemoryError (the address-space limit); output_limit: more than max_output_bytes on stdout
# or stderr, or more than MAX_RESULT_BYTES of probe values.
STATUSES = ("passed", "failed", "timeout", "exited_early", "memory", "output_limit")
MAX_RESULT_BYTES = 4 * 1024 * 1024
# Reference data no program needs: lmforge's bundled datasets (MBPP solutions) and, in a source
# checkout, its .git (which holds the same files). Tasks add their own (`Program.hidden`).
_PACKAGE = Path(__file__).resolve().parents[1]
HIDDEN = tuple(str(p) for p in (_PACKAGE / "datasets", _PACKAGE.parents[1] / ".git") if p.is_dir())


@dataclass(frozen=True)
class ExecResult:
    passed: bool
    status: str  # one of STATUSES
    returncode: int | None  # negative: killed by that signal (the sandbox's kill on timeout is -9)
    stdout: str  # cut at max_output_bytes with a note saying so
    stderr: str  # a failed check adds its line (AssertionError: ...) at the end
    seconds: float


@dataclass(frozen=True)
class Isolation:
    """What `run_python` can enforce on this machine (probed once, with a tiny program)."""

    own_user: bool  # each run under a dedicated unprivileged uid (only when the parent runs as root)
    network_cut: bool  # each run in an empty network namespace
    python: str  # the interpreter that runs the programs
    private_mounts: bool = False  # private size-limited /tmp (etc.), hidden reference data, own PID namespace


_PROBE = "import collections, json, math, re\nassert json.loads('[1]') == [1]\n"
_CLEAN_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    # numerical libraries start one thread per core by default, which counts against max_processes
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def run_python(
    program: str | Program,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    max_processes: int = 16,
    max_output_bytes: int = 64 * 1024,
    max_file_bytes: int = 16 * 1024 * 1024,
    max_disk_bytes: int = 64 * 1024 * 1024,
    python: str | None = None,
) -> ExecResult:
    """Run `program` (source text, or a `Program` with checks) in a fresh, limited process.

    `max_processes` counts processes and threads, the program's own interpreter included;
    `max_disk_bytes` is the size of the private tmpfs (full mode) holding the working folder and /tmp.
    Raises RuntimeError only when the sandbox itself cannot be set up (never for what the program does).
    """
    if isinstance(program, str):
        program = Program(program)
    if not isinstance(program, Program):
        raise TypeError(f"program must be the source text or a Program, got {type(program).__name__}")
    for name, value in (
        ("timeout_s", timeout_s),
        ("memory_mb", memory_mb),
        ("max_processes", max_processes),
        ("max_disk_bytes", max_disk_bytes),
    ):
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
        mode=setup.mode,
        limits=limits,
        timeout_s=timeout_s,
        max_output_bytes=max_output_bytes,
        max_disk_bytes=max_disk_bytes,
    )
    return result


def run_many(
    programs: Sequence[str | Program], *, workers: int = 2, progress: bool = False, **limits: object
) -> list[ExecResult]:
    """`run_python` on each program, at most `workers` at a time; results in the order of `programs`."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    from lmforge.core.console import progress_bar  # here: the sandbox itself needs only the standard library

    programs = list(programs)
    _setup()  # probe once, before the threads start
    results: list[ExecResult | None] = [None] * len(programs)
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        progress_bar(total=len(programs), desc="running programs", unit="program", disable=not progress) as bar,
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
    mode: str  # the bootstrap's namespaces: "full", "net" or "none"


_setup_lock = threading.Lock()
_setup_done: _Setup | None = None


def _setup() -> _Setup:
    global _setup_done
    with _setup_lock:
        if _setup_done is None:
            _setup_done = _probe()
        return _setup_done


def _probe() -> _Setup:
    """Find an interpreter the sandboxed user can run, and the most isolation the kernel grants."""
    uid_pool = pick_uid_pool() if os.geteuid() == 0 else None
    limits = {"AS": 1024**3, "NPROC": 16, "FSIZE": 1024**2, "CORE": 0, "CPU": 30}
    candidates = [sys.executable] + (_system_pythons() if uid_pool is not None else [])
    failures = []
    for python in candidates:
        for mode in ("full", "net", "none"):
            try:
                result, applied = _execute(
                    Program(_PROBE),
                    python=python,
                    uid_pool=uid_pool,
                    mode=mode,
                    limits=limits,
                    timeout_s=30,
                    max_output_bytes=4096,
                    max_disk_bytes=1024**2,
                )
            except RuntimeError as e:
                failures.append(f"{mode}: {e}")
                continue
            if result.passed:
                found = Isolation(uid_pool is not None, "network_cut" in applied, python, "private_mounts" in applied)
                return _Setup(found, uid_pool, mode)
            failures.append(f"{python}: {result.status}, {result.stderr.strip()[-300:]!r}")
            break  # the interpreter itself fails: the next one
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
    program: Program,
    *,
    python: str,
    uid_pool: range | None,
    mode: str,
    limits: dict[str, int],
    timeout_s: float,
    max_output_bytes: int,
    max_disk_bytes: int,
) -> tuple[ExecResult, list[str]]:
    """Run once; also returns what the bootstrap applied."""
    uid = lock_fd = workdir = proc = child = child_fd = None
    pipes: list[int] = []
    left_behind = None  # processes of the run's uid (zombies) the last sweep saw; None: no sweep yet

    def stop() -> None:
        nonlocal left_behind
        left_behind = _stop(proc, child, child_fd, uid)

    try:
        if uid_pool is not None:
            uid, lock_fd = claim_uid(uid_pool)
        report_r, report_w = os.pipe()
        result_r, result_w = os.pipe()
        pipes += [report_r, report_w, result_r, result_w]
        if mode != "full":  # a host folder, in a parent the program cannot rename entries in
            workdir = os.path.join(work_parent(), f"run-{os.urandom(6).hex()}")
            os.mkdir(workdir, 0o700)
            if uid is not None:
                os.chown(workdir, uid, uid)
        tasks_now = None if uid is not None else count_tasks_of(os.getuid())
        # plain arguments: the bootstrap would spend more time importing json than doing its work
        arguments = [str(report_w), str(result_w), mode, "" if uid is None else str(uid)]
        arguments += ["" if tasks_now is None else str(tasks_now), str(os.getpid()), python, workdir or ""]
        arguments += [str(max_disk_bytes), HARNESS, *(f"{name}={value}" for name, value in limits.items())]
        arguments += [f"hide={path}" for path in dict.fromkeys((*HIDDEN, *program.hidden))]
        start = time.monotonic()
        deadline = start + timeout_s
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", BOOTSTRAP, *arguments],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=workdir or "/",
            env={**_CLEAN_ENV, "HOME": workdir or "/", "TMPDIR": workdir or "/tmp"},
            start_new_session=True,
            pass_fds=(report_w, result_w),
        )
        for fd in (report_w, result_w):
            os.close(fd)
            pipes.remove(fd)
        applied = read_report(report_r, proc, deadline)
        child = next((int(a.split("=")[1]) for a in applied if a.startswith("child=")), None)
        applied = [a for a in applied if not a.startswith("child=")]
        child_fd = pidfd(child) if child is not None else None
        out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
        caps = {out_fd: max_output_bytes, err_fd: max_output_bytes, result_r: MAX_RESULT_BYTES}
        streams, outcome = communicate(proc, payload(program), deadline, caps, stop)
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
        for fd in [*pipes, child_fd]:
            if fd is not None:
                os.close(fd)
        if workdir is not None:
            remove_path(os.path.dirname(workdir), os.path.basename(workdir))
        if uid is not None:
            remove_files_of(uid)  # what it left in /tmp, /dev/shm, ...: the next run of this uid must not see it
        if lock_fd is not None:
            release_uid(lock_fd, clean=left_behind == 0)

    out, err = streams[out_fd], streams[err_fd]
    status, failure = _status(program, outcome, returncode, streams[result_r], err)
    stdout = out[:max_output_bytes].decode("utf-8", errors="replace")
    stderr = err[:max_output_bytes].decode("utf-8", errors="replace")
    if len(out) > max_output_bytes:
        stdout += f"\n[stdout cut at {max_output_bytes} bytes]"
    if len(err) > max_output_bytes:
        stderr += f"\n[stderr cut at {max_output_bytes} bytes]"
    if failure:
        stderr += ("\n" if stderr and not stderr.endswith("\n") else "") + failure + "\n"
    return ExecResult(status == "passed", status, returncode, stdout, stderr, seconds), applied


def _stop(proc: subprocess.Popen, child: int | None, child_fd: int | None, uid: int | None) -> int | None:
    """Kill the program and all it started; returns how many (dead, unreaped) processes of the uid are left.

    The program's session first (and its PID namespace with it): the bootstrap, still alive as the
    subreaper, then kills what it left behind, also processes that left the session. Then the
    bootstrap's group, and with a dedicated uid every process of that uid.
    """
    if child_fd is not None and not select.select([child_fd], [], [], 0)[0]:  # readable: it has exited
        try:  # alive, so its pid (and group id: it leads a session) cannot have been reused
            os.killpg(child, signal.SIGKILL)
        except OSError:
            pass
        end = time.monotonic() + 1.0
        while proc.returncode is None and time.monotonic() < end and not has_exited(proc.pid):
            time.sleep(0.002)
    if proc.returncode is None:  # the leader is not reaped yet, so its group id cannot have been reused
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return kill_processes_of(uid, reaped_by_caller=proc.pid) if uid is not None else None


def _status(program: Program, outcome: str, returncode: int | None, results: bytes, err: bytes) -> tuple[str, str]:
    """(status, a failure line to add to stderr or "")."""
    if outcome in ("timeout", "output_limit"):
        return outcome, ""
    if returncode == -signal.SIGXCPU:
        return "timeout", ""
    if returncode != 0:
        last = err.decode("utf-8", errors="replace").strip().splitlines()[-1:] or [""]
        return ("memory" if last[0].startswith("MemoryError") else "failed"), ""
    values, ended, problem = read_results(results)
    if problem:
        return "failed", problem
    if not ended or len(values) != len(program.probes):
        return "exited_early", ""
    failure = judge(program.checks, values)
    return ("failed", failure) if failure else ("passed", "")
