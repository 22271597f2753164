"""One clip dataset over a manifest, decoding with decord."""
from __future__ import annotations

import random

import decord
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from models import normalize

decord.bridge.set_bridge("native")


class ClipDataset(Dataset):
    """(video (C, T, H, W) ImageNet-normalized float, label) per manifest row.

    `train`: one random window of `num_frames` at `stride` per epoch (reseeded by set_epoch).
    Otherwise: `num_frames` indices spread uniformly over the whole video (segment sampling)."""

    def __init__(self, paths: list[str], labels: list[int], num_frames: int, size: int,
                 stride: int = 1, train: bool = True, seed: int = 0):
        self.paths, self.labels = list(paths), list(labels)
        self.num_frames, self.size, self.stride = num_frames, size, stride
        self.train, self.seed, self.epoch = train, seed, 0

    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def frame_indices(self, length: int, index: int) -> list[int]:
        if not self.train:
            return np.linspace(0, length - 1, self.num_frames).round().astype(int).tolist()
        span = (self.num_frames - 1) * self.stride + 1
        if span > length:  # too short for this stride: loop the video
            return [(i * self.stride) % length for i in range(self.num_frames)]
        start = random.Random(hash((self.seed, self.epoch, index))).randint(0, length - span)
        return list(range(start, start + span, self.stride))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        reader = decord.VideoReader(self.paths[index], num_threads=1)
        frames = reader.get_batch(self.frame_indices(len(reader), index)).asnumpy()
        video = torch.from_numpy(frames).permute(3, 0, 1, 2).float().div_(255)  # C, T, H, W
        if video.shape[-1] != self.size or video.shape[-2] != self.size:
            video = F.interpolate(video, size=(self.size, self.size), mode="bilinear", antialias=True,
                                  align_corners=False)
        return normalize(video.unsqueeze(0))[0], self.labels[index]
