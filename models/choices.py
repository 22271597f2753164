"""The names a study chooses from: masking strategies and reconstruction losses. They live apart
from their implementations (masking.py, losses.py) so that a study file is validated without
importing torch."""
from __future__ import annotations

STRATEGIES = ("tube", "random", "frame", "running_cell")
LOSS_NAMES = ("mse", "mse_raw", "l1", "smooth_l1")
