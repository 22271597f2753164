"""Mask generators. Each returns a bool tensor (batch, tokens), True = masked, with the same
number of masked tokens in every sample so that visible tokens stack into one batch.
Tokens are ordered (temporal slot, row, column), as the cube embedding flattens them."""
from __future__ import annotations

import torch

STRATEGIES = ("tube", "random", "frame")


def _random_choice(batch: int, population: int, count: int, generator: torch.Generator | None) -> torch.Tensor:
    """Bool (batch, population) with exactly `count` True per row, uniformly at random."""
    noise = torch.rand(batch, population, generator=generator)
    chosen = noise.argsort(dim=1)[:, :count]
    mask = torch.zeros(batch, population, dtype=torch.bool)
    mask.scatter_(1, chosen, True)
    return mask


def tube_mask(batch: int, grid: tuple[int, int, int], ratio: float,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """One spatial mask of int(ratio * patches) per sample, repeated over every temporal slot."""
    slots, rows, cols = grid
    per_frame = int(ratio * rows * cols)
    spatial = _random_choice(batch, rows * cols, per_frame, generator)
    return spatial.unsqueeze(1).expand(batch, slots, rows * cols).reshape(batch, -1)


def random_mask(batch: int, grid: tuple[int, int, int], ratio: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """int(ratio * tokens) tokens masked independently over space and time."""
    slots, rows, cols = grid
    total = slots * rows * cols
    return _random_choice(batch, total, int(ratio * total), generator)


def frame_mask(batch: int, grid: tuple[int, int, int], ratio: float,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """int(ratio * slots) whole temporal slots masked (the paper's 87.5% = 7 of 8 slots)."""
    slots, rows, cols = grid
    masked_slots = _random_choice(batch, slots, int(ratio * slots), generator)
    return masked_slots.unsqueeze(2).expand(batch, slots, rows * cols).reshape(batch, -1)


GENERATORS = {"tube": tube_mask, "random": random_mask, "frame": frame_mask}


def make_mask(strategy: str, batch: int, grid: tuple[int, int, int], ratio: float,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Dispatch by strategy name; see STRATEGIES."""
    if strategy not in GENERATORS:
        raise ValueError(f"unknown mask strategy {strategy!r}; choose from {list(GENERATORS)}")
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must lie in (0, 1), got {ratio}")
    return GENERATORS[strategy](batch, grid, ratio, generator)
