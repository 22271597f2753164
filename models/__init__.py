"""Pure PyTorch VideoMAE: no Ray, no files, no YAML."""
from .classifier import VideoClassifier, layer_decay_groups, temporal_features
from .convert import config_from_transformers, config_to_transformers, convert_official, from_transformers
from .losses import IMAGENET_MEAN, IMAGENET_STD, LOSSES, normalize, unnormalize, unpatchify
from .masking import STRATEGIES, decoder_mask, make_mask
from .presets import PRESETS, ModelConfig, model_config
from .reconstruct import reconstruct
from .videomae import PretrainOutput, VideoEncoder, VideoMAE

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "LOSSES", "PRESETS", "STRATEGIES", "ModelConfig", "PretrainOutput",
    "VideoClassifier", "VideoEncoder", "VideoMAE", "config_from_transformers", "config_to_transformers",
    "convert_official", "decoder_mask", "from_transformers", "layer_decay_groups", "make_mask",
    "model_config", "normalize", "reconstruct", "temporal_features", "unnormalize", "unpatchify",
]
