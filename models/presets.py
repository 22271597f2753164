"""One registry of VideoMAE model presets; every field can be overridden by keyword."""
from __future__ import annotations

import numbers
from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a VideoMAE encoder-decoder. Defaults are the paper's ViT-B, 16x224x224."""

    img_size: int = 224
    num_frames: int = 16
    patch_size: int = 16
    tubelet_size: int = 2
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    decoder_embed_dim: int = 384
    decoder_depth: int = 4
    decoder_num_heads: int = 6
    norm_eps: float = 1e-6
    drop_path: float = 0.0

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid (temporal slots, rows, columns)."""
        side = self.img_size // self.patch_size
        return self.num_frames // self.tubelet_size, side, side

    @property
    def num_tokens(self) -> int:
        slots, rows, cols = self.grid
        return slots * rows * cols

    @property
    def patch_dim(self) -> int:
        """Values per cube: what the decoder predicts for one token."""
        return self.in_chans * self.tubelet_size * self.patch_size**2

    def validate(self) -> None:
        for field in fields(self):  # sizes and counts are whole numbers >= 1; ratios are numbers
            value, whole = getattr(self, field.name), isinstance(field.default, int)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral if whole else numbers.Real):
                raise ValueError(f"{field.name} must be {'a whole number' if whole else 'a number'}, not {value!r}")
            positive = field.name in ("mlp_ratio", "norm_eps")
            if value < (1 if whole else 0) or (positive and value == 0):
                least = "at least 1" if whole else "above 0" if positive else "at least 0"
                raise ValueError(f"{field.name} must be {least}, not {value!r}")
        if self.in_chans != 3:  # the pixel target and the galleries un-normalize with ImageNet's RGB statistics
            raise ValueError(f"in_chans must be 3 (RGB clips, ImageNet-normalized), not {self.in_chans}")
        if self.drop_path >= 1:
            raise ValueError(f"drop_path must be below 1, not {self.drop_path}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.num_frames % self.tubelet_size:
            raise ValueError(f"num_frames {self.num_frames} is not a multiple of tubelet_size {self.tubelet_size}")
        if self.embed_dim % self.num_heads or self.decoder_embed_dim % self.decoder_num_heads:
            raise ValueError("embedding widths must be multiples of their head counts")


# Widths and heads as in the paper (decoder half the encoder's width, depth 4).
# `tiny` is sized for CPU studies: 32x32 frames, 8x8 patches, 128 tokens per clip.
PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(img_size=32, patch_size=8, embed_dim=192, depth=4, num_heads=3,
                        decoder_embed_dim=96, decoder_depth=2, decoder_num_heads=3),
    "small": ModelConfig(embed_dim=384, depth=12, num_heads=6,
                         decoder_embed_dim=192, decoder_num_heads=3),
    "base": ModelConfig(),
    "large": ModelConfig(embed_dim=1024, depth=24, num_heads=16,
                         decoder_embed_dim=512, decoder_num_heads=8),
    "huge": ModelConfig(embed_dim=1280, depth=32, num_heads=16,
                        decoder_embed_dim=640, decoder_num_heads=8),
}

CONFIG_FIELDS = frozenset(f.name for f in fields(ModelConfig))


def model_config(preset: str, **overrides: Any) -> ModelConfig:
    """The preset's config with `overrides` applied; unknown names raise ValueError."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose from {sorted(PRESETS)}")
    unknown = set(overrides) - CONFIG_FIELDS
    if unknown:
        raise ValueError(f"unknown model field(s) {sorted(unknown)}; fields are {sorted(CONFIG_FIELDS)}")
    config = replace(PRESETS[preset], **overrides)
    config.validate()
    return config
