"""`pretrain.init`: weights a study starts from instead of the seed's initialisation, e.g. the
VideoMAE release's pre-trained checkpoints, evaluated as they are (`pretrain.method: pretrained`)
or pre-trained further on the study's data (`videomae`)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from models import PRESETS, VideoMAE, convert_official, convert_transformers

# Whose absence still loads: an encoder-only checkpoint leaves the decoder its initialisation.
DECODER_PARTS = ("decoder.", "encoder_to_decoder.", "mask_token")
# A Hugging Face model's folder (save_pretrained, `hf download --local-dir`, a Hub cache snapshot).
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# a folder's checkpoint: a Hugging Face model's, or `harness export --format official`'s, or a run's own
FOLDER_WEIGHT_FILES = (*HF_WEIGHT_FILES, "checkpoint.pth", "checkpoint.pt")


def load_init(model: VideoMAE, path: str) -> None:
    """Load into `model` a pre-training checkpoint: this harness's `checkpoint.pt`, the official
    VideoMAE code's (`encoder.*` with q/v biases, `decoder.*`; the `args` it saves too), or a
    Hugging Face `VideoMAEForPreTraining` (its folder, or its .safetensors or .bin file). Every
    encoder weight must be there in the model's shape; the decoder may be missing whole. Raises
    ValueError naming the file and the first weight that does not fit."""
    try:
        state = read_weights(Path(path))
    except Exception as error:  # not a file torch reads, or not a mapping of weights
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        if not any(character.isalpha() for character in reason):  # pickle's KeyError on a text file: a byte
            reason = "neither a PyTorch nor a safetensors file"
        raise ValueError(f"pretrain.init: {path}: not a checkpoint this harness reads ({reason})") from None
    own = model.state_dict()
    shapes = f"the checkpoint has {shape(state)}, the study's model {shape(own)}: set model: to match"
    misfits = sorted((name for name, value in own.items() if name in state and state[name].shape != value.shape),
                     key=lambda name: not name.startswith("encoder."))  # the encoder's first, in the model's order
    if misfits:
        name = misfits[0]
        raise ValueError(f"pretrain.init: {path}: {name} is {list(state[name].shape)} there, "
                         f"{list(own[name].shape)} in the study's model; {shapes}")
    has_decoder = any(name.startswith(DECODER_PARTS) for name in state)
    missing = [name for name in own if name not in state and (has_decoder or not name.startswith(DECODER_PARTS))]
    unknown = [name for name in state if name not in own]
    if missing or unknown:
        what = f"has no {missing[0]}" if missing else f"has {unknown[0]}, which the study's model has not"
        if _depths(state, has_decoder) != _depths(own, has_decoder):
            raise ValueError(f"pretrain.init: {path}: {what}; {shapes}")
        raise ValueError(f"pretrain.init: {path}: {what} ({len(missing)} missing, {len(unknown)} unknown): "
                         "a fine-tuned checkpoint, or another model? It must be a pre-training checkpoint "
                         "of the study's model")
    _check_heads(Path(path), model)
    model.load_state_dict(state, strict=False)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The weights at `path` in our names, whichever of the three layouts they are in."""
    if path.is_dir():
        found = [path / name for name in FOLDER_WEIGHT_FILES if (path / name).is_file()]
        if not found:
            raise ValueError(f"a folder without {', '.join(FOLDER_WEIGHT_FILES[:-1])} or {FOLDER_WEIGHT_FILES[-1]} "
                             "(a Hugging Face model's folder, or one `harness export` wrote)")
        path = found[0]
    if path.name.endswith(".safetensors.index.json"):  # a model saved in shards
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        state = {key: value for shard in shards for key, value in _read_file(path.parent / shard).items()}
    else:
        state = _read_file(path)
    state = state.get("model", state.get("module", state))
    if any(key.startswith("videomae.") for key in state):
        return convert_transformers(state)
    return convert_official(state)


def _read_file(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # a dependency of timm

        return load_file(path)
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def _check_heads(path: Path, model: VideoMAE) -> None:
    """Heads change no weight's shape, so only a Hugging Face model's config.json can tell."""
    if not (path.is_dir() or path.name in HF_WEIGHT_FILES or path.suffix == ".safetensors"):
        return  # another layout's file: a config.json beside it is not its own
    config_file = (path if path.is_dir() else path.parent) / "config.json"
    if not config_file.is_file():
        return
    given = json.loads(config_file.read_text())
    for theirs, ours in (("num_attention_heads", "num_heads"), ("decoder_num_attention_heads", "decoder_num_heads")):
        if theirs in given and given[theirs] != getattr(model.config, ours):
            raise ValueError(f"pretrain.init: {path}: its config.json has {theirs} {given[theirs]}, the study's "
                             f"model {ours} {getattr(model.config, ours)}: set model.overrides.{ours}")


def _depths(state: dict[str, torch.Tensor], with_decoder: bool) -> tuple[int, int]:
    def blocks(prefix: str) -> int:
        return 1 + max((int(name.split(".")[2]) for name in state if name.startswith(prefix)), default=-1)
    return blocks("encoder.blocks."), blocks("decoder.blocks.") if with_decoder else 0


def shape(state: dict[str, torch.Tensor]) -> str:
    """E.g. "an encoder 768 wide, 12 blocks deep, on 2x16x16 cubes (base) and a decoder 384 wide,
    4 blocks deep": what `model:` is chosen by."""
    if "encoder.patch_embed.proj.weight" not in state:
        return "no cube embedding"
    width, _, *cube = state["encoder.patch_embed.proj.weight"].shape
    depth, decoder_depth = _depths(state, "decoder.head.weight" in state)
    presets = [name for name, config in PRESETS.items() if (config.embed_dim, config.depth) == (width, depth)]
    described = f"an encoder {width} wide, {depth} blocks deep, on {'x'.join(map(str, cube))} cubes"
    described += f" ({presets[0]})" if presets else ""
    if decoder_depth:
        described += f" and a decoder {state['decoder.head.weight'].shape[1]} wide, {decoder_depth} blocks deep"
    return described
