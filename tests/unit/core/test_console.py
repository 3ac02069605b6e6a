"""Progress for a log file (plain lines, no carriage returns) and for a terminal (tqdm), and NO_COLOR."""

import pytest

from lmforge.core import console
from lmforge.core.console import LineProgress, progress_bar


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Captured:
    def __init__(self, capsys):
        self.capsys, self.text = capsys, ""

    def getvalue(self) -> str:
        self.text += self.capsys.readouterr().err
        return self.text


@pytest.fixture
def stderr(capsys):
    """What the code writes to sys.stderr (pytest's capture: not a terminal)."""
    return Captured(capsys)


def test_a_log_gets_a_plain_line_every_interval_and_one_at_the_end(stderr, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(console.time, "monotonic", clock)
    bar = LineProgress(total=40, desc="train", unit="step", every=30)
    for step in range(40):
        clock.now += 1.0  # a step a second: a line at 30 s, then the end
        bar.update(1)
        bar.set_postfix(loss=f"{1 / (step + 1):.4f}")
    bar.close()
    bar.close()  # closing twice writes nothing more
    lines = stderr.getvalue().splitlines()
    assert "\r" not in stderr.getvalue()
    assert lines == [
        "train: 30/40 step (75%), 1.00 step/s, loss=0.0345",
        "train: 40/40 step (100%), 1.00 step/s, loss=0.0250",
    ]


def test_an_inner_loop_that_a_terminal_would_erase_leaves_no_line(stderr):
    for _ in LineProgress(range(5), desc="eval", leave=False, every=30):
        pass
    assert stderr.getvalue() == ""
    assert list(LineProgress(range(3), desc="eval", every=30)) == [0, 1, 2]
    assert stderr.getvalue().startswith("eval: 3/3 it (100%), ") and stderr.getvalue().count("\n") == 1


def test_progress_bar_picks_plain_lines_when_stderr_is_not_a_terminal(stderr):
    assert isinstance(progress_bar(total=3, desc="x"), LineProgress)  # StringIO is no terminal
    assert not isinstance(progress_bar(total=3, desc="x", disable=True), LineProgress)


def test_no_color_turns_colours_off(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert console.use_color()
    monkeypatch.setenv("NO_COLOR", "1")
    assert not console.use_color()
