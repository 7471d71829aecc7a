"""Learning-rate and KL-weight schedules, both functions of the optimisation step."""

from __future__ import annotations

import math


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base lr: linear warm-up, then constant or cosine decay to 0."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def kl_weight(step: int, warmup_steps: int, beta: float) -> float:
    """Beta annealing: rises linearly from 0 to ``beta`` over ``warmup_steps`` (Bowman et al. 2016)."""
    if warmup_steps <= 0:
        return beta
    return beta * min(1.0, (step + 1) / warmup_steps)
