"""Experience replay from a reservoir buffer (Chaudhry et al. 2019, "On Tiny Episodic Memories in Continual
Learning"): each training step of the current task is joined by a batch drawn from a small episodic memory of
earlier examples (their ER), and the memory is written by reservoir sampling, the writing strategy they find
works well across the board except for the very smallest memories.

Reservoir sampling is Vitter's (1985, "Random Sampling with a Reservoir") Algorithm R: the first `capacity`
items are kept; after that the n-th item of the stream replaces a uniformly chosen slot with probability
capacity / n. Every item of a stream of N is then in the buffer with the same probability, capacity / N,
whatever the task it came from, without knowing N in advance.

Items are opaque and JSON-serialisable (an example's (task, index) pair, or a dict): the buffer stores
references to examples, not tensors. `state_dict()` is plain JSON, with the random generator's state, so a
run resumed from it keeps and draws the same items as one that never stopped. JSON has no tuples: a tuple
item comes back from a JSON round trip as a list.
"""

from __future__ import annotations

import random
from typing import Any


class ReservoirBuffer:
    """At most `capacity` items; every item offered so far is in it with probability capacity / seen."""

    def __init__(self, capacity: int, seed: int = 0):
        if capacity < 1:
            raise ValueError(f"a reservoir buffer needs a capacity of at least 1, not {capacity}")
        self.capacity = capacity
        self.seen = 0  # items offered so far, kept or not
        self.items: list[Any] = []
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.items)

    def add(self, item: Any) -> None:
        """Offer one item of the stream (Algorithm R)."""
        self.seen += 1
        if len(self.items) < self.capacity:
            self.items.append(item)
            return
        slot = self.rng.randrange(self.seen)  # uniform over the `seen` items so far, this one included
        if slot < self.capacity:
            self.items[slot] = item

    def sample(self, n: int, rng_or_seed: random.Random | int) -> list[Any]:
        """`n` distinct items drawn uniformly without replacement (all of them, shuffled, if fewer are held).

        The draw uses its own generator, not the buffer's, so drawing never changes which items are kept.
        """
        rng = rng_or_seed if isinstance(rng_or_seed, random.Random) else random.Random(rng_or_seed)
        return rng.sample(self.items, min(n, len(self.items)))

    def state_dict(self) -> dict:
        version, internal, gauss_next = self.rng.getstate()
        return {
            "capacity": self.capacity,
            "seen": self.seen,
            "items": list(self.items),
            "rng": [version, list(internal), gauss_next],
        }

    def load_state_dict(self, state: dict) -> None:
        self.capacity = int(state["capacity"])
        self.seen = int(state["seen"])
        self.items = list(state["items"])
        version, internal, gauss_next = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss_next))
