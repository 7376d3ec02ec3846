"""Typed calibration errors: what missed its tolerance, by how much, and how to proceed."""
from __future__ import annotations

from typing import Any, Protocol

from calibration.compare import Comparison, Tolerance
from runtime.errors import MMEdgeError


_FIXES = {
    "fp16": "keep more nodes in FP32 (extra_keep / --keep NAME_OR_OP_TYPE), use more calibration samples",
    "int8": "try another calibration method (minmax, entropy, percentile), use more calibration samples, "
            "or leave sensitive nodes in float (nodes_to_exclude)",
}


class CalibrationError(MMEdgeError):
    """Base class for calibration failures."""


class PrecisionToleranceError(CalibrationError):
    """A reduced-precision graph misses its tolerance against FP32 on the calibration feeds."""

    def __init__(self, precision: str, failures: list[str], *, pattern: str | None = None,
                 graph: str | None = None) -> None:
        self.precision, self.failures, self.pattern, self.graph = precision, failures, pattern, graph
        where = f" for pattern {pattern}" if pattern else ""
        src = f" ({graph})" if graph else ""
        lines = "\n".join(f"  - {f}" for f in failures)
        super().__init__(
            f"{precision} graph{where}{src} misses its tolerance versus FP32:\n{lines}\n"
            f"Fix: {_FIXES.get(precision, 'use more calibration samples')}, relax the tolerance, or pass "
            "--allow-degraded to write it anyway (marked degraded in the manifest).")


class _Report(Protocol):
    precision: str
    tolerance: Tolerance

    @property
    def comparison(self) -> Comparison: ...


def check_tolerance(report: _Report, tolerance: Tolerance | None = None, *, pattern: str | None = None,
                    graph: str | None = None) -> None:
    """Raise PrecisionToleranceError listing each failing output; `tolerance` overrides the report's."""
    failures = report.comparison.failures(tolerance or report.tolerance)
    if failures:
        raise PrecisionToleranceError(report.precision, failures, pattern=pattern, graph=graph)


def failures_of(report: Any, tolerance: Tolerance | None = None) -> list[str]:
    """The failure lines without raising (for --allow-degraded manifests)."""
    return report.comparison.failures(tolerance or report.tolerance)
