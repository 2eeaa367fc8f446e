"""When a reproduced cell agrees with the paper's (relvit.report.compare's docstring says how).

A module of its own, without pandas, so that the command line's defaults (`relvit compare
--sigmas`, `--tolerance`) do not import the report modules into every `relvit` process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relvit.report.table1 import Cell

# The paper prints its numbers to 0.01: its value is anything within half a last digit of what
# it prints, so a Δ that much past the bound may still be within it (and float rounding is too).
PAPER_ROUNDING = 0.005
FLOAT_SLACK = 1e-9  # a Δ at a bound is within it, whatever the float rounding


@dataclass(frozen=True)
class Criterion:
    """When a reproduced cell agrees with the paper's (see the module docstring)."""

    sigmas: float = 2.0
    tolerance: float = 0.9

    def __post_init__(self) -> None:
        finite = math.isfinite(self.sigmas) and math.isfinite(self.tolerance)  # inf: all pass
        if not (finite and self.sigmas > 0 and self.tolerance >= 0):
            raise ValueError(f"compare: sigmas must be > 0 and tolerance >= 0, finite, got "
                             f"sigmas={self.sigmas!r}, tolerance={self.tolerance!r}")

    def bound(self, paper: Cell, ours: Cell) -> tuple[float, str]:
        """The largest |Δ| that agrees, and how it was derived: with the paper's ±, our seeds'
        sample std beside it (one seed has none: the paper's stands in for it)."""
        if paper.std is not None:
            ours_std = ours.std if ours.std is not None else paper.std
            return self.sigmas * math.hypot(paper.std, ours_std), f"{self.sigmas:g}σ"
        return self.tolerance, "tolerance"

    @staticmethod
    def agrees(delta: float, bound: float) -> bool:
        """|Δ| within the bound, give or take the paper's rounding (`PAPER_ROUNDING`)."""
        return abs(delta) <= bound + PAPER_ROUNDING
