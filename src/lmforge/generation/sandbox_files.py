"""The sandbox's folders (`generation/sandbox.py`): where working folders live, and removing what a program left.

Every removal here works on file descriptors and never follows a symlink: a program owns its working
folder and may have replaced any part of it with a link to somewhere else (root would then delete or
change that place). Folders are opened with O_NOFOLLOW | O_DIRECTORY relative to an open parent, and
their contents removed through that descriptor (`*at` calls), so a rename or a link placed during the
walk changes nothing outside the folder.

Working folders on the host file system (used where the sandbox has no mount namespace of its own)
live in a per-process parent owned by lmforge's user with mode 0711: the program can enter its own
folder but cannot rename it, replace it or list its neighbours.
"""

from __future__ import annotations

import atexit
import errno
import os
import re
import stat
import tempfile
import threading

# World-writable places a program may leave files in; with a uid of its own, what that uid owns there
# is removed after each run (sandbox.py mounts private, size-limited copies of them where it can).
SHARED_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
_PARENT_PREFIX = "lmforge-sandbox-"
_parent_lock = threading.Lock()
_parent: str | None = None


def work_parent() -> str:
    """This process's folder of working folders (0711, created once, removed at exit), clearing stale
    ones of processes that were killed."""
    global _parent
    with _parent_lock:
        if _parent is None or not os.path.isdir(_parent):
            _remove_stale_parents()
            _parent = tempfile.mkdtemp(prefix=f"{_PARENT_PREFIX}{os.getpid()}-")
            os.chmod(_parent, 0o711)
            atexit.register(remove_path, *os.path.split(_parent))  # a killed process's: the next one's job
        return _parent


def _remove_stale_parents() -> None:
    """Parents left by lmforge processes that were killed before they could clean up."""
    base = tempfile.gettempdir()
    pattern = re.compile(re.escape(_PARENT_PREFIX) + r"(\d+)-")
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        match = pattern.match(name)
        if match is None or _alive(int(match.group(1))):
            continue
        try:
            st = os.lstat(os.path.join(base, name))
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
            remove_path(base, name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_path(parent: str, name: str) -> None:
    """Remove `parent/name` (a file, link or whole folder tree) without following any symlink below `parent`.

    Folders the program made unreadable (chmod 000) are opened without read permission (O_PATH) and
    made accessible again through /proc/self/fd, which names the very folder opened, never a link.
    """
    try:
        parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        _remove_entry(parent_fd, name)
    finally:
        os.close(parent_fd)


def _remove_entry(parent_fd: int, name: str) -> None:
    # An explicit stack, not recursion: a program may nest folders thousands deep.
    stack = [(parent_fd, name, None)]  # (folder fd, entry name, fd of that entry once opened)
    opened: list[int] = []
    try:
        while stack:
            dir_fd, entry, fd = stack[-1]
            if fd is None:
                try:
                    st = os.stat(entry, dir_fd=dir_fd, follow_symlinks=False)
                except FileNotFoundError:
                    stack.pop()
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    _ignore_missing(os.unlink, entry, dir_fd)
                    stack.pop()
                    continue
                fd = _open_folder(dir_fd, entry, st)
                if fd is None:
                    stack.pop()
                    continue
                opened.append(fd)
                stack[-1] = (dir_fd, entry, fd)
                children = os.listdir(fd)
                if children:
                    stack.extend((fd, child, None) for child in children)
                    continue
            # its children were handled above it on the stack (what could not be removed stays)
            stack.pop()
            opened.remove(fd)
            os.close(fd)
            _ignore_missing(os.rmdir, entry, dir_fd)
    finally:
        for fd in opened:
            os.close(fd)


def _open_folder(dir_fd: int, name: str, st: os.stat_result) -> int | None:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except PermissionError:  # made unreadable by its owner (only matters when we are not root)
        try:
            path_fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            return None
        try:
            os.chmod(f"/proc/self/fd/{path_fd}", 0o700)
            fd = os.open(name, flags, dir_fd=dir_fd)
        except OSError:
            return None
        finally:
            os.close(path_fd)
    except OSError:  # replaced by a link or a file meanwhile, or gone
        return None
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):  # swapped between stat and open
        os.close(fd)
        return None
    if opened.st_mode & 0o700 != 0o700 and opened.st_uid == os.geteuid():
        os.fchmod(fd, 0o700)  # a folder without write or search permission for its owner
    return fd


def _ignore_missing(call, name: str, dir_fd: int) -> None:
    try:
        call(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EACCES, errno.EPERM, errno.EBUSY):
            raise


def remove_files_of(uid: int, places: tuple[str, ...] = SHARED_WRITABLE) -> int:
    """Remove everything `uid` owns in the world-writable `places` (and their world-writable
    subfolders), without following symlinks; returns how many entries were removed."""
    removed = 0
    seen = set()
    for place in (*places, tempfile.gettempdir()):
        real = os.path.realpath(place)
        if real in seen or not os.path.isdir(real):
            continue
        seen.add(real)
        removed += _remove_files_of(uid, real)
    return removed


def _remove_files_of(uid: int, folder: str) -> int:
    removed = 0
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            names = os.listdir(current)
        except OSError:
            continue
        for name in names:
            try:
                st = os.lstat(os.path.join(current, name))
            except OSError:
                continue
            if st.st_uid == uid:
                remove_path(current, name)
                removed += 1
            elif stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_IWOTH and len(pending) < 1000:
                pending.append(os.path.join(current, name))  # others may create entries in it
    return removed
