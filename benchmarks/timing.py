"""Timing rules shared by the benchmark scripts, so that a rerun cannot print old or noisy figures as new.

- `time_rounds`: one warm-up round, kept apart and never counted, then at least 3 measured rounds; within
  each round every arm runs once, the starting arm rotating from round to round (round 0: A B C, round 1:
  B C A, ...), so a slow drift of the machine falls on every arm alike. The order is recorded.
- `load_average` is read at the start and end of every timed call; `load_refusal` says whether a row taken
  under that load may be written (see `default_max_load` for the threshold and why).
- `summarize` / `median_ratios`: median and spread (min-max and interquartile range) per arm, and ratios of
  medians.
- `reused_line`: the line a script prints when it reuses stored rows instead of measuring: which rows, with
  the date and commit that made them.

A script imports this file by putting benchmarks/ on sys.path (`sys.path.insert(0, str(HERE.parent))`,
then `import timing`): benchmarks are scripts beside the package, not part of it.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

MIN_ROUNDS = 3


def load_average() -> float:
    """The 1-minute load average: runnable (and uninterruptible) threads, averaged over about a minute."""
    return os.getloadavg()[0]


def default_max_load() -> float:
    """The load above which a timing row is refused: the number of CPUs plus one half.

    The 1-minute average decays over about a minute, so it also counts the benchmark's own threads (and
    those of the arm timed just before): a timing that keeps every core busy drives it to about the CPU
    count by itself, and a little above: on the 2-core machine with nothing else running, the
    causal_lm throughput benchmark read 2.00 to 2.07 (2026-12-07; its interpreter and the kernel's own
    threads wake now and then beside torch's two). A lower threshold would refuse a quiet machine's own
    measurement. Another process keeping half a core busy or more lifts the average past the threshold:
    its seconds would be inflated. A script exposes this as `--max-load` for machines where its own work
    uses fewer cores.
    """
    return float(os.cpu_count() or 1) + 0.5


def load_refusal(row: str, load_start: float, load_end: float, max_load: float) -> str | None:
    """None when a row timed under these loads may be written; otherwise the one line that says it is not."""
    if max(load_start, load_end) <= max_load:
        return None
    return (
        f"{row}: not written: 1-minute load average {load_start:.2f} at start, {load_end:.2f} at end, "
        f"above {max_load:g} (--max-load)"
    )


@dataclass
class Row:
    """One timed call of one arm. round is -1 for the warm-up round."""

    arm: str
    round: int
    seconds: float
    load_start: float
    load_end: float


@dataclass
class Timing:
    warmup: list[Row] = field(default_factory=list)  # never counted
    rows: list[Row] = field(default_factory=list)  # measured rounds, in the order they ran

    def order(self) -> list[str]:
        return [r.arm for r in self.rows]

    def seconds(self, max_load: float | None = None) -> dict[str, list[float]]:
        """Measured seconds per arm, leaving out rows above `max_load` when it is given."""
        out: dict[str, list[float]] = {}
        for r in self.rows:
            if max_load is None or load_refusal(r.arm, r.load_start, r.load_end, max_load) is None:
                out.setdefault(r.arm, []).append(r.seconds)
        return out


def time_rounds(
    arms: dict[str, Callable[[], float | None]],
    rounds: int = MIN_ROUNDS,
    clock: Callable[[], float] = time.perf_counter,
    load: Callable[[], float] = load_average,
) -> Timing:
    """Call each arm once as a warm-up, then `rounds` times interleaved with the others.

    An arm is a zero-argument callable. Its seconds are the wall time of the call, or the number it
    returns when it measures itself (a subprocess that reports its own seconds per step, leaving out its
    start-up). `clock` and `load` are parameters so that a test can drive them.
    """
    if rounds < MIN_ROUNDS:
        raise ValueError(f"rounds must be at least {MIN_ROUNDS}, got {rounds}")
    if not arms:
        raise ValueError("no arms to time")
    names = list(arms)
    result = Timing()

    def one(name: str, round_index: int) -> Row:
        load_start, started = load(), clock()
        reported = arms[name]()
        elapsed = clock() - started
        seconds = float(reported) if reported is not None else elapsed
        return Row(name, round_index, seconds, load_start, load())

    result.warmup = [one(name, -1) for name in names]
    for r in range(rounds):
        shift = r % len(names)
        result.rows += [one(name, r) for name in names[shift:] + names[:shift]]
    return result


def quartiles(values: list[float]) -> tuple[float, float]:
    """First and third quartiles (the 'inclusive' method: the min and max are the 0th and 100th percentile)."""
    if len(values) == 1:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def summarize(seconds: dict[str, list[float]]) -> dict[str, dict]:
    """Median and spread per arm: min, max, interquartile range and the number of rounds."""
    out = {}
    for arm, values in seconds.items():
        if not values:
            continue
        q1, q3 = quartiles(values)
        out[arm] = {
            "rounds": len(values),
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "q1": q1,
            "q3": q3,
            "iqr": q3 - q1,
        }
    return out


def median_ratios(summary: dict[str, dict], pairs: list[tuple[str, str]]) -> dict[str, float]:
    """median(a) / median(b) for each (a, b) whose arms were both measured."""
    return {
        f"{a} / {b}": summary[a]["median"] / summary[b]["median"] for a, b in pairs if a in summary and b in summary
    }


def format_summary(summary: dict[str, dict], unit: float = 1.0, unit_name: str = "s") -> list[str]:
    """One line per arm: median, min-max and IQR, in `unit_name` (seconds divided by `unit`)."""
    lines = []
    for arm, s in summary.items():
        lines.append(
            f"{arm:<24} median {s['median'] / unit:9.4f} {unit_name}  "
            f"min-max {s['min'] / unit:.4f}-{s['max'] / unit:.4f}  IQR {s['iqr'] / unit:.4f}  ({s['rounds']} rounds)"
        )
    return lines


def reused_line(records: list[dict]) -> str:
    """The line a script prints when it reuses stored rows: each row's name, date and commit.

    A record names itself by "id" (or "row"), and carries "date" and "commit" as it was stored; a field
    missing from an older record is said to be missing, not guessed.
    """
    parts = []
    for r in records:
        name = r.get("id") or r.get("row") or "unnamed row"
        date = r.get("date") or "date not recorded"
        commit = (r.get("commit") or "")[:10] or "commit not recorded"
        parts.append(f"{name} ({date}, {commit})")
    return f"reused {len(records)} stored row(s), not measured now (--reuse): " + "; ".join(parts)
