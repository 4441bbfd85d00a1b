"""Learning-rate schedules: a function of the step and of the run's original
step count alone, so resumed and uninterrupted runs agree."""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "constant")


def learning_rate_factor(step: int, horizon: int, schedule: str) -> float:
    """Multiplier of the base learning rates at ``step`` (0-based) of a run
    laid out over ``horizon`` steps: ``"cosine"`` falls from 1 to 0 over the
    horizon as half a cosine (and stays at 0 after it); ``"constant"`` is 1."""
    if schedule == "constant":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * min(step, horizon) / horizon))
