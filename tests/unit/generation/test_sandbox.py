"""The sandbox survives what model-written programs do, and reports each as a failure.

Every destructive program first checks, inside the sandbox, that the limit meant to stop it is in
place, and exits with status 3 otherwise, so a broken limit fails the test instead of harming the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

import lmforge
from lmforge.generation.sandbox import STATUSES, ExecResult, isolation, run_many, run_python
from lmforge.generation.sandbox_users import processes

OWN_USER = pytest.mark.skipif(
    not isolation().own_user, reason="programs run as this user (lmforge is not root), who may do this"
)


def processes_running(token: str) -> list[int]:
    """Live processes whose command line holds `token` (zombies waiting to be reaped do not count)."""
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{name}/cmdline").read_bytes()
            state = next(line for line in Path(f"/proc/{name}/status").read_text().splitlines() if line[:6] == "State:")
        except (OSError, StopIteration):
            continue
        if token.encode() in command and state.split()[1] not in ("Z", "X"):
            found.append(int(name))
    return found


def test_a_passing_program_passes_and_its_output_comes_back_without_the_end_marker():
    result = run_python(
        "def add(a, b):\n    return a + b\n\nassert add(1, 2) == 3\nprint('ok')\nprint('no newline', end='')"
    )
    assert isinstance(result, ExecResult)
    assert (result.passed, result.status, result.returncode) == (True, "passed", 0)
    assert result.stdout == "ok\nno newline"
    assert result.stderr == ""
    assert 0 < result.seconds < 10


def test_a_failing_assert_fails():
    result = run_python("def add(a, b):\n    return a - b\n\nassert add(1, 2) == 3")
    assert (result.passed, result.status, result.returncode) == (False, "failed", 1)
    assert "AssertionError" in result.stderr


@pytest.mark.parametrize(
    "exit_call", ["import sys; sys.exit(0)", "import os; os._exit(0)", "raise SystemExit", "exit()"]
)
def test_exiting_with_status_0_before_the_asserts_does_not_pass(exit_call):
    # flush: os._exit() drops what print() buffered
    result = run_python(f"print('solved', flush=True)\n{exit_call}\nassert False, 'never reached'")
    assert (result.passed, result.status, result.returncode) == (False, "exited_early", 0)
    assert result.stdout == "solved\n"


def test_an_exit_status_set_at_exit_fails():
    result = run_python("import atexit, os\natexit.register(os._exit, 1)\nassert True")
    assert (result.passed, result.status, result.returncode) == (False, "failed", 1)


def test_limits_user_and_environment_inside_the_sandbox(monkeypatch):
    monkeypatch.setenv("LMFORGE_TEST_SECRET", "hunter2-in-os-environ")
    program = """
        import json, os, resource
        limits = {n: resource.getrlimit(getattr(resource, "RLIMIT_" + n)) for n in ("AS", "NPROC", "FSIZE", "CORE")}
        no_new_privs = [line for line in open("/proc/self/status") if line.startswith("NoNewPrivs")]
        print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "limits": limits,
                          "env": dict(os.environ), "cwd": os.getcwd(), "files": os.listdir("."),
                          "no_new_privs": no_new_privs[0].split()[1]}))
    """
    result = run_python(textwrap.dedent(program), memory_mb=512, max_processes=8, max_file_bytes=1000)
    assert result.passed, result.stderr
    inside = json.loads(result.stdout)
    assert inside["limits"]["AS"] == [512 * 1024 * 1024] * 2
    assert inside["limits"]["FSIZE"] == [1000, 1000]
    assert inside["limits"]["CORE"] == [0, 0]
    assert inside["limits"]["NPROC"][0] >= 8
    assert inside["no_new_privs"] == "1"
    assert set(inside["env"]) <= {
        "PATH",
        "HOME",
        "TMPDIR",
        "LANG",
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
    }
    assert inside["env"]["HOME"] == inside["env"]["TMPDIR"] == inside["cwd"]
    assert inside["files"] == []
    if isolation().own_user:
        assert inside["uid"] != 0 and inside["gid"] != 0 and inside["groups"] == []
        assert inside["limits"]["NPROC"] == [8, 8]  # the run's own uid: it counts this run's processes only


def test_the_working_folder_is_fresh_and_removed_afterwards():
    program = (
        "import os\nprint(os.listdir('.'))\nos.makedirs('sub/deeper')\nopen('sub/deeper/f.txt', 'w').write('x')\n"
        "os.chmod('sub', 0)  # an unreadable folder must not stop the clean-up\nprint(os.getcwd())"
    )
    first, second = run_python(program), run_python(program)
    assert first.passed and second.passed, (first.stderr, second.stderr)
    for result in (first, second):
        listing, folder = result.stdout.splitlines()
        assert listing == "[]"  # nothing of the first run in the second one's folder
        if not isolation().private_mounts:  # else the folder was in the run's own tmpfs, gone with it
            assert not Path(folder).exists()


def test_an_infinite_loop_times_out_and_its_grandchildren_are_killed():
    token = f"30.{time.time_ns() // 1000 % 10**6:06d}"  # a sleep no other process has: found by its command line
    program = f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep({token})"])
        escaped = subprocess.Popen([sys.executable, "-c", "import time; time.sleep({token})"], start_new_session=True)
        time.sleep(0.3)
        print("started" if child.poll() is None and escaped.poll() is None else "died", flush=True)
        while True:
            pass
    """
    start = time.monotonic()
    result = run_python(textwrap.dedent(program), timeout_s=1.5)
    assert time.monotonic() - start < 5
    assert (result.passed, result.status, result.returncode) == (False, "timeout", -9)
    assert result.stdout == "started\n"
    assert processes_running(token) == []  # the child and the one that left the session with setsid()


def test_a_fork_bomb_is_stopped_by_the_process_limit():
    program = """
        import os, resource
        if resource.getrlimit(resource.RLIMIT_NPROC)[0] > 1000:
            os._exit(3)
        print(os.getuid(), flush=True)
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """
    result = run_python(textwrap.dedent(program), timeout_s=2, max_processes=16)
    assert result.returncode != 3, "RLIMIT_NPROC was not set"
    assert not result.passed and result.status in ("timeout", "failed")
    if isolation().own_user:
        uid = int(result.stdout)
        left = [
            pid
            for pid, f in processes()
            if f["State"].split()[0] not in ("Z", "X") and uid in map(int, f["Uid"].split())
        ]
        assert left == []
    assert run_python("import os\nassert os.fork is not None").passed  # the machine still runs programs


def test_allocating_10_gb_fails_with_memory():
    program = """
        import os, resource
        if resource.getrlimit(resource.RLIMIT_AS)[0] > 2 * 1024**3:
            os._exit(3)
        block = bytearray(10 * 1024**3)
        print("allocated")
    """
    result = run_python(textwrap.dedent(program), memory_mb=1024)
    assert result.returncode != 3, "RLIMIT_AS was not set"
    assert (result.passed, result.status) == (False, "memory")
    assert "allocated" not in result.stdout


@OWN_USER
def test_a_file_outside_its_folder_cannot_be_deleted():
    tmp_path = Path(tempfile.mkdtemp(dir="/run"))  # /tmp is private to each run where it can be
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    os.chmod(tmp_path, 0o755)  # visible to others, writable by its owner only
    program = f"import os, shutil\nos.remove({str(keep)!r})\nshutil.rmtree({str(tmp_path)!r})"
    result = run_python(program)
    assert (result.passed, result.status) == (False, "failed")
    assert "Permission" in result.stderr
    assert keep.read_text() == "precious"
    shutil.rmtree(tmp_path)


def test_a_secret_in_the_parents_environment_is_not_readable(monkeypatch):
    monkeypatch.setenv("LMFORGE_TEST_SECRET", "hunter2-in-os-environ")
    result = run_python("import os\nprint(os.environ.get('LMFORGE_TEST_SECRET'))")
    assert result.stdout == "None\n"
    if not (isolation().own_user or isolation().network_cut):
        pytest.skip(
            "without a separate uid or user namespace, /proc/<pid>/environ of this user's processes is readable"
        )
    # A parent that had the secret from its start (so it is in /proc/<pid>/environ); the program searches them all.
    program = """
        import os
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if b"hunter2" in open(f"/proc/{pid}/environ", "rb").read():
                    found.append(pid)
            except OSError:
                pass
        print("found:", found)
    """
    parent = (
        "import sys\nfrom lmforge.generation.sandbox import run_python\n"
        f"result = run_python({textwrap.dedent(program)!r})\nprint(result.stdout, result.stderr)"
    )
    env = {
        **os.environ,
        "LMFORGE_TEST_SECRET": "hunter2-from-the-start",
        "PYTHONPATH": str(Path(lmforge.__file__).parents[1]),
    }
    out = subprocess.run([sys.executable, "-c", parent], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "found: []" in out.stdout
    assert "hunter2" not in out.stdout


def test_huge_output_is_cut_without_hanging():
    start = time.monotonic()
    result = run_python("while True:\n    print('x' * 10_000)", max_output_bytes=50_000, timeout_s=20)
    assert time.monotonic() - start < 5
    assert (result.passed, result.status) == (False, "output_limit")
    assert len(result.stdout) < 50_100 and result.stdout.endswith("[stdout cut at 50000 bytes]")


def test_network_is_cut():
    if not isolation().network_cut:
        pytest.skip("this kernel or container refuses a new network namespace: sandboxed programs keep the network")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # reachable from here
        result = run_python(
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=5)\nprint('connected')"
        )
    assert (result.passed, result.status) == (False, "failed")
    assert "connected" not in result.stdout
    assert "unreachable" in result.stderr


def test_run_many_keeps_the_input_order():
    programs = [f"import time\ntime.sleep({0.1 * (4 - i)})\nprint({i})" for i in range(5)]
    programs.append("assert False")
    results = run_many(programs, workers=3, timeout_s=10)
    assert [r.stdout for r in results[:5]] == [f"{i}\n" for i in range(5)]
    assert [r.status for r in results] == ["passed"] * 5 + ["failed"]
    assert all(r.status in STATUSES for r in results)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="timeout_s"):
        run_python("pass", timeout_s=0)
    with pytest.raises(ValueError, match="workers"):
        run_many(["pass"], workers=0)
    with pytest.raises(TypeError, match="source text"):
        run_python(b"pass")  # type: ignore[arg-type]
