"""The sandbox's pipes to one running program (`generation/sandbox.py`): the bootstrap's report of what it
applied, then the program's stdin fed and its stdout / stderr collected under a deadline and a size
cap, without deadlock and without reaping the process (its group id stays reserved until the caller
reaps it)."""

from __future__ import annotations

import os
import selectors
import subprocess
import time
from collections.abc import Callable

from lmforge.generation.sandbox_users import pidfd


def read_report(fd: int, proc: subprocess.Popen, deadline: float) -> list[str]:
    """What the bootstrap applied (read until its exec closes the pipe); RuntimeError if it failed.

    Past the deadline (a machine too busy to start the bootstrap in time) it returns [] and the run
    ends as a timeout.
    """
    text = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while (remaining := deadline - time.monotonic()) > 0 and sel.select(remaining):
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            text += chunk
    lines = text.decode(errors="replace").splitlines()
    for line in lines:
        if line.startswith("error "):
            raise RuntimeError(f"sandbox setup failed: {line[len('error ') :]}")
    for line in lines:
        if line.startswith("applied "):
            return line.split()[1:]
    if time.monotonic() < deadline:  # the bootstrap died before reporting (its interpreter failed)
        proc.wait()
        why = proc.stderr.read(4096).decode(errors="replace").strip() or f"exit status {proc.returncode}"
        raise RuntimeError(f"sandbox setup failed: {why}")
    return []


def communicate(
    proc: subprocess.Popen, source: bytes, deadline: float, caps: dict[int, int], stop: Callable[[], None]
) -> tuple[dict[int, bytes], str]:
    """Feed stdin and collect the streams of `caps` (stdout, stderr, the result pipe), without deadlock,
    until the program ends or is cut short.

    Returns ({fd: bytes}, outcome), outcome "exited", "timeout" or "output_limit". A stream keeps at
    most its cap + 1 bytes (the extra byte tells that it was cut). `stop` kills all that still runs; it
    is called before the pipes are drained, so processes the program left behind cannot hold them open.
    """
    buffers = {fd: bytearray() for fd in caps}
    stdin_fd = proc.stdin.fileno()
    pending = memoryview(source)
    exit_fd = pidfd(proc.pid)
    sel = selectors.DefaultSelector()
    for fd in (*buffers, stdin_fd):
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_WRITE if fd == stdin_fd else selectors.EVENT_READ)
    if exit_fd is not None:
        sel.register(exit_fd, selectors.EVENT_READ)
    outcome = None
    try:
        while outcome is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                outcome = "timeout"
                break
            # without a pidfd (old kernels, other systems) the exit is noticed by polling
            events = sel.select(remaining if exit_fd is not None else min(remaining, 0.02))
            if exit_fd is None and has_exited(proc.pid):
                outcome = "exited"
            for key, _ in events:
                if key.fd == exit_fd:
                    outcome = outcome or "exited"
                elif key.fd == stdin_fd:
                    try:
                        pending = pending[os.write(stdin_fd, pending[: 1 << 16]) :]
                    except BlockingIOError:
                        pass
                    except BrokenPipeError:  # the interpreter is gone; its exit is reported next
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(stdin_fd)
                        proc.stdin.close()
                elif read_into(key.fd, buffers, caps, sel):
                    outcome = "output_limit"
        stop()
        for fd in (stdin_fd, exit_fd):
            if fd is not None and fd in sel.get_map():
                sel.unregister(fd)
        drain_until = time.monotonic() + 1.0  # the pipes close as soon as every writer is dead
        while sel.get_map() and (remaining := drain_until - time.monotonic()) > 0:
            for key, _ in sel.select(remaining):
                if read_into(key.fd, buffers, caps, sel) and outcome == "exited":
                    outcome = "output_limit"
    finally:
        sel.close()
        if exit_fd is not None:
            os.close(exit_fd)
    return {fd: bytes(buffer) for fd, buffer in buffers.items()}, outcome


def read_into(fd: int, buffers: dict[int, bytearray], caps: dict[int, int], sel: selectors.BaseSelector) -> bool:
    """Read what is there; True once the stream passed its cap (what is past cap + 1 is dropped)."""
    try:
        chunk = os.read(fd, 1 << 16)
    except BlockingIOError:
        return False
    if not chunk:
        sel.unregister(fd)
        return False
    buffer = buffers[fd]
    buffer += chunk[: caps[fd] + 1 - len(buffer)]
    return len(buffer) > caps[fd]


def has_exited(pid: int) -> bool:
    """Whether the child ended, without reaping it (its process group id stays reserved until then)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
