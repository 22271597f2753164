"""Evaluation heads over a VideoMAE encoder: features for probes, and a classifier for fine-tuning."""
from __future__ import annotations

import torch
from torch import nn

from .presets import ModelConfig
from .videomae import VideoEncoder


def temporal_features(tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Mean over space within each temporal slot, slots concatenated: (B, slots * D).

    Keeps temporal order, which motion classes are defined by; a mean over all tokens loses it."""
    batch, _, dim = tokens.shape
    slots = grid[0]
    return tokens.reshape(batch, slots, -1, dim).mean(dim=2).flatten(1)


class VideoClassifier(nn.Module):
    """Encoder -> mean pooling over tokens -> LayerNorm (fc_norm) -> Linear head."""

    def __init__(self, config: ModelConfig, num_classes: int, head_init_scale: float = 0.001):
        super().__init__()
        self.config = config
        self.encoder = VideoEncoder(config, final_norm=False)
        self.fc_norm = nn.LayerNorm(config.embed_dim, eps=config.norm_eps)
        self.head = nn.Linear(config.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        with torch.no_grad():
            self.head.weight.mul_(head_init_scale)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_norm(self.encoder(video).mean(dim=1)))
