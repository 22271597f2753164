"""`pretrain.init`: weights a study starts from instead of the seed's initialisation, e.g. the
VideoMAE release's pre-trained checkpoints, evaluated as they are (`pretrain.method: pretrained`)
or pre-trained further on the study's data (`videomae`)."""
from __future__ import annotations

import argparse

import torch

from models import VideoMAE, convert_official

# Whose absence still loads: an encoder-only checkpoint leaves the decoder its initialisation.
DECODER_PARTS = ("decoder.", "encoder_to_decoder.", "mask_token")


def load_init(model: VideoMAE, path: str) -> None:
    """Load a checkpoint of this harness (its `checkpoint.pt`) or of the official VideoMAE code
    (pre-training layout: `encoder.*` with q/v biases, `decoder.*`; the `args` it saves too) into
    `model`. Every encoder weight must be there in the model's shape; the decoder may be missing
    whole. Raises ValueError naming the file and the first weight that does not fit."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        state = convert_official(checkpoint)
    except Exception as error:  # not a file torch reads, or not a mapping of weights
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ValueError(f"pretrain.init: {path}: not a checkpoint this harness reads ({reason})") from None
    own = model.state_dict()
    misfits = sorted((name for name, value in state.items() if name in own and value.shape != own[name].shape),
                     key=lambda name: not name.startswith("encoder."))  # the encoder's say most
    if misfits:
        name = misfits[0]
        raise ValueError(f"pretrain.init: {path}: {name} is {list(state[name].shape)} there, {list(own[name].shape)} "
                         "in the study's model: set model: to the checkpoint's preset and sizes")
    has_decoder = any(name.startswith(DECODER_PARTS) for name in state)
    missing = [name for name in own if name not in state and (has_decoder or not name.startswith(DECODER_PARTS))]
    unknown = [name for name in state if name not in own]
    if missing or unknown:
        what = f"has no {missing[0]}" if missing else f"has {unknown[0]}, which the study's model has not"
        raise ValueError(f"pretrain.init: {path}: {what} ({len(missing)} missing, {len(unknown)} unknown): "
                         "a fine-tuned checkpoint, or another model? It must be a pre-training checkpoint "
                         "of the study's model")
    model.load_state_dict(state, strict=False)
