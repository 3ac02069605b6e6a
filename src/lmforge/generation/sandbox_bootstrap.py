"""The bootstrap every sandboxed run starts with (`generation/sandbox.py`), as source text for `python -I -S -c`.

It runs as lmforge's user, in a new session, with the clean environment, and:
1. dies with lmforge (PR_SET_PDEATHSIG), so a killed lmforge leaves no program running;
2. moves into new namespaces where the kernel allows ("full": network, mount, IPC and PID; "net":
   network only; as an ordinary user together with a user namespace that maps the user to itself);
3. becomes a child subreaper and forks the program's process. That child: dies with the bootstrap,
   starts a session of its own, sets up the private mounts (full mode: one size-limited tmpfs on
   /tmp that also backs /var/tmp, /dev/shm and /run/lock, the working folder inside it, empty
   read-only folders over the reference data, a /proc of its PID namespace), applies the limits,
   drops to the run's uid (as root) and executes the program's interpreter with the harness;
4. reports what it applied (and the child's pid) on the report pipe, or the error, and closes it;
5. waits for the child, then kills every process left over (orphans are re-parented to it, also one
   that left the session with setsid()), and exits with the child's status (a signal as that signal).

Arguments: report fd, result fd, mode (full / net / none), uid ("" = keep), the user's task count
("" = unknown), lmforge's pid, interpreter, working folder ("" = a private one in the tmpfs), tmpfs
size in bytes, the harness source, then NAME=value resource limits and hide=<folder> entries.
"""

BOOTSTRAP = r"""
import os, resource, signal, sys, time
report, result, mode, uid, tasks_now, parent, python, workdir, disk, harness = sys.argv[1:11]
rest = sys.argv[11:]
hidden = [a[5:] for a in rest if a.startswith("hide=")]
limits = {n: int(v) for n, v in (a.split("=", 1) for a in rest if not a.startswith("hide="))}
report, result, parent, disk = int(report), int(result), int(parent), int(disk)
uid = int(uid) if uid else None
tasks_now = int(tasks_now) if tasks_now else None
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
def check(ok, what):
    if not ok:
        e = ctypes.get_errno()
        raise OSError(e, what + ": " + os.strerror(e))
def prctl(option, arg):
    args = [ctypes.c_int(option)] + [ctypes.c_ulong(v) for v in (arg, 0, 0, 0)]
    check(libc.prctl(*args) == 0, "prctl(" + str(option) + ")")
def mount(source, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    check(libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) == 0, "mount " + target)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 4096, 16384, 1 << 18
step = "start"
try:
    prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(125)  # lmforge is gone already
    applied = []
    outer_uid, outer_gid = os.getuid(), os.getgid()
    user_ns = 0x10000000 if os.geteuid() != 0 else 0  # CLONE_NEWUSER: lets an ordinary user own the rest
    flags = {"full": 0x40000000 | 0x00020000 | 0x08000000 | 0x20000000, "net": 0x40000000, "none": 0}[mode]
    step = "unshare"
    if flags:
        check(libc.unshare(ctypes.c_int(flags | user_ns)) == 0, "unshare")
        applied.append("network_cut")
        if user_ns:
            applied.append("user_namespace")
            for name, text in (("setgroups", "deny"), ("uid_map", "%d %d 1" % (outer_uid, outer_uid)),
                               ("gid_map", "%d %d 1" % (outer_gid, outer_gid))):
                with open("/proc/self/" + name, "w") as f:
                    f.write(text)
    prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: orphans of the program come back here
    ready_r, ready_w = os.pipe()
    me = os.getpid()
    step = "fork"
    child = os.fork()
except BaseException as e:
    os.write(report, ("error " + step + ": " + repr(e) + "\n").encode())
    os._exit(127)

if child == 0:
    try:
        os.close(ready_r)
        os.setsid()
        if mode == "full":
            step = "mounts"
            mount("none", "/", None, MS_REC | MS_PRIVATE)
            for path in hidden:
                if os.path.isdir(path):
                    empty = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
                    mount("none", path, "tmpfs", empty, "size=4k,nr_inodes=4,mode=555")
            mount("none", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=%d,nr_inodes=16384,mode=1777" % disk)
            for target in ("/var/tmp", "/dev/shm", "/run/lock"):
                if os.path.isdir(target) and not os.path.islink(target):
                    source = "/tmp/.shared" + target.replace("/", "-")
                    os.mkdir(source)
                    os.chmod(source, 0o1777)
                    mount(source, target, None, MS_BIND)
            try:  # a /proc of the new PID namespace: other processes are not even listed
                mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
                applied.append("private_proc")
            except OSError:
                pass
            applied += ["private_mounts", "pid_namespace"]
            workdir = "/tmp/lmforge-run"
            os.mkdir(workdir, 0o700)
            if uid is not None:
                os.chown(workdir, uid, uid)
        os.chdir(workdir)
        os.environ["HOME"] = os.environ["TMPDIR"] = workdir
        step = "limits"
        if uid is None and "user_namespace" not in applied:  # RLIMIT_NPROC counts all the user's processes
            if tasks_now is None:
                del limits["NPROC"]  # cannot count the user's other processes: a limit could stop the program
            else:
                limits["NPROC"] += tasks_now  # the user's count includes processes outside the sandbox
        for name, value in limits.items():
            resource.setrlimit(getattr(resource, "RLIMIT_" + name), (value, value))
        prctl(38, 1)  # PR_SET_NO_NEW_PRIVS
        applied.append("no_new_privs")
        step = "user"
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            applied.append("own_user")
        prctl(1, signal.SIGKILL)  # dies with the bootstrap (set after the uid change, which clears it)
        if mode != "full" and os.getppid() != me:
            os._exit(125)  # the bootstrap is gone already
        os.set_inheritable(report, False)
        os.set_inheritable(result, True)
        os.write(ready_w, ("applied " + " ".join(applied) + "\n").encode())
        step = "exec " + python
        os.execv(python, [python, "-I", "-B", "-c", harness, str(result)])
    except BaseException as e:
        os.write(report, ("error " + step + ": " + repr(e) + "\n").encode())
        os._exit(127)

os.close(ready_w)
os.close(result)
line = b""
while not line.endswith(b"\n"):
    chunk = os.read(ready_r, 4096)
    if not chunk:
        break
    line += chunk
os.close(ready_r)
if line.startswith(b"applied "):
    os.write(report, line.rstrip(b"\n") + (" child=%d\n" % child).encode())
os.close(report)
_, status = os.waitpid(child, 0)


def children():
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/" + name + "/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == os.getpid():
                found.append(int(name))
    return found


for _ in range(2000):  # what the program left behind, orphans handed to this subreaper included
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        break
    for pid in children():
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    time.sleep(0.002)
if os.WIFSIGNALED(status):
    try:
        signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
    except (OSError, ValueError):  # SIGKILL and SIGSTOP keep their default anyway
        pass
    os.kill(os.getpid(), os.WTERMSIG(status))
os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)
"""
