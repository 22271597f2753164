"""Reconstruction targets and losses over masked tokens, as the reference defines them."""
from __future__ import annotations

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


def patchify(video: torch.Tensor, patch_size: int, tubelet_size: int) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, tokens, tubelet * patch * patch, C), tokens in (t, h, w) order."""
    b, c, t, h, w = video.shape
    p, q = patch_size, tubelet_size
    cubes = video.reshape(b, c, t // q, q, h // p, p, w // p, p)
    cubes = cubes.permute(0, 2, 4, 6, 3, 5, 7, 1)
    return cubes.reshape(b, (t // q) * (h // p) * (w // p), q * p * p, c)


def unpatchify(patches: torch.Tensor, grid: tuple[int, int, int], patch_size: int,
               tubelet_size: int, in_chans: int = 3) -> torch.Tensor:
    """Inverse of patchify followed by flattening: (B, tokens, patch_dim) -> (B, C, T, H, W)."""
    b = patches.shape[0]
    slots, rows, cols = grid
    p, q = patch_size, tubelet_size
    cubes = patches.reshape(b, slots, rows, cols, q, p, p, in_chans)
    video = cubes.permute(0, 7, 1, 4, 2, 5, 3, 6)
    return video.reshape(b, in_chans, slots * q, rows * p, cols * p)


def reconstruction_target(video: torch.Tensor, patch_size: int, tubelet_size: int,
                          normalize_cubes: bool = True) -> torch.Tensor:
    """(B, tokens, patch_dim) target from an ImageNet-normalized clip, in fp32.

    With `normalize_cubes`, each cube is normalized per channel over its pixels with the
    unbiased std + 1e-6, exactly as the reference's normalized-pixel target."""
    cubes = patchify(unnormalize(video.float()), patch_size, tubelet_size)
    if normalize_cubes:
        mean = cubes.mean(dim=-2, keepdim=True)
        std = cubes.var(dim=-2, unbiased=True, keepdim=True).sqrt()
        cubes = (cubes - mean) / (std + 1e-6)
    return cubes.flatten(2)


def masked_reconstruction_loss(pred: torch.Tensor, video: torch.Tensor, mask: torch.Tensor,
                               loss: str, patch_size: int, tubelet_size: int) -> torch.Tensor:
    """Loss between predictions for the masked tokens (B, masked, patch_dim) and their targets."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose from {list(LOSSES)}")
    loss_fn, normalize_cubes = LOSSES[loss]
    target = reconstruction_target(video, patch_size, tubelet_size, normalize_cubes)
    target = target[mask].reshape(pred.shape[0], -1, target.shape[-1])
    return loss_fn(pred.float(), target)
