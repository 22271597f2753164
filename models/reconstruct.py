"""Reconstructions in pixel space, for report galleries: original, masked input, reconstruction."""
from __future__ import annotations

import torch

from .losses import LOSSES, patchify, unnormalize, unpatchify
from .videomae import VideoMAE


@torch.no_grad()
def reconstruct(model: VideoMAE, video: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Pixels in [0, 1], each (B, C, T, H, W): `original`, `masked` (masked cubes grey) and
    `reconstruction` (visible cubes as given, masked cubes predicted). A normalized-pixel model
    predicts each cube's shape, not its level: the cube's own mean and std are put back."""
    config, training = model.config, model.training
    model.eval()  # drop path would make the predictions random
    try:
        with torch.no_grad():
            pred = model(video, mask).pred.float()
    finally:
        model.train(training)
    pixels = unnormalize(video.float()).clamp(0, 1)
    cubes = patchify(pixels, config.patch_size, config.tubelet_size)  # (B, N, P, C)
    _, normalized = LOSSES[model.loss_name]
    predicted = pred.reshape(pred.shape[0], -1, cubes.shape[2], cubes.shape[3])
    if normalized:
        masked_cubes = cubes[mask].reshape(predicted.shape)
        mean = masked_cubes.mean(dim=2, keepdim=True)
        std = masked_cubes.var(dim=2, unbiased=True, keepdim=True).sqrt() + 1e-6
        predicted = predicted * std + mean
    filled, greyed = cubes.clone(), cubes.clone()
    filled[mask] = predicted.reshape(-1, *cubes.shape[2:]).clamp(0, 1)
    greyed[mask] = 0.5
    to_video = lambda c: unpatchify(c.flatten(2), config.grid, config.patch_size, config.tubelet_size,
                                    config.in_chans)  # noqa: E731
    return {"original": pixels, "masked": to_video(greyed), "reconstruction": to_video(filled)}
