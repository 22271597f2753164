"""Reconstruction targets and losses over masked tokens, as the reference defines them."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Loss name -> (elementwise loss, target is per-cube normalized pixels)
LOSSES = {
    "mse": (F.mse_loss, True),
    "mse_raw": (F.mse_loss, False),
    "l1": (F.l1_loss, True),
    "smooth_l1": (F.smooth_l1_loss, True),
}


def _stats(video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, -1, 1, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=video.dtype, device=video.device).view(shape)
    std = torch.tensor(IMAGENET_STD, dtype=video.dtype, device=video.device).view(shape)
    return mean, std


def unnormalize(video: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalized (B, C, T, H, W) back to [0, 1] pixels."""
    mean, std = _stats(video)
    return video * std + mean


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels (B, C, T, H, W) to ImageNet-normalized values."""
    mean, std = _stats(pixels)
    return (pixels - mean) / std


def cube_pixels(video: torch.Tensor, patch_size: int, tubelet_size: int) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, tokens, C, tubelet * patch * patch), tokens in (t, h, w) order.

    Channel-major cubes: flattened they match a Conv3d weight (D, C, t, p, p), so the cube
    embedding is a linear map; per-channel statistics reduce over the contiguous last dim."""
    b, c, t, h, w = video.shape
    p, q = patch_size, tubelet_size
    cubes = video.reshape(b, c, t // q, q, h // p, p, w // p, p)
    cubes = cubes.permute(0, 2, 4, 6, 1, 3, 5, 7)
    return cubes.reshape(b, (t // q) * (h // p) * (w // p), c, q * p * p)


def patchify(video: torch.Tensor, patch_size: int, tubelet_size: int) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, tokens, tubelet * patch * patch, C): the reference's cube layout."""
    return cube_pixels(video, patch_size, tubelet_size).transpose(2, 3)


def unpatchify(patches: torch.Tensor, grid: tuple[int, int, int], patch_size: int,
               tubelet_size: int, in_chans: int = 3) -> torch.Tensor:
    """Inverse of patchify followed by flattening: (B, tokens, patch_dim) -> (B, C, T, H, W)."""
    b = patches.shape[0]
    slots, rows, cols = grid
    p, q = patch_size, tubelet_size
    cubes = patches.reshape(b, slots, rows, cols, q, p, p, in_chans)
    video = cubes.permute(0, 7, 1, 4, 2, 5, 3, 6)
    return video.reshape(b, in_chans, slots * q, rows * p, cols * p)


def reconstruction_target(cubes: torch.Tensor, normalize_cubes: bool = True) -> torch.Tensor:
    """Targets (B, K, patch_dim) in fp32 from ImageNet-normalized cubes (B, K, C, P) (cube_pixels).

    The reference un-normalizes the pixels, then (with `normalize_cubes`) normalizes each cube
    per channel over its pixels with the unbiased std + 1e-6. Un-normalizing is x * s + m per
    channel, so that equals (x - mean) / (std + 1e-6 / s) on the normalized values x: computed
    so, in two passes of plain reductions (torch.var_mean is several times slower here).
    Flattened pixel-major, channel-minor, as the reference's '(p0 p1 p2 c)'."""
    shape = (1, 1, -1, 1)
    std = torch.tensor(IMAGENET_STD, device=cubes.device).view(shape)
    if not normalize_cubes:
        pixels = (cubes.float() * std).add_(torch.tensor(IMAGENET_MEAN, device=cubes.device).view(shape))
        return pixels.transpose(2, 3).flatten(2)
    cubes = cubes.float()
    pixels = cubes - cubes.mean(-1, keepdim=True)  # a new tensor: the caller's cubes are left alone
    # The fp32 mean of a flat cube is off by an ulp, which the division would blow up by 1e6:
    # removing the residual's mean makes a flat cube's target exactly zero.
    pixels.sub_(pixels.mean(-1, keepdim=True))
    spread = torch.linalg.vector_norm(pixels, dim=-1, keepdim=True).div_(math.sqrt(pixels.shape[-1] - 1))
    pixels.div_(spread.add_(1e-6 / std))
    return pixels.transpose(2, 3).flatten(2)


def loss_by_name(loss: str) -> tuple:
    """LOSSES' entry for `loss`: its elementwise loss and whether the target is normalized."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose from {list(LOSSES)}")
    return LOSSES[loss]


def reconstruction_loss(pred: torch.Tensor, target_cubes: torch.Tensor, loss: str,
                        scored: torch.Tensor | None = None) -> torch.Tensor:
    """Loss between predictions (B, K, patch_dim) and the cubes (B, K, C, P) they reconstruct;
    with `scored` (B, K) bool, the mean over the tokens it marks (VideoMAE V2's cal_loss_mask)."""
    loss_fn, normalize_cubes = loss_by_name(loss)
    target = reconstruction_target(target_cubes, normalize_cubes)
    if scored is None:
        return loss_fn(pred.float(), target)
    per_token = loss_fn(pred.float(), target, reduction="none").mean(-1)
    return (per_token * scored).sum() / scored.sum()
