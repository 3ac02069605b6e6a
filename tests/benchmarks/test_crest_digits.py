"""benchmarks/crest/digits.py (CReST on long-tailed 8x8 digits) on a tiny setting: the views, the draw, and
the selection of pseudo-labels between generations (Wei et al., CVPR 2021, eq. 2). The script sits beside
the package, so it is imported by path."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
import torch  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "crest" / "digits.py"


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


digits = load("crest_digits", SCRIPT)


@pytest.fixture(autouse=True)
def one_thread():
    """The script's default: threads only slow a 64-128-10 MLP down."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def split():
    x, y = digits.load_pool()
    return digits.make_split(x, y, gamma=10, seed=1, s=digits.Settings())


def test_held_out_sets_are_balanced_and_disjoint_from_the_long_tail(split):
    s = digits.Settings()
    assert torch.bincount(split.y[split.test], minlength=10).tolist() == [s.test_per_class] * 10
    assert torch.bincount(split.y[split.val], minlength=10).tolist() == [s.val_per_class] * 10
    sets = [set(split.test.tolist()), set(split.val.tolist()), set(split.labeled.tolist()),
            set(split.unlabeled.tolist())]  # fmt: skip
    assert sum(len(a) for a in sets) == len(set().union(*sets))
    # labeled counts in class-id order, the head first in class_order: the rates must read them that way
    assert torch.bincount(split.y[split.labeled], minlength=10).tolist() == split.labeled_counts
    assert split.labeled_counts[split.class_order[0]] == max(split.labeled_counts)
    assert split.labeled_counts[split.class_order[-1]] == min(split.labeled_counts)


def test_views_move_pixels_with_zero_fill_and_keep_the_range():
    gen = torch.Generator().manual_seed(0)
    image = torch.zeros(1, 64)
    image[0, 3 * 8 + 3] = 1.0  # one lit pixel at (3, 3)
    moved = [digits.weak_view(image, gen).view(8, 8).nonzero().tolist()[0] for _ in range(50)]
    assert all(abs(r - 3) <= 1 and abs(c - 3) <= 1 for r, c in moved)
    assert len({tuple(p) for p in moved}) > 1
    corner = torch.zeros(1, 64)
    corner[0, 0] = 1.0
    assert {digits.shift(corner, 1, gen).sum().item() for _ in range(50)} == {0.0, 1.0}  # moved out: zero fill
    strong = digits.strong_view(torch.rand(200, 64), gen, digits.Settings())
    assert strong.min() >= 0 and strong.max() <= 1
    assert ((strong.view(200, 8, 8) == 0).sum(dim=(1, 2)) >= 9).all()  # the 3x3 cutout


def test_crest_generation_two_adds_floor_of_count_times_rate_per_class(split):
    s = digits.Settings(generations=2)
    run = digits.run_arm("crest", split, gamma=10, seed=1, lr=3e-3, steps=20, s=s)
    first, second = run["generations"]
    # mu_l = (N_{L+1-l} / N_1) ** (1/3) from the labeled counts, computed here without the library
    by_rank = sorted(split.labeled_counts, reverse=True)
    rates = {c: (by_rank[len(by_rank) - 1 - rank] / by_rank[0]) ** (1 / 3) for rank, c in enumerate(split.class_order)}
    assert first["labeled"] == len(split.labeled)
    assert sum(first["predicted_per_class"]) == len(split.unlabeled)
    for c in range(10):
        assert first["added_per_class"][c] == math.floor(first["predicted_per_class"][c] * rates[c] + 1e-9)
    assert second["labeled"] == len(split.labeled) + sum(first["added_per_class"]) > len(split.labeled)
    assert "predicted_per_class" not in second  # the last generation's pseudo-labels feed nothing


def test_runs_repeat_exactly_and_arms_differ(split):
    s = digits.Settings(generations=1)
    a = digits.run_arm("fixmatch", split, gamma=10, seed=1, lr=3e-3, steps=10, s=s)
    b = digits.run_arm("fixmatch", split, gamma=10, seed=1, lr=3e-3, steps=10, s=s)
    c = digits.run_arm("supervised", split, gamma=10, seed=1, lr=3e-3, steps=10, s=s)
    assert a["test"] == b["test"]
    assert c["generations"][0]["mask_rate"] == 0.0
