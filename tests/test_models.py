import pytest
import torch

from models import (VideoClassifier, VideoMAE, convert_official, decoder_mask, layer_decay_groups, make_mask,
                    model_config, temporal_features, unpatchify)
from models.losses import cube_pixels, patchify, reconstruction_target

GRID = (8, 4, 4)


def test_bad_mask_arguments_raise():
    with pytest.raises(ValueError, match="unknown mask strategy"):
        make_mask("checkerboard", 1, GRID, 0.9)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        make_mask("tube", 1, GRID, 1.0)
    with pytest.raises(ValueError, match="even token grid"):
        make_mask("running_cell", 1, (8, 3, 3), 0.5)


def test_wrong_clips_and_masks_are_refused_in_one_line():
    """A 0/1 mask of another dtype inverted with ~ selected every token: the encoder saw the masked
    pixels. A clip or mask of another size was gathered from without an error."""
    config = model_config("tiny", depth=1, decoder_depth=1)
    model = VideoMAE(config)
    video, mask = torch.randn(2, 3, 16, 32, 32), make_mask("tube", 2, config.grid, 0.9)
    cases = [(video, mask.to(torch.uint8), r"mask must be a bool tensor \(True = masked\), not torch.uint8"),
             (video, mask[:, :64], r"mask must be \(batch, tokens\) = \(2, 128\), not \(2, 64\)"),
             (video, mask[:1], r"\(2, 128\), not \(1, 128\)"),
             (torch.randn(2, 3, 16, 64, 64), mask, r"expected a clip \(B, C, T, H, W\) = \(batch, 3, 16, 32, 32\), "
                                                    r"not \(2, 3, 16, 64, 64\)"),
             (video.transpose(1, 2), mask, r"not \(2, 16, 3, 32, 32\)"),  # transformers' (B, T, C, H, W)
             (video, torch.ones_like(mask), "the mask leaves no token visible")]
    for clip, bad, message in cases:
        for run in (lambda: model(clip, bad), lambda: model.encoder(clip, bad)):
            with pytest.raises(ValueError, match=message):
                run()
    with pytest.raises(ValueError, match="decoder_mask must be a bool tensor"):
        model(video, mask, decoder_mask(mask, config.grid).long())
    with pytest.raises(ValueError, match="unknown loss 'mae'"):
        VideoMAE(config, loss="mae")
    with pytest.raises(ValueError, match="in_chans must be 3"):
        model_config("tiny", in_chans=1)
    with pytest.raises(ValueError, match="drop_path must be at least 0"):
        model_config("tiny", drop_path=-0.1)
    with pytest.raises(ValueError, match="masks no token of the 1x4x4 token grid"):
        make_mask("frame", 2, (1, 4, 4), 0.5)
    with pytest.raises(ValueError, match="needs every token of the 8x4x4 grid"):
        temporal_features(model.encoder(video, mask), config.grid)
    with pytest.raises(TypeError, match="from_pretrained takes a VideoMAE model, got OrderedDict"):
        VideoClassifier.from_pretrained(model.state_dict(), 4)
    with pytest.raises(ValueError, match="not a VideoMAE checkpoint"):
        convert_official({"model": {"epoch": 3}})


def test_dual_masking_is_videomae_v2s():
    """V2's forward with a decoder mask and its engine's loss, written out as its code does them
    (boolean indexing): the decoder gets a mask token for every token the decoder mask keeps,
    visible ones included, and the loss counts those the encoder masked (cal_loss_mask)."""
    torch.manual_seed(0)
    config = model_config("tiny")
    model = VideoMAE(config).eval()
    video, generator = torch.randn(2, 3, 16, 32, 32), torch.Generator().manual_seed(0)
    mask = make_mask("tube", 2, config.grid, 0.75, generator)
    decode_mask = decoder_mask(mask, config.grid, 0.5, generator)
    assert (decode_mask.sum(1) == 64).all() and (~mask & ~decode_mask).any(1).all()  # visible ones decoded too
    ours = model(video, mask, decode_mask)
    x_vis = model.encoder_to_decoder(model.encoder(video, mask))
    batch, _, width = x_vis.shape
    pos = model.decoder_pos_embed.expand(batch, -1, -1)
    x_full = torch.cat([x_vis + pos[~mask].reshape(batch, -1, width),
                        model.mask_token + pos[~decode_mask].reshape(batch, -1, width)], dim=1)
    outputs = model.decoder(x_full, int((~decode_mask[0]).sum()))
    targets = reconstruction_target(cube_pixels(video, 8, 2))
    labels = targets[~decode_mask].reshape(batch, -1, targets.shape[-1])
    loss = ((outputs - labels) ** 2).mean(dim=-1)
    cal_loss_mask = mask[~decode_mask].reshape(batch, -1)
    loss = (loss * cal_loss_mask).sum() / cal_loss_mask.sum()
    assert torch.allclose(ours.pred, outputs) and abs(ours.loss.item() - loss.item()) < 1e-6 * loss.item()


def test_reconstruction_is_deterministic_in_a_model_left_training():
    from models import reconstruct
    config = model_config("tiny", drop_path=0.5)
    model = VideoMAE(config).train()
    video, mask = torch.randn(1, 3, 16, 32, 32), make_mask("tube", 1, config.grid, 0.75)
    first, second = reconstruct(model, video, mask), reconstruct(model, video, mask)
    assert torch.equal(first["reconstruction"], second["reconstruction"]) and model.training


def test_patchify_round_trips_and_target_is_normalized_per_cube():
    video = torch.rand(2, 3, 16, 32, 32)
    cubes = patchify(video, 8, 2)
    assert cubes.shape == (2, 128, 128, 3)
    assert torch.equal(unpatchify(cubes.flatten(2), GRID, 8, 2), video)
    target = reconstruction_target(cube_pixels(video, 8, 2)).reshape(2, 128, 128, 3)
    assert torch.allclose(target.mean(dim=2), torch.zeros(2, 128, 3), atol=1e-5)
    assert torch.allclose(target.std(dim=2), torch.ones(2, 128, 3), atol=1e-3)


def test_flat_cubes_have_a_zero_target():
    """A flat region (a black background, a sprite's inside) is not rounding noise times 1e6."""
    video = torch.randn(3000, 3, 2, 8, 8)
    video[:] = torch.randn(3000, 3, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(reconstruction_target(cube_pixels(video, 8, 2)), torch.zeros(3000, 1, 128 * 3))


def test_pretrain_forward_predicts_only_masked_tokens_and_learns():
    torch.manual_seed(0)
    config = model_config("tiny")
    model = VideoMAE(config)
    video = torch.randn(2, 3, 16, 32, 32)
    mask = make_mask("tube", 2, config.grid, 0.75, torch.Generator().manual_seed(0))
    assert model.encoder(video, mask).shape == (2, 32, 192)  # visible tokens only
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


def test_classifier_from_pretrained_encoder_and_layer_decay_groups():
    config = model_config("tiny")
    pretrained = VideoMAE(config)
    classifier = VideoClassifier.from_pretrained(pretrained, num_classes=4)
    for key, value in classifier.encoder.state_dict().items():
        assert torch.equal(value, pretrained.encoder.state_dict()[key])
    groups = layer_decay_groups(classifier, lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    assert sum(len(g["params"]) for g in groups) == len(list(classifier.parameters()))
    by_scale = {round(g["lr_scale"], 6) for g in groups}
    assert by_scale == {round(0.75 ** k, 6) for k in range(config.depth + 2)}
    head = [g for g in groups if any(p is classifier.head.weight for p in g["params"])][0]
    embed = [g for g in groups if any(p is classifier.encoder.patch_embed.proj.weight for p in g["params"])][0]
    assert head["lr"] == 1e-3 and abs(embed["lr"] - 1e-3 * 0.75 ** 5) < 1e-12
    assert all(g["weight_decay"] == 0 for g in groups if any(p.ndim == 1 for p in g["params"]))


def test_reconstruction_keeps_visible_cubes_and_fills_masked_ones():
    from models import reconstruct
    torch.manual_seed(0)
    config = model_config("tiny")
    model = VideoMAE(config).eval()
    video = torch.randn(1, 3, 16, 32, 32)
    mask = make_mask("tube", 1, config.grid, 0.75, torch.Generator().manual_seed(0))
    views = reconstruct(model, video, mask)
    assert all(v.shape == video.shape and v.min() >= 0 and v.max() <= 1 for v in views.values())
    visible = ~mask.reshape(1, 8, 4, 4)[0, 0]  # first slot's visible patches
    row, col = [int(i) for i in visible.nonzero()[0]]
    patch = (slice(None), slice(None), slice(0, 2), slice(row * 8, row * 8 + 8), slice(col * 8, col * 8 + 8))
    assert torch.equal(views["reconstruction"][patch], views["original"][patch])
    assert not torch.equal(views["reconstruction"], views["original"])


def test_bf16_attention_kernels_agree_with_fp32_sdpa():
    """Under CPU bf16 autocast `attend` picks plain matmuls (short sequences, small score
    matrices) or the fused bf16 kernel (long ones); each must compute the same attention as the
    fused fp32 kernel, to bf16 precision, forward and backward."""
    from models.videomae import Attention
    torch.manual_seed(0)
    attention = Attention(64, num_heads=4, qkv_bias=True).eval()
    # 16 tokens: plain; 520 x 2 x 4: plain (small score matrix); 1500 x 2 x 4: fused bf16
    for tokens in (16, 520, 1500):
        x = torch.randn(2, tokens, 64, requires_grad=True)
        expected = attention(x)
        (expected_grad,) = torch.autograd.grad(expected.square().sum(), x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = attention(x)
        (got_grad,) = torch.autograd.grad(got.float().square().sum(), x)
        assert got.dtype == torch.bfloat16
        assert torch.allclose(got.float(), expected, atol=0.05, rtol=0.05)
        assert torch.allclose(got_grad, expected_grad, atol=0.05 * expected_grad.abs().max(), rtol=0.05)
