"""VideoMAE: masked autoencoder for video (Tong et al., NeurIPS 2022).

Cube embedding -> ViT encoder over the visible tokens only -> bias-free projection to the
decoder -> decoder over [visible, mask tokens] -> predictions for the masked tokens -> loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from .losses import masked_reconstruction_loss
from .presets import ModelConfig


def sincos_table(num_tokens: int, dim: int) -> torch.Tensor:
    """Fixed 1-D sin-cos position table (1, tokens, dim), sin and cos interleaved as in the reference."""
    position = torch.arange(num_tokens, dtype=torch.float64).unsqueeze(1)
    exponent = 2 * (torch.arange(dim) // 2).to(torch.float64) / dim
    angles = position / torch.pow(10000.0, exponent)
    table = torch.empty_like(angles)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.float().unsqueeze(0)


class CubeEmbedding(nn.Module):
    """Non-overlapping tubelet x patch x patch cubes -> tokens ordered (t, h, w)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        kernel = (config.tubelet_size, config.patch_size, config.patch_size)
        self.proj = nn.Conv3d(config.in_chans, config.embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.proj(video).flatten(2).transpose(1, 2)


def _blocks(dim: int, depth: int, heads: int, config: ModelConfig, drop_path: float) -> nn.ModuleList:
    # timm's pre-norm Block (fused SDPA attention). Its k-bias gets no gradient (softmax is
    # shift-invariant per query), so it equals the reference's q/v-bias-only attention.
    rates = torch.linspace(0, drop_path, depth).tolist() if depth > 1 else [drop_path]
    norm = partial(nn.LayerNorm, eps=config.norm_eps)
    return nn.ModuleList(
        Block(dim, heads, mlp_ratio=config.mlp_ratio, qkv_bias=True, drop_path=rate, norm_layer=norm)
        for rate in rates)


class VideoEncoder(nn.Module):
    """ViT encoder with joint space-time attention; runs on whichever tokens it is given."""

    def __init__(self, config: ModelConfig, final_norm: bool = True):
        super().__init__()
        self.config = config
        self.patch_embed = CubeEmbedding(config)
        self.register_buffer("pos_embed", sincos_table(config.num_tokens, config.embed_dim), persistent=False)
        self.blocks = _blocks(config.embed_dim, config.depth, config.num_heads, config, config.drop_path)
        self.norm = nn.LayerNorm(config.embed_dim, eps=config.norm_eps) if final_norm else nn.Identity()

    def forward(self, video: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens (B, visible, D) of a normalized clip (B, C, T, H, W); mask True = dropped."""
        tokens = self.patch_embed(video) + self.pos_embed.to(video.dtype)
        if mask is not None:
            tokens = tokens[~mask].reshape(tokens.shape[0], -1, tokens.shape[-1])
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)


class VideoDecoder(nn.Module):
    """Decoder blocks -> LayerNorm -> Linear to one cube of pixels per token."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.blocks = _blocks(config.decoder_embed_dim, config.decoder_depth, config.decoder_num_heads,
                              config, drop_path=0.0)
        self.norm = nn.LayerNorm(config.decoder_embed_dim, eps=config.norm_eps)
        self.head = nn.Linear(config.decoder_embed_dim, config.patch_dim)

    def forward(self, tokens: torch.Tensor, predict_last: int) -> torch.Tensor:
        """Predictions for the last `predict_last` tokens (the mask tokens)."""
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.norm(tokens[:, -predict_last:]))


@dataclass
class PretrainOutput:
    loss: torch.Tensor
    pred: torch.Tensor  # (B, masked tokens, patch_dim): predictions for the masked tokens


class VideoMAE(nn.Module):
    """The asymmetric encoder-decoder used for pre-training."""

    def __init__(self, config: ModelConfig, loss: str = "mse", final_norm: bool = True):
        super().__init__()
        self.config = config
        self.loss_name = loss
        self.encoder = VideoEncoder(config, final_norm=final_norm)
        self.encoder_to_decoder = nn.Linear(config.embed_dim, config.decoder_embed_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.decoder_embed_dim))
        self.register_buffer("decoder_pos_embed", sincos_table(config.num_tokens, config.decoder_embed_dim),
                             persistent=False)
        self.decoder = VideoDecoder(config)
        self.apply(_init_weights)
        trunc_normal_(self.mask_token, std=0.02)

    def forward_encoder(self, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(video, mask)

    def forward_decoder(self, visible_tokens: torch.Tensor, mask: torch.Tensor,
                        targets: torch.Tensor | None = None) -> torch.Tensor:
        """Predictions (B, targets, patch_dim) for the target tokens (default: all masked), in token order."""
        targets = mask if targets is None else targets
        batch = visible_tokens.shape[0]
        visible = self.encoder_to_decoder(visible_tokens)
        pos = self.decoder_pos_embed.expand(batch, -1, -1).to(visible.dtype)
        dim = visible.shape[-1]
        visible_pos = pos[~mask].reshape(batch, -1, dim)
        target_pos = pos[targets].reshape(batch, -1, dim)
        tokens = torch.cat([visible + visible_pos, self.mask_token.to(visible.dtype) + target_pos], dim=1)
        return self.decoder(tokens, predict_last=target_pos.shape[1])

    def forward_loss(self, video: torch.Tensor, targets: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        return masked_reconstruction_loss(pred, video, targets, self.loss_name,
                                          self.config.patch_size, self.config.tubelet_size)

    def forward(self, video: torch.Tensor, mask: torch.Tensor,
                decoder_mask: torch.Tensor | None = None) -> PretrainOutput:
        """Normalized clip (B, C, T, H, W), mask (B, tokens) bool with True = masked.

        With `decoder_mask` (True = not reconstructed; V2 dual masking), only tokens masked for
        the encoder and kept by the decoder are predicted and scored."""
        targets = mask if decoder_mask is None else mask & ~decoder_mask
        counts = targets.sum(1)
        if bool((counts != counts[0]).any()) or int(counts[0]) == 0:
            raise ValueError("every sample needs the same, non-zero number of target tokens")
        pred = self.forward_decoder(self.forward_encoder(video, mask), mask, targets)
        with torch.autocast(device_type=video.device.type, enabled=False):
            loss = self.forward_loss(video, targets, pred)
        return PretrainOutput(loss=loss, pred=pred)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
