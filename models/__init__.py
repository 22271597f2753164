"""Pure PyTorch VideoMAE: no Ray, no files, no YAML.

Names are imported on first use: the study layer needs only the presets, masks and losses, and
the model modules pull in timm (and through it torchvision and torch._dynamo, about 3 s)."""
from __future__ import annotations

import importlib
from typing import Any

_SUBMODULE = {
    "VideoClassifier": "classifier", "layer_decay_groups": "classifier", "temporal_features": "classifier",
    "config_from_transformers": "convert", "config_to_transformers": "convert",
    "convert_official": "convert", "convert_transformers": "convert", "from_transformers": "convert",
    "to_official": "convert", "to_transformers": "convert", "transformers_config": "convert",
    "IMAGENET_MEAN": "losses", "IMAGENET_STD": "losses", "LOSSES": "losses", "normalize": "losses",
    "unnormalize": "losses", "unpatchify": "losses",
    "STRATEGIES": "choices", "LOSS_NAMES": "choices", "decoder_mask": "masking", "make_mask": "masking",
    "PRESETS": "presets", "ModelConfig": "presets", "model_config": "presets",
    "reconstruct": "reconstruct",
    "PretrainOutput": "videomae", "VideoEncoder": "videomae", "VideoMAE": "videomae",
}
__all__ = sorted(_SUBMODULE)


def __getattr__(name: str) -> Any:
    if name not in _SUBMODULE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_SUBMODULE[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
