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
        """The largest |Δ| that agrees, and how it was derived."""
        if paper.std is not None:
            combined = math.hypot(paper.std, ours.std or 0.0)
            return self.sigmas * combined, f"{self.sigmas:g}σ"
        return self.tolerance, "tolerance"
