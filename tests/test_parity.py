"""Our VideoMAE against Hugging Face transformers with the same weights, clip and mask."""
import pytest
import torch

from conftest import official_layout
from models import PRESETS, config_to_transformers, convert_official, from_transformers, make_mask

transformers = pytest.importorskip("transformers")


def hf_config(preset: str, **extra):
    return config_to_transformers(PRESETS[preset], attn_implementation="sdpa", **extra)


def randomize_biases(model):
    # transformers initialises biases and LayerNorms to 0/1: perturb them so the test sees them.
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "mask_token" in name:
                parameter.add_(torch.randn_like(parameter) * 0.02)
    return model


def clip_and_mask(preset, batch, seed=0):
    config = PRESETS[preset]
    generator = torch.Generator().manual_seed(seed)
    video = torch.randn(batch, 3, config.num_frames, config.img_size, config.img_size, generator=generator)
    return video, make_mask("tube", batch, config.grid, 0.9, generator)


@pytest.mark.parametrize("preset, batch, norm_pix_loss, final_norm",
                         [("tiny", 3, True, True), ("tiny", 2, False, False), ("base", 1, True, True)])
def test_pretraining_loss_matches_transformers(preset, batch, norm_pix_loss, final_norm):
    torch.manual_seed(0)
    theirs = transformers.VideoMAEForPreTraining(
        hf_config(preset, norm_pix_loss=norm_pix_loss, use_mean_pooling=not final_norm)).eval()
    randomize_biases(theirs)
    ours = from_transformers(theirs).eval()
    video, mask = clip_and_mask(preset, batch)
    with torch.no_grad():
        expected = theirs(video.transpose(1, 2), bool_masked_pos=mask)
        got = ours(video, mask)
    assert torch.allclose(got.pred, expected.logits, rtol=1e-4, atol=1e-5)
    assert abs(got.loss.item() - expected.loss.item()) / expected.loss.item() < 1e-5


@pytest.mark.parametrize("preset", ["tiny", "base"])
def test_classifier_logits_match_transformers(preset):
    torch.manual_seed(0)
    theirs = transformers.VideoMAEForVideoClassification(hf_config(preset, num_labels=7)).eval()
    randomize_biases(theirs)
    ours = from_transformers(theirs).eval()
    video, _ = clip_and_mask(preset, 2)
    with torch.no_grad():
        expected = theirs(video.transpose(1, 2)).logits
        got = ours(video)
    assert ((got - expected).abs().max() / expected.abs().max()).item() < 1e-5


def test_official_layout_round_trip():
    """A state dict written in the official layout (q_bias/v_bias, `decoder.blocks`) loads exactly."""
    torch.manual_seed(0)
    theirs = transformers.VideoMAEForPreTraining(hf_config("tiny", use_mean_pooling=False))
    ours = from_transformers(randomize_biases(theirs))
    official = official_layout(ours.state_dict())
    reloaded = type(ours)(ours.config)
    reloaded.load_state_dict(convert_official({"model": official}))
    reloaded.decoder.norm.eps = ours.decoder.norm.eps
    video, mask = clip_and_mask("tiny", 2)
    with torch.no_grad():
        assert torch.equal(reloaded(video, mask).loss, ours(video, mask).loss)
