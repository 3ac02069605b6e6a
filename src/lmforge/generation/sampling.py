"""What a generation backend takes and gives: sampling parameters, completions, the `Generator` protocol.

Shared by both backends (`generation/generate.py`'s `hf`, `generation/openai_client.py`'s `openai`)
and by the server, so that none of them imports another to get these. The seeding contract
(`sample_seed`) is described in generation/generate.py's module docstring.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from lmforge.errors import UserError

BACKENDS = ("hf", "openai")


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    """completions per prompt"""
    temperature: float = 0.0
    """0 = greedy (then the n completions are equal)"""
    top_p: float = 1.0
    """nucleus sampling: sample from the smallest set of tokens whose probability reaches top_p"""
    max_new_tokens: int = 256
    """generated tokens per completion at most"""
    stop: tuple[str, ...] = ()
    """a completion ends at the first of these strings (not included in its text)"""
    seed: int = 0
    """seeds every sample's random generator (see the module docstring)"""

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):  # a lone string is one stop string, not a tuple of characters
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        if self.n < 1:
            raise UserError(f"sampling: n must be at least 1, got {self.n}")
        if self.temperature < 0:
            raise UserError(f"sampling: temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"sampling: top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise UserError(f"sampling: max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise UserError(f"sampling: stop strings must be non-empty strings, got {self.stop!r}")


@dataclass(frozen=True)
class Completion:
    text: str
    """the generated text, cut before the first stop string"""
    tokens: int
    """generated tokens, up to and including the one that ended it (EOS or the end of a stop string)"""
    finish_reason: str
    """"stop" (EOS or a stop string) or "length" (max_new_tokens reached)"""


class GenerationStopped(Exception):
    """`HFGenerator.generate` stopped early because its `should_stop` said so (e.g. the client left)."""


class Generator(Protocol):
    def generate(
        self, prompts: Sequence[str], params: SamplingParams, progress: bool = False
    ) -> list[list[Completion]]:
        """For each prompt, its params.n completions, in the order of `prompts`."""
        ...


def sample_seed(seed: int, prompt: str, j: int) -> int:
    """The seed of sample j of `prompt`: stable across processes and platforms (not Python's hash)."""
    digest = hashlib.sha256(f"{seed}\0{j}\0{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` before the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
