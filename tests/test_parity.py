"""Our VideoMAE against Hugging Face transformers with the same weights, clip and mask."""
import pytest
import torch

from models import PRESETS, config_to_transformers, convert_official, from_transformers, make_mask, to_official

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
    theirs = transformers.VideoMAEForVideoClassification(hf_config(preset, num_labels=7, use_mean_pooling=True)).eval()
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
    official = to_official(ours.state_dict())
    reloaded = type(ours)(ours.config)
    reloaded.load_state_dict(convert_official({"model": official}))
    reloaded.decoder.norm.eps = ours.decoder.norm.eps
    video, mask = clip_and_mask("tiny", 2)
    with torch.no_grad():
        assert torch.equal(reloaded(video, mask).loss, ours(video, mask).loss)


def test_pretrain_init_reads_a_hugging_face_model_folder(tmp_path, capsys):
    """A VideoMAEForPreTraining as the Hub holds it (transformers < 5 saved q_bias/v_bias), as
    save_pretrained writes it now (one safetensors file, or shards), its folder or its file, loads
    the same weights from_transformers gives; a fine-tuned one or another size is refused."""
    from conftest import MICRO, write_study
    from harness.prepare import check_weights
    from harness.study_file import load_study
    from harness.weights import load_init
    from models import VideoMAE, model_config

    config = model_config("tiny", depth=2)
    torch.manual_seed(0)
    theirs = randomize_biases(transformers.VideoMAEForPreTraining(
        config_to_transformers(config, use_mean_pooling=False)))
    expected = from_transformers(theirs).state_dict()
    theirs.save_pretrained(tmp_path / "current")
    theirs.save_pretrained(tmp_path / "shards", max_shard_size="300KB")
    assert (tmp_path / "shards" / "model.safetensors.index.json").is_file()
    hub = {key.replace("query.bias", "q_bias").replace("value.bias", "v_bias"): value
           for key, value in theirs.state_dict().items()}
    assert any(key.endswith("attention.attention.q_bias") for key in hub)
    (tmp_path / "hub").mkdir()
    torch.save(hub, tmp_path / "hub" / "pytorch_model.bin")
    (tmp_path / "official").mkdir()  # as `harness export --format official` writes it
    torch.save({"model": to_official(expected), "epoch": 3}, tmp_path / "official" / "checkpoint.pth")
    for init in ("current", "current/model.safetensors", "shards", "hub", "hub/pytorch_model.bin", "official"):
        ours = VideoMAE(config)  # its own random weights, all replaced
        load_init(ours, str(tmp_path / init))
        for name, value in ours.state_dict().items():
            torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=f"{init}: {name}")
    # Through a study file: the folder is found and loads before any trial would start
    study = write_study(tmp_path, "given", pretrain={**MICRO["pretrain"], "method": "pretrained", "init": "current"})
    check_weights(load_study(study))
    assert f"{tmp_path / 'current'}: loads into the tiny model" in capsys.readouterr().out

    classifier = transformers.VideoMAEForVideoClassification(config_to_transformers(config, num_labels=5, use_mean_pooling=True))
    classifier.save_pretrained(tmp_path / "finetuned")
    with pytest.raises(ValueError, match=r"finetuned: has no encoder.norm.weight \(2 missing, 4 unknown\): "
                                         r"a fine-tuned checkpoint"):
        load_init(VideoMAE(config), str(tmp_path / "finetuned"))
    with pytest.raises(ValueError, match=r"current: encoder.patch_embed.proj.weight is \[192, 3, 2, 8, 8\] there, "
                                         r"\[384, 3, 2, 16, 16\] in the study's model; the checkpoint has an encoder 192 "
                                         r"wide, 2 blocks deep, on 2x8x8 cubes and a decoder 96 wide, 2 blocks deep, the "
                                         r"study's model an encoder 384 wide, 12 blocks deep, on 2x16x16 cubes \(small\) "
                                         r"and a decoder 192 wide, 4 blocks deep: set model: to match"):
        load_init(VideoMAE(PRESETS["small"]), str(tmp_path / "current"))
    # Heads change no weight's shape: only the folder's config.json tells them
    config_file = tmp_path / "current" / "config.json"
    config_file.write_text(config_file.read_text().replace('"num_attention_heads": 3', '"num_attention_heads": 6'))
    with pytest.raises(ValueError, match=r"current: its config.json has num_attention_heads 6, the study's model "
                                         r"num_heads 3: set model.overrides.num_heads"):
        load_init(VideoMAE(config), str(tmp_path / "current"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: not a checkpoint this harness reads \(a folder without "
                                         r"model.safetensors, model.safetensors.index.json, pytorch_model.bin, "
                                         r"checkpoint.pth or checkpoint.pt \(a Hugging Face model's folder, or one "
                                         r"`harness export` wrote\)\)"):
        load_init(VideoMAE(config), str(tmp_path / "empty"))
    (tmp_path / "junk.pth").write_text("hello\n")  # pickle read a byte of it as a key, and said only "104"
    with pytest.raises(ValueError, match=r"junk.pth: not a checkpoint this harness reads \(neither a PyTorch nor a "
                                         r"safetensors file\)$"):
        load_init(VideoMAE(config), str(tmp_path / "junk.pth"))


def test_configs_of_either_transformers_version_and_their_limits():
    """transformers 4 names the q/v biases `qkv_bias` (5: `qv_bias`); sizes may be pairs."""
    from types import SimpleNamespace

    from models import config_from_transformers

    fields = hf_config("tiny").to_dict()
    version_4 = SimpleNamespace(**{key: value for key, value in fields.items() if key != "qv_bias"}, qkv_bias=True)
    assert config_from_transformers(version_4) == PRESETS["tiny"]
    assert config_from_transformers(SimpleNamespace(**{**fields, "image_size": (32, 32)})) == PRESETS["tiny"]
    with pytest.raises(ValueError, match="hidden_dropout_prob 0.1: dropout is not supported"):
        config_from_transformers(SimpleNamespace(**{**fields, "hidden_dropout_prob": 0.1}))
    with pytest.raises(ValueError, match=r"image_size \(32, 48\): only square frames"):
        config_from_transformers(SimpleNamespace(**{**fields, "image_size": (32, 48)}))
    # Our VideoMAE's encoder ends in a norm: its config for transformers keeps that norm by default
    pretraining = transformers.VideoMAEForPreTraining(hf_config("tiny"))
    assert pretraining.videomae.layernorm is not None
