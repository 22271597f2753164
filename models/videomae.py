"""VideoMAE: masked autoencoder for video (Tong et al., NeurIPS 2022).

Cube embedding -> ViT encoder over the visible tokens only -> bias-free projection to the
decoder -> decoder over [visible, mask tokens] -> predictions for the masked tokens -> loss.
Tokens are selected with index gathers of static shape (the same count in every sample), so
the embedding and the target are computed only for the tokens that need them.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from timm.layers import Attention as TimmAttention
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from .losses import cube_pixels, loss_by_name, reconstruction_loss
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


def selected_ids(selected: torch.Tensor) -> torch.Tensor:
    """Indices (B, K) of the True entries of a (B, N) bool mask, in token order; K must be equal
    in every row (checked once here, so the gathers after it have a static shape)."""
    counts = selected.sum(1)
    if bool((counts != counts[0]).any()):
        raise ValueError("every sample needs the same number of selected tokens")
    order = torch.argsort((~selected).to(torch.uint8), dim=1, stable=True)
    return order[:, :int(counts[0])]


def check_mask(mask: torch.Tensor, batch: int, num_tokens: int, name: str = "mask") -> None:
    """A mask must be bool (B, tokens): a 0/1 integer mask inverted with ~ would select every token."""
    if mask.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor (True = masked), not {mask.dtype}")
    if tuple(mask.shape) != (batch, num_tokens):
        raise ValueError(f"{name} must be (batch, tokens) = ({batch}, {num_tokens}), not {tuple(mask.shape)}")


def visible_token_ids(mask: torch.Tensor, batch: int, num_tokens: int) -> torch.Tensor:
    """Indices (B, visible) of the tokens a checked encoder mask leaves visible."""
    check_mask(mask, batch, num_tokens)
    visible_ids = selected_ids(~mask)
    if visible_ids.shape[1] == 0:
        raise ValueError("the mask leaves no token visible to the encoder")
    return visible_ids


def gather_tokens(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """tokens (B, N, ...) at ids (B, K) -> (B, K, ...)."""
    index = ids.view(*ids.shape, *([1] * (tokens.ndim - 2))).expand(-1, -1, *tokens.shape[2:])
    return torch.gather(tokens, 1, index)


class CubeEmbedding(nn.Module):
    """Non-overlapping tubelet x patch x patch cubes -> tokens. Holds the reference's Conv3d
    weight; applies it as a linear map to cubes (same result), so that only the visible cubes
    are embedded."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        kernel = (config.tubelet_size, config.patch_size, config.patch_size)
        self.proj = nn.Conv3d(config.in_chans, config.embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, cubes: torch.Tensor) -> torch.Tensor:
        """Cubes (B, K, C, t*p*p) from cube_pixels -> tokens (B, K, D)."""
        return F.linear(cubes.flatten(2), self.proj.weight.flatten(1), self.proj.bias)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over (B, heads, tokens, d), with the kernel picked for CPU bf16
    autocast (benchmarks/attention.py, on AMX): plain bf16 matmuls win on short sequences and
    small score matrices; PyTorch's fused bf16 kernel wins on long sequences but is slower than
    its fp32 one on short ones. Elsewhere: the fused kernel in the autocast dtype."""
    batch, heads, tokens, dim = q.shape
    if q.device.type != "cpu" or q.dtype != torch.bfloat16:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    short = tokens <= 512
    if dropout == 0.0 and (short or batch * heads * tokens**2 <= 2**23):
        return ((q * dim**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
    if short:  # only with attention dropout, which VideoMAE does not use
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), dropout_p=dropout).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)


class Attention(TimmAttention):
    """timm's attention with the kernel chosen by `attend`."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("VideoMAE attention is unmasked and non-causal")
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = attend(q, k, v, self.attn_drop.p if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(batch, tokens, -1)))


def _blocks(dim: int, depth: int, heads: int, config: ModelConfig, drop_path: float) -> nn.ModuleList:
    # timm's pre-norm Block (fused SDPA attention). Its k-bias gets no gradient (softmax is
    # shift-invariant per query), so it equals the reference's q/v-bias-only attention.
    rates = torch.linspace(0, drop_path, depth).tolist()  # the reference's schedule: 0 for a single block
    norm = partial(nn.LayerNorm, eps=config.norm_eps)
    return nn.ModuleList(
        Block(dim, heads, mlp_ratio=config.mlp_ratio, qkv_bias=True, drop_path=rate, norm_layer=norm,
              attn_layer=Attention)
        for rate in rates)


class VideoEncoder(nn.Module):
    """ViT encoder with joint space-time attention; runs on whichever tokens it is given."""

    def __init__(self, config: ModelConfig, final_norm: bool = True):
        super().__init__()
        config.validate()
        self.config = config
        self.patch_embed = CubeEmbedding(config)
        self.register_buffer("pos_embed", sincos_table(config.num_tokens, config.embed_dim), persistent=False)
        self.blocks = _blocks(config.embed_dim, config.depth, config.num_heads, config, config.drop_path)
        self.norm = nn.LayerNorm(config.embed_dim, eps=config.norm_eps) if final_norm else nn.Identity()

    def forward(self, video: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens (B, visible, D) of a normalized clip (B, C, T, H, W); mask True = dropped."""
        self.check_clip(video)
        visible_ids = None if mask is None else visible_token_ids(mask, video.shape[0], self.config.num_tokens)
        cubes = cube_pixels(video, self.config.patch_size, self.config.tubelet_size)
        return self.forward_cubes(cubes, visible_ids)

    def check_clip(self, video: torch.Tensor) -> None:
        """The clip must have the config's shape: cubes cut from another size would be gathered
        at the wrong places without an error."""
        config = self.config
        expected = (config.in_chans, config.num_frames, config.img_size, config.img_size)
        if video.ndim != 5 or tuple(video.shape[1:]) != expected:
            raise ValueError(f"expected a clip (B, C, T, H, W) = (batch, {', '.join(map(str, expected))}), "
                             f"not {tuple(video.shape)}")

    def forward_cubes(self, cubes: torch.Tensor, visible_ids: torch.Tensor | None) -> torch.Tensor:
        """Encode all cubes (B, N, C, P), or only those at visible_ids (B, K)."""
        pos = self.pos_embed.expand(cubes.shape[0], -1, -1)
        if visible_ids is not None:
            cubes, pos = gather_tokens(cubes, visible_ids), gather_tokens(pos, visible_ids)
        tokens = self.patch_embed(cubes.to(self.patch_embed.proj.weight.dtype))
        tokens = tokens + pos.to(tokens.dtype)
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
    pred: torch.Tensor  # (B, predicted tokens, patch_dim) in token order: masked, or decoder-kept, tokens


class VideoMAE(nn.Module):
    """The asymmetric encoder-decoder used for pre-training."""

    def __init__(self, config: ModelConfig, loss: str = "mse", final_norm: bool = True):
        super().__init__()
        loss_by_name(loss)  # an unknown name fails here, not at the first step
        self.config = config
        self.loss_name = loss
        self.encoder = VideoEncoder(config, final_norm=final_norm)
        self.encoder_to_decoder = nn.Linear(config.embed_dim, config.decoder_embed_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.decoder_embed_dim))
        self.register_buffer("decoder_pos_embed", sincos_table(config.num_tokens, config.decoder_embed_dim),
                             persistent=False)
        self.decoder = VideoDecoder(config)
        self.apply(init_weights)
        trunc_normal_(self.mask_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """Parameters AdamW leaves undecayed besides biases and norms, as the reference does (its
        other entry, pos_embed, is a fixed table here, not a parameter)."""
        return {"mask_token"}

    def forward_encoder(self, cubes: torch.Tensor, visible_ids: torch.Tensor) -> torch.Tensor:
        return self.encoder.forward_cubes(cubes, visible_ids)

    def forward_decoder(self, visible_tokens: torch.Tensor, visible_ids: torch.Tensor,
                        target_ids: torch.Tensor) -> torch.Tensor:
        """Predictions (B, targets, patch_dim) for the tokens at target_ids."""
        visible = self.encoder_to_decoder(visible_tokens)
        pos = self.decoder_pos_embed.expand(visible.shape[0], -1, -1).to(visible.dtype)
        tokens = torch.cat([visible + gather_tokens(pos, visible_ids),
                            self.mask_token.to(visible.dtype) + gather_tokens(pos, target_ids)], dim=1)
        return self.decoder(tokens, predict_last=target_ids.shape[1])

    def forward_loss(self, cubes: torch.Tensor, target_ids: torch.Tensor, pred: torch.Tensor,
                     scored: torch.Tensor | None = None) -> torch.Tensor:
        return reconstruction_loss(pred, gather_tokens(cubes, target_ids), self.loss_name, scored)

    def forward(self, video: torch.Tensor, mask: torch.Tensor,
                decoder_mask: torch.Tensor | None = None) -> PretrainOutput:
        """Normalized clip (B, C, T, H, W), mask (B, tokens) bool with True = masked.

        With `decoder_mask` (True = not reconstructed; VideoMAE V2 dual masking) the decoder
        predicts every token it keeps, visible ones included, and the loss scores those the
        encoder masked."""
        self.encoder.check_clip(video)
        batch, num_tokens = video.shape[0], self.config.num_tokens
        visible_ids = visible_token_ids(mask, batch, num_tokens)
        if decoder_mask is None:
            target_ids, scored = selected_ids(mask), None
        else:
            check_mask(decoder_mask, batch, num_tokens, "decoder_mask")
            target_ids = selected_ids(~decoder_mask)
            scored = gather_tokens(mask, target_ids)
        if target_ids.shape[1] == 0 or (scored is not None and not bool(scored.any())):
            raise ValueError("no token to reconstruct: the mask must mask something the decoder mask keeps")
        cubes = cube_pixels(video, self.config.patch_size, self.config.tubelet_size)
        pred = self.forward_decoder(self.forward_encoder(cubes, visible_ids), visible_ids, target_ids)
        with torch.autocast(device_type=video.device.type, enabled=False):
            loss = self.forward_loss(cubes, target_ids, pred, scored)
        return PretrainOutput(loss=loss, pred=pred)


def init_weights(module: nn.Module, linear: Callable[[torch.Tensor], None] = nn.init.xavier_uniform_) -> None:
    """The reference's initialisation (for `nn.Module.apply`): `linear` for Linear weights (the
    pre-training model's xavier; the fine-tuning model's truncated normal), zero biases, unit norms."""
    if isinstance(module, nn.Linear):
        linear(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
