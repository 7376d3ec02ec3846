"""The export's errors: a build that cannot start or finish, and a build stopped at a failing precision."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from export.validate import ParityError
from runtime.errors import MMEdgeError


class BuildError(MMEdgeError, RuntimeError):
    """A build that cannot start or finish (missing run, calibration unavailable, ...)."""


class PrecisionStopped(ParityError):
    """The build stopped at the first graph that missed its tolerance; ``passed`` are the precisions
    every pattern passed before it, ``failed`` the one that failed, ``requested`` all of them."""

    def __init__(self, failures: Sequence[Any], failed: str, passed: Sequence[str],
                 requested: Sequence[str]) -> None:
        self.failed, self.passed, self.requested = failed, tuple(passed), tuple(requested)
        unchecked = [p for p in requested if p != failed and p not in passed]
        hint = (f"Stopped at the first failing {failed} graph; nothing was written. Passed for every pattern: "
                f"{', '.join(self.passed) or 'none'}"
                + (f"; not built: {', '.join(unchecked)}" if unchecked else "") + ". Fix: "
                + (f"--precision {','.join(self.passed)} writes the passing precisions, " if self.passed else "")
                + "--allow-degraded writes everything with failing graphs marked degraded, or use more or other "
                  "calibration samples (--calib-samples, --int8-method)")
        super().__init__(failures, hint)
