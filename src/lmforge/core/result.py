"""What a recipe returns to the command line (no heavy imports: `lmforge list` loads this module)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunResult:
    """What a recipe returns: its run folder, the final numbers, and the one the command line reports
    first (`("accuracy", 0.91)`, `("perplexity", 12.3)`)."""

    run_dir: Path
    metrics: dict[str, float]
    headline: tuple[str, float]

    def line(self) -> str:
        """'accuracy 0.9100 (loss 0.2512, macro_f1 0.9087)'."""
        name, value = self.headline
        rest = ", ".join(f"{k} {v:.4f}" for k, v in self.metrics.items() if k != name)
        return f"{name} {value:.4f}" + (f" ({rest})" if rest else "")
