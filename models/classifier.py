"""Evaluation heads over a VideoMAE encoder: features for probes, and a classifier for fine-tuning."""
from __future__ import annotations

from dataclasses import replace
from functools import partial

import torch
from torch import nn

from .presets import ModelConfig
from .videomae import VideoEncoder, VideoMAE, init_weights


def temporal_features(tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Mean over space within each temporal slot, slots concatenated: (B, slots * D).

    Keeps temporal order, which motion classes are defined by; a mean over all tokens loses it."""
    batch, count, dim = tokens.shape
    slots, rows, cols = grid
    if count != slots * rows * cols:
        raise ValueError(f"temporal_features needs every token of the {slots}x{rows}x{cols} grid "
                         f"({slots * rows * cols}), not {count}: encode the clip without a mask")
    return tokens.reshape(batch, slots, -1, dim).mean(dim=2).flatten(1)


class VideoClassifier(nn.Module):
    """Encoder -> mean pooling over tokens -> LayerNorm (fc_norm) -> Linear head."""

    def __init__(self, config: ModelConfig, num_classes: int, head_init_scale: float = 0.001):
        super().__init__()
        self.config = config
        self.encoder = VideoEncoder(config, final_norm=False)
        self.fc_norm = nn.LayerNorm(config.embed_dim, eps=config.norm_eps)
        self.head = nn.Linear(config.embed_dim, num_classes)
        # the reference's fine-tuning model; from_pretrained replaces the encoder's
        self.apply(partial(init_weights, linear=partial(nn.init.trunc_normal_, std=0.02)))
        with torch.no_grad():
            self.head.weight.mul_(head_init_scale)

    @classmethod
    def from_pretrained(cls, pretrained: VideoMAE, num_classes: int, drop_path: float | None = None,
                        **kwargs) -> "VideoClassifier":
        """A classifier whose encoder starts from a pre-trained VideoMAE's encoder (with its own
        stochastic depth rate if `drop_path` is given). As in the reference, the encoder's final
        norm is not carried over: fc_norm after pooling replaces it."""
        if not isinstance(pretrained, VideoMAE):
            raise TypeError(f"from_pretrained takes a VideoMAE model, got {type(pretrained).__name__}; for a state dict, "
                            "build VideoMAE(config) and load_state_dict it first")
        config = pretrained.config if drop_path is None else replace(pretrained.config, drop_path=drop_path)
        classifier = cls(config, num_classes, **kwargs)
        encoder_state = {k: v for k, v in pretrained.encoder.state_dict().items() if not k.startswith("norm.")}
        classifier.encoder.load_state_dict(encoder_state)
        return classifier

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_norm(self.encoder(video).mean(dim=1)))


def layer_decay_groups(classifier: VideoClassifier, lr: float, weight_decay: float,
                       layer_decay: float = 0.75) -> list[dict]:
    """AdamW parameter groups with layer-wise lr decay: scale = decay ** (L + 1 - layer), where the
    cube embedding is layer 0, block i is layer i + 1 and the head is L + 1. Biases and norms get
    no weight decay."""
    depth = classifier.config.depth
    groups: dict[tuple[int, bool], dict] = {}
    for name, parameter in classifier.named_parameters():
        if not parameter.requires_grad:
            continue
        if name.startswith("encoder.patch_embed"):
            layer = 0
        elif name.startswith("encoder.blocks."):
            layer = int(name.split(".")[2]) + 1
        else:
            layer = depth + 1
        decay = parameter.ndim > 1 and not name.endswith(".bias")
        group = groups.setdefault((layer, decay), {
            "params": [], "weight_decay": weight_decay if decay else 0.0,
            "lr": lr * layer_decay ** (depth + 1 - layer), "lr_scale": layer_decay ** (depth + 1 - layer)})
        group["params"].append(parameter)
    return list(groups.values())
