"""Property tests of the mask generators (hypothesis)."""
import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from models import decoder_mask, make_mask
from models.choices import LOSS_NAMES, STRATEGIES, masked_count
from models.losses import LOSSES
from models.masking import GENERATORS

grids = st.tuples(st.integers(1, 8), st.integers(1, 7).map(lambda n: 2 * n), st.integers(1, 7).map(lambda n: 2 * n))
ratios = st.floats(0.26, 0.99)
seeds = st.integers(0, 2**31 - 1)
batches = st.integers(1, 5)
settings.register_profile("fast", max_examples=60, deadline=None)
settings.load_profile("fast")


def expected_count(strategy, grid, ratio):
    slots, rows, cols = grid
    # The reference's rounding: int(ratio * count); ratio * a * b can round the other way (1/3 of 84)
    return {"tube": int(ratio * (rows * cols)) * slots, "random": int(ratio * (slots * rows * cols)),
            "frame": int(ratio * slots) * rows * cols,
            "running_cell": int(4 * ratio) * slots * rows * cols // 4}[strategy]


def test_every_name_a_study_may_choose_has_an_implementation():
    assert set(GENERATORS) == set(STRATEGIES) and set(LOSSES) == set(LOSS_NAMES)


@given(st.sampled_from(STRATEGIES), batches, grids, ratios, seeds)
@example("random", 1, (7, 2, 6), 1 / 3, 0)  # 1/3 * 7 * 2 * 6 = 27.999..., 1/3 * 84 = 28.0
@example("tube", 1, (1, 6, 10), 0.35, 0)  # 0.35 * 6 * 10 = 20.999..., 0.35 * 60 = 21.0
def test_exact_count_in_every_sample_and_determinism(strategy, batch, grid, ratio, seed):
    if expected_count(strategy, grid, ratio) == 0:  # e.g. frame masking of a single slot
        with pytest.raises(ValueError, match=f"a {strategy} mask of ratio {ratio} masks no token of the "):
            make_mask(strategy, batch, grid, ratio)
        return
    mask = make_mask(strategy, batch, grid, ratio, torch.Generator().manual_seed(seed))
    assert mask.dtype == torch.bool and mask.shape == (batch, grid[0] * grid[1] * grid[2])
    assert (mask.sum(1) == expected_count(strategy, grid, ratio)).all()
    assert masked_count(strategy, grid, ratio) == expected_count(strategy, grid, ratio)  # what studies are checked by
    again = make_mask(strategy, batch, grid, ratio, torch.Generator().manual_seed(seed))
    assert torch.equal(mask, again)


@given(batches, grids, ratios, seeds)
def test_tube_is_constant_over_time(batch, grid, ratio, seed):
    mask = make_mask("tube", batch, grid, ratio, torch.Generator().manual_seed(seed)).reshape(batch, grid[0], -1)
    assert (mask == mask[:, :1]).all()


@given(batches, grids, ratios, seeds)
def test_frame_masks_whole_temporal_slots(batch, grid, ratio, seed):
    assume(int(ratio * grid[0]) > 0)
    mask = make_mask("frame", batch, grid, ratio, torch.Generator().manual_seed(seed)).reshape(batch, grid[0], -1)
    assert (mask.all(dim=2) | ~mask.any(dim=2)).all()


@given(batches, grids, ratios, seeds)
def test_running_cell_shifts_one_position_per_slot(batch, grid, ratio, seed):
    slots, rows, cols = grid
    mask = make_mask("running_cell", batch, grid, ratio, torch.Generator().manual_seed(seed))
    cells = mask.reshape(batch, slots, rows // 2, 2, cols // 2, 2).permute(0, 1, 2, 4, 3, 5)
    cells = cells.reshape(batch, slots, rows // 2, cols // 2, 4)
    assert (cells == cells[:, :, :1, :1]).all()  # every cell of a slot has one pattern
    assert (cells.sum(-1) == int(4 * ratio)).all()
    for t in range(slots - 1):  # the next slot is this slot's pattern moved one place along the cell
        assert torch.equal(cells[:, t + 1], torch.roll(cells[:, t], shifts=-1, dims=-1))


@given(batches, grids, st.floats(0.5, 0.95), seeds)
def test_dual_masking_keeps_the_same_count_for_the_decoder_in_every_sample(batch, grid, ratio, seed):
    encoder = make_mask("tube", batch, grid, ratio, torch.Generator().manual_seed(seed))
    dropped = decoder_mask(encoder, grid, 0.5, torch.Generator().manual_seed(seed))
    assert dropped.dtype == torch.bool and dropped.shape == encoder.shape
    assert (dropped.sum(1) == encoder.shape[1] // 2).all()  # a running cell of 2 in 4: static shapes
    assert torch.equal(dropped, decoder_mask(encoder, grid, 0.5, torch.Generator().manual_seed(seed)))
