"""The unprivileged users sandboxed programs run as, and the processes running under a user id.

When lmforge runs as root, each sandboxed run (`generation/sandbox.py`) gets a user and group id of its own
from a pool of unnamed ids: root is exempt from RLIMIT_NPROC, so only a separate id makes the process
limit hold, keeps root-owned files out of the program's reach, and lets every process the run left
behind (also one that called setsid()) be found and killed afterwards. An id is held with a lock file
for the length of the run, so concurrent runs, also in other lmforge processes, never share one.
The process helpers read /proc (Linux); without it they find nothing.
"""

from __future__ import annotations

import fcntl
import grp
import itertools
import os
import pwd
import signal
import stat
import tempfile
import time
from pathlib import Path

# Above login users and the ranges systemd hands to dynamic users and containers; the second start fits
# containers that map only uids 0-65535. A range is used only if no user or group has a name in it.
UID_POOL_STARTS = (2_000_000_000, 40_000)
UID_POOL_SIZE = 64


def pick_uid_pool() -> range:
    """Ids for sandboxed runs: unnamed, and mapped in this (possibly namespaced) system."""
    uid_map, gid_map = _id_map("/proc/self/uid_map"), _id_map("/proc/self/gid_map")
    for start in UID_POOL_STARTS:
        ids = range(start, start + UID_POOL_SIZE)
        if all(_in_map(uid_map, i) and _in_map(gid_map, i) and not _has_name(i) for i in ids):
            return ids
    raise RuntimeError(f"sandbox: no free range of {UID_POOL_SIZE} user ids at {UID_POOL_STARTS}")


def _id_map(path: str) -> list[tuple[int, int]]:
    try:
        with open(path) as f:
            rows = [line.split() for line in f]
    except OSError:  # no user namespaces at all: every id exists
        return [(0, 2**32 - 1)]
    return [(int(inside), int(inside) + int(count)) for inside, _, count in rows]


def _in_map(ranges: list[tuple[int, int]], i: int) -> bool:
    return any(low <= i < high for low, high in ranges)


def _has_name(i: int) -> bool:
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(i)
            return True
        except KeyError:
            pass
    return False


def _lock_folder() -> Path:
    """A root-only folder of lock files, one per uid in the pool (flock: released when the holder dies)."""
    base = "/run" if os.path.isdir("/run") and os.access("/run", os.W_OK) else tempfile.gettempdir()
    folder = Path(base) / "lmforge-sandbox-uids"
    folder.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise RuntimeError(f"sandbox: {folder} must be a folder owned by uid {os.geteuid()} with mode 0700")
    return folder


_uid_turn = itertools.count()  # where the next claim starts looking: uids are used in turn


def claim_uid(pool: range) -> tuple[int, int]:
    """A uid of the pool that no other run (in any process) holds, and the open lock file that holds it.

    The lock file stays non-empty from the claim until a release that left no process of the uid
    behind; only such a uid (a run whose parent died, or zombies not reaped yet, which count against
    RLIMIT_NPROC) costs a sweep of /proc here, and it is passed over while a clean one is free.
    """
    folder = _lock_folder()
    while True:
        start = next(_uid_turn)
        for attempt in ("clean", "any"):
            for k in range(len(pool)):
                uid = pool[(start + k) % len(pool)]
                fd = os.open(folder / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                if os.fstat(fd).st_size == 0 or kill_processes_of(uid) == 0 or attempt == "any":
                    os.pwrite(fd, b"in use\n", 0)
                    return uid, fd
                os.close(fd)
        time.sleep(0.05)  # every uid is in use by a running program


def release_uid(fd: int, clean: bool) -> None:
    """Give the uid back; `clean`: a sweep after the run found no process of it, not even a zombie."""
    if clean:
        os.ftruncate(fd, 0)
    os.close(fd)


def processes() -> list[tuple[int, dict[str, str]]]:
    """(pid, /proc/<pid>/status fields) of every process, zombies included; [] without /proc."""
    try:
        names = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []
    return [(int(name), fields) for name in names if (fields := _proc_status(name)) is not None]


def _proc_status(pid: int | str) -> dict[str, str] | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:  # gone meanwhile
        return None


def _is_live(fields: dict[str, str]) -> bool:
    return fields.get("State", "Z").split()[0] not in ("Z", "X")  # a zombie cannot be killed, only reaped


def _uids(fields: dict[str, str]) -> list[int]:
    return [int(v) for v in fields["Uid"].split()[:3]]  # real, effective, saved


def count_tasks_of(uid: int) -> int | None:
    """Processes and threads the user runs now (what RLIMIT_NPROC counts); None without /proc."""
    if not os.path.isdir("/proc"):
        return None
    return sum(int(f.get("Threads", "1")) for _, f in processes() if _uids(f)[0] == uid)


def kill_processes_of(uid: int, reaped_by_caller: int | None = None) -> int:
    """SIGKILL every live process of `uid` (a sandbox id: all of them are a run's) until none is left.

    Returns the number of its zombies (dead, not reaped yet) seen last, not counting `reaped_by_caller`
    (the caller's own child, which it reaps next); -1 if some process would not die.
    """
    for _ in range(200):
        mine = [(pid, fields) for pid, fields in processes() if uid in _uids(fields)]
        pids = [pid for pid, fields in mine if _is_live(fields)]
        if not pids:
            return sum(pid != reaped_by_caller for pid, _ in mine)
        for pid in pids:
            # through a pidfd, checked after opening, so a pid reused by another process is never hit
            fd = pidfd(pid)
            if fd is None:
                continue
            try:
                fields = _proc_status(pid)
                if fields is not None and _is_live(fields) and uid in _uids(fields):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
            except OSError:
                pass
            finally:
                os.close(fd)
        time.sleep(0.005)
    return -1


def pidfd(pid: int) -> int | None:
    """A file descriptor that refers to the process itself (never to a later one with the same pid)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None
