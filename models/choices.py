"""The names a study chooses from: masking strategies and reconstruction losses. They live apart
from their implementations (masking.py, losses.py) so that a study file is validated without
importing torch."""
from __future__ import annotations

STRATEGIES = ("tube", "random", "frame", "running_cell")
LOSS_NAMES = ("mse", "mse_raw", "l1", "smooth_l1")


def masked_count(strategy: str, grid: tuple[int, int, int], ratio: float) -> int:
    """Tokens a strategy masks in each sample of a (slots, rows, cols) grid, rounded as the
    generators (and the reference) round: tube int(ratio x patches) in every slot, random
    int(ratio x tokens), frame int(ratio x slots) whole slots, running cell int(4 x ratio) of
    each 2x2 cell in every slot."""
    slots, rows, cols = grid
    return {"tube": int(ratio * (rows * cols)) * slots, "random": int(ratio * (slots * rows * cols)),
            "frame": int(ratio * slots) * rows * cols,
            "running_cell": int(4 * ratio) * (rows // 2) * (cols // 2) * slots}[strategy]
