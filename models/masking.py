"""Mask generators. Each returns a bool tensor (batch, tokens), True = masked, with the same
number of masked tokens in every sample so that visible tokens stack into one batch.
Tokens are ordered (temporal slot, row, column), as the cube embedding flattens them."""
from __future__ import annotations

import torch

from .choices import masked_count


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
    per_frame = int(ratio * (rows * cols))  # as the reference rounds it: (ratio * rows) * cols can differ
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


def running_cell_mask(batch: int, grid: tuple[int, int, int], ratio: float,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """VideoMAE V2's running cell: in every 2x2 spatial cell, int(4 * ratio) of the 4 positions
    are masked; the pattern moves one position along the cell per temporal slot."""
    slots, rows, cols = grid
    if rows % 2 or cols % 2:
        raise ValueError(f"running_cell masking needs an even token grid, got {rows}x{cols}")
    masked_per_cell = int(4 * ratio)
    if not 0 < masked_per_cell < 4:
        raise ValueError(f"running_cell masking needs 0.25 <= ratio < 1, got {ratio}")
    queue = torch.tensor([True] * masked_per_cell + [False] * (4 - masked_per_cell))
    start = torch.randint(4, (batch, 1, 1), generator=generator)
    positions = (torch.arange(4).view(1, 1, 4) + start + torch.arange(slots).view(1, slots, 1)) % 4
    cells = queue[positions].reshape(batch, slots, 1, 2, 1, 2)  # (b, t, cell row, 2, cell col, 2)
    tiled = cells.expand(batch, slots, rows // 2, 2, cols // 2, 2)
    return tiled.reshape(batch, slots * rows * cols)


GENERATORS = {"tube": tube_mask, "random": random_mask, "frame": frame_mask,
              "running_cell": running_cell_mask}


def make_mask(strategy: str, batch: int, grid: tuple[int, int, int], ratio: float,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Dispatch by strategy name (models.choices.STRATEGIES names them for study files)."""
    if strategy not in GENERATORS:
        raise ValueError(f"unknown mask strategy {strategy!r}; choose from {list(GENERATORS)}")
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must lie in (0, 1), got {ratio}")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    masked = masked_count(strategy, grid, ratio)
    if masked in (0, grid[0] * grid[1] * grid[2]):
        raise ValueError(f"a {strategy} mask of ratio {ratio} masks {'no' if masked == 0 else 'every'} token "
                         f"of the {'x'.join(map(str, grid))} token grid")
    return GENERATORS[strategy](batch, grid, ratio, generator)


def decoder_mask(encoder_mask: torch.Tensor, grid: tuple[int, int, int], ratio: float = 0.5,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """VideoMAE V2 dual masking: a running-cell mask for the decoder (True = not reconstructed),
    on the encoder mask's device. As in V2, the decoder gets a mask token for every token this
    mask keeps, the encoder's visible ones among them, and the loss scores those the encoder
    masked (`VideoMAE.forward`); the kept count is the same in every sample."""
    return running_cell_mask(encoder_mask.shape[0], grid, ratio, generator).to(encoder_mask.device)
