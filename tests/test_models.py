import pytest
import torch

from models import VideoClassifier, VideoMAE, make_mask, model_config, temporal_features, unpatchify
from models.losses import patchify, reconstruction_target

GRID = (8, 4, 4)


@pytest.mark.parametrize("strategy", ["tube", "random", "frame"])
@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9, 0.95])
def test_every_sample_masks_the_same_count(strategy, ratio):
    mask = make_mask(strategy, 6, GRID, ratio, torch.Generator().manual_seed(1))
    counts = mask.sum(1)
    assert mask.shape == (6, 128) and (counts == counts[0]).all()
    slots, rows, cols = GRID
    expected = {"tube": int(ratio * rows * cols) * slots, "random": int(ratio * 128),
                "frame": int(ratio * slots) * rows * cols}[strategy]
    assert counts[0] == expected


def test_tube_is_constant_over_time_and_frame_masks_whole_slots():
    tube = make_mask("tube", 4, GRID, 0.9, torch.Generator().manual_seed(0)).reshape(4, 8, 16)
    assert (tube == tube[:, :1]).all()
    frame = make_mask("frame", 4, GRID, 0.875, torch.Generator().manual_seed(0)).reshape(4, 8, 16)
    assert ((frame.all(dim=2)) | (~frame.any(dim=2))).all()
    assert (frame.all(dim=2).sum(1) == 7).all()


def test_masks_are_deterministic_by_seed():
    first = make_mask("random", 3, GRID, 0.9, torch.Generator().manual_seed(5))
    again = make_mask("random", 3, GRID, 0.9, torch.Generator().manual_seed(5))
    other = make_mask("random", 3, GRID, 0.9, torch.Generator().manual_seed(6))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_bad_mask_arguments_raise():
    with pytest.raises(ValueError, match="unknown mask strategy"):
        make_mask("checkerboard", 1, GRID, 0.9)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        make_mask("tube", 1, GRID, 1.0)


def test_patchify_round_trips_and_target_is_normalized_per_cube():
    video = torch.rand(2, 3, 16, 32, 32)
    cubes = patchify(video, 8, 2)
    assert cubes.shape == (2, 128, 128, 3)
    assert torch.equal(unpatchify(cubes.flatten(2), GRID, 8, 2), video)
    target = reconstruction_target(video, 8, 2).reshape(2, 128, 128, 3)
    assert torch.allclose(target.mean(dim=2), torch.zeros(2, 128, 3), atol=1e-5)
    assert torch.allclose(target.std(dim=2), torch.ones(2, 128, 3), atol=1e-3)


def test_pretrain_forward_predicts_only_masked_tokens_and_learns():
    torch.manual_seed(0)
    config = model_config("tiny")
    model = VideoMAE(config)
    video = torch.randn(2, 3, 16, 32, 32)
    mask = make_mask("tube", 2, config.grid, 0.75, torch.Generator().manual_seed(0))
    assert model.forward_encoder(video, mask).shape == (2, 32, 192)  # visible tokens only
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        output = model(video, mask)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        losses.append(output.loss.item())
    assert output.pred.shape == (2, 96, config.patch_dim)
    assert losses[-1] < 0.8 * losses[0]


def test_bf16_autocast_keeps_the_loss_in_fp32():
    config = model_config("tiny")
    model = VideoMAE(config, loss="l1")
    mask = make_mask("random", 2, config.grid, 0.9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(torch.randn(2, 3, 16, 32, 32), mask)
    assert output.pred.dtype == torch.bfloat16 and output.loss.dtype == torch.float32


def test_presets_and_overrides():
    assert model_config("base").num_tokens == 1568
    assert model_config("tiny", depth=2).depth == 2
    with pytest.raises(ValueError, match="unknown model preset"):
        model_config("gigantic")
    with pytest.raises(ValueError, match="unknown model field"):
        model_config("tiny", width=3)


def test_classifier_and_temporal_features_shapes():
    config = model_config("tiny")
    logits = VideoClassifier(config, num_classes=5)(torch.randn(2, 3, 16, 32, 32))
    assert logits.shape == (2, 5)
    tokens = torch.arange(2 * 128 * 4, dtype=torch.float32).reshape(2, 128, 4)
    features = temporal_features(tokens, GRID)
    assert features.shape == (2, 8 * 4)
    assert torch.equal(features[:, :4], tokens[:, :16].mean(1))  # first slot first: order kept
