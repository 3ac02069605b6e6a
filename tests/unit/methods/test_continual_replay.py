"""The reservoir buffer of experience replay: its capacity, Algorithm R's uniform inclusion probability
capacity / N (checked over many seeded runs), and a save -> JSON -> load that continues exactly."""

import json
import random

import pytest

from lmforge.methods.continual.replay import ReservoirBuffer


def test_capacity_is_respected_and_the_first_items_fill_it():
    buffer = ReservoirBuffer(capacity=5, seed=0)
    for i in range(3):
        buffer.add(i)
    assert len(buffer) == 3 and sorted(buffer.items) == [0, 1, 2]
    for i in range(3, 1000):
        buffer.add(i)
        assert len(buffer) == min(i + 1, 5)
    assert buffer.seen == 1000
    assert len(set(buffer.items)) == 5  # each item is offered once, so no duplicates


def test_each_item_is_kept_with_probability_capacity_over_n():
    """Over 4000 seeded runs of a 20-item stream into 5 slots, each item's inclusion frequency is 5/20.

    Per item the count is Binomial(4000, 0.25): standard deviation 27.4 around 1000. The chi-square statistic
    over the 20 items has 19 degrees of freedom (a conservative reference: the inclusions of one run are
    negatively correlated, which only shrinks it); its 0.999 quantile is 43.82.
    """
    n_items, capacity, runs = 20, 5, 4000
    counts = [0] * n_items
    for seed in range(runs):
        buffer = ReservoirBuffer(capacity, seed=seed)
        for i in range(n_items):
            buffer.add(i)
        for item in buffer.items:
            counts[item] += 1
    expected = runs * capacity / n_items
    frequencies = [c / runs for c in counts]
    assert max(abs(f - capacity / n_items) for f in frequencies) < 0.03  # about 4.4 standard deviations
    chi_square = sum((c - expected) ** 2 / expected for c in counts)
    assert chi_square < 43.82
    # the early items (always taken at first) and the late ones (offered once, late) are not favoured
    assert abs(sum(counts[:5]) - sum(counts[-5:])) < 0.04 * runs * capacity / 4


def test_sample_draws_distinct_items_and_leaves_the_buffer_alone():
    buffer = ReservoirBuffer(capacity=10, seed=1)
    for i in range(50):
        buffer.add(i)
    before = buffer.state_dict()
    drawn = buffer.sample(4, 123)
    assert len(drawn) == 4 and len(set(drawn)) == 4 and set(drawn) <= set(buffer.items)
    assert drawn == buffer.sample(4, random.Random(123))  # a seed and a generator of that seed agree
    assert sorted(buffer.sample(100, 0)) == sorted(buffer.items)  # more than held: all of them
    assert buffer.state_dict() == before  # drawing uses its own generator


def test_save_load_continue_equals_continuing_without_the_save():
    stream = [[task, index] for task in range(3) for index in range(40)]  # (task, example) pairs, as lists
    straight = ReservoirBuffer(capacity=8, seed=7)
    for item in stream:
        straight.add(item)

    first = ReservoirBuffer(capacity=8, seed=7)
    for item in stream[:55]:
        first.add(item)
    saved = json.loads(json.dumps(first.state_dict()))  # through JSON, as a checkpoint would
    resumed = ReservoirBuffer(capacity=1, seed=999)  # different settings: the state must override them
    resumed.load_state_dict(saved)
    for item in stream[55:]:
        resumed.add(item)

    assert resumed.items == straight.items
    assert resumed.seen == straight.seen == len(stream)
    assert resumed.state_dict() == straight.state_dict()


def test_a_capacity_below_one_is_refused():
    with pytest.raises(ValueError, match="capacity"):
        ReservoirBuffer(capacity=0)
