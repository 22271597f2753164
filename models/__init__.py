"""Pure PyTorch VideoMAE: no Ray, no files, no YAML."""
from .classifier import VideoClassifier, layer_decay_groups, temporal_features
from .losses import IMAGENET_MEAN, IMAGENET_STD, LOSSES, normalize, unnormalize, unpatchify
from .masking import STRATEGIES, decoder_mask, make_mask
from .presets import PRESETS, ModelConfig, model_config
from .videomae import PretrainOutput, VideoEncoder, VideoMAE

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "LOSSES", "PRESETS", "STRATEGIES", "ModelConfig", "PretrainOutput",
    "VideoClassifier", "VideoEncoder", "VideoMAE", "decoder_mask", "make_mask", "model_config", "normalize",
    "temporal_features", "unnormalize", "unpatchify",
]
from .convert import config_from_transformers, convert_official, from_transformers  # noqa: E402

from .reconstruct import reconstruct  # noqa: E402

__all__ += ["config_from_transformers", "convert_official", "from_transformers", "layer_decay_groups",
            "reconstruct"]
