"""Synthetic video domains written as real mp4 files, with a manifest, cached by their parameters.

`motion`: label = how a random glyph moves (8 classes in time-reversed pairs), like
Something-Something: a single frame says nothing about the label.
`appearance`: label = which of 10 fixed glyphs is shown, motion random, like Kinetics: one
frame is enough. Difficulty knobs (textured drifting background, distractors, noise) make a
randomly initialised encoder struggle, which a pre-training study needs (see notes/science.md).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import av
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

MOTIONS = ("left", "right", "up", "down", "rotate_cw", "rotate_ccw", "grow", "shrink")
APPEARANCE_CLASSES = 10
DOMAINS = ("motion", "appearance")
GENERATOR_VERSION = 1  # bump when rendering changes, so caches are rebuilt


@dataclass(frozen=True)
class SynthParams:
    domain: str = "motion"
    train_clips: int = 512
    val_clips: int = 256
    frames: int = 16
    size: int = 32
    seed: int = 0
    background: str = "black"  # black | texture (smooth noise drifting like a camera pan)
    distractors: int = 0       # extra glyphs on random walks
    noise: float = 0.0         # std of per-pixel Gaussian noise, in [0, 1] pixel units

    def key(self) -> str:
        text = json.dumps({**asdict(self), "version": GENERATOR_VERSION}, sort_keys=True)
        return f"{self.domain}-{hashlib.sha1(text.encode()).hexdigest()[:12]}"


def default_cache_dir() -> Path:
    return Path(os.environ.get("VIDEOMAE_HARNESS_CACHE", Path.home() / ".cache" / "videomae-harness"))


def _glyph(rng: np.random.Generator, cells: int = 5) -> torch.Tensor:
    """A random asymmetric binary glyph (cells x cells), so rotation and flips are visible."""
    while True:
        pattern = rng.random((cells, cells)) < 0.5
        if 0.35 <= pattern.mean() <= 0.75 and not np.array_equal(pattern, np.rot90(pattern, 2)):
            return torch.from_numpy(pattern.astype(np.float32))


def _render(glyph: torch.Tensor, centers: torch.Tensor, angles: torch.Tensor, scales: torch.Tensor,
            sprite_px: float, size: int) -> torch.Tensor:
    """Alpha (T, size, size) of `glyph` drawn at per-frame centre (normalized), angle and scale."""
    half = scales * sprite_px / size  # sprite half-width in normalized canvas units
    cos, sin = torch.cos(angles), torch.sin(angles)
    cx, cy = centers[:, 0], centers[:, 1]
    theta = torch.stack([
        torch.stack([cos, sin, -(cos * cx + sin * cy)], dim=1),
        torch.stack([-sin, cos, sin * cx - cos * cy], dim=1),
    ], dim=1) / half.view(-1, 1, 1)
    frames = centers.shape[0]
    grid = F.affine_grid(theta, [frames, 1, size, size], align_corners=False)
    sprite = glyph.view(1, 1, *glyph.shape).expand(frames, 1, *glyph.shape)
    return F.grid_sample(sprite, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]


def _trajectory(motion: str, frames: int, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
    """Per-frame centre (T, 2) in [-1, 1], angle and scale for one of MOTIONS."""
    t = torch.linspace(0, 1, frames)
    speed = float(rng.uniform(0.6, 1.0))  # distance travelled, in normalized units
    start = torch.tensor(rng.uniform(-0.25, 0.25, size=2), dtype=torch.float32)
    centers = start.repeat(frames, 1)
    angles = torch.full((frames,), float(rng.uniform(0, 2 * math.pi)))
    scales = torch.ones(frames)
    direction = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
    if motion in direction:
        dx, dy = direction[motion]
        offset = (t - 0.5) * speed
        centers = centers + torch.stack([dx * offset, dy * offset], dim=1)
    elif motion.startswith("rotate"):
        sign = 1.0 if motion == "rotate_cw" else -1.0
        angles = angles + sign * t * float(rng.uniform(0.6, 1.0)) * math.pi
    else:
        low, high = 0.6, 1.4
        scales = low + (high - low) * (t if motion == "grow" else 1 - t)
    return centers, angles, scales


def _background(params: SynthParams, rng: np.random.Generator) -> torch.Tensor:
    """(T, 3, size, size) background; `texture` is smooth colour noise panning across frames."""
    frames, size = params.frames, params.size
    if params.background == "black":
        return torch.zeros(frames, 3, size, size)
    coarse = torch.from_numpy(rng.random((1, 3, 8, 8)).astype(np.float32)) * 0.6
    big = F.interpolate(coarse, size=(2 * size, 2 * size), mode="bicubic", align_corners=False).clamp(0, 1)
    velocity = rng.uniform(-0.5, 0.5, size=2)  # pixels per frame: camera motion
    origin = rng.uniform(0, size / 2, size=2)
    crops = []
    for index in range(frames):
        x, y = (origin + velocity * index).round().astype(int) % size
        crops.append(big[0, :, y:y + size, x:x + size])
    return torch.stack(crops)


def render_clip(params: SynthParams, split: str, index: int) -> tuple[np.ndarray, int]:
    """One clip (T, size, size, 3) uint8 and its label; deterministic in (params, split, index)."""
    split_id = {"train": 0, "val": 1}[split]
    rng = np.random.default_rng([params.seed, split_id, index])
    if params.domain == "motion":
        label = int(rng.integers(len(MOTIONS)))
        glyph, motion = _glyph(rng), MOTIONS[label]
    elif params.domain == "appearance":
        label = int(rng.integers(APPEARANCE_CLASSES))
        glyph = _glyph(np.random.default_rng([params.seed, 99, label]))
        motion = MOTIONS[int(rng.integers(len(MOTIONS)))]
    else:
        raise ValueError(f"unknown synthetic domain {params.domain!r}; choose from {DOMAINS}")
    video = _background(params, rng)
    sprite_px = params.size * 0.3
    layers = [(glyph, motion, sprite_px)]
    for _ in range(params.distractors):
        layers.insert(0, (_glyph(rng), MOTIONS[int(rng.integers(len(MOTIONS)))], sprite_px * 0.6))
    for layer_glyph, layer_motion, px in layers:
        alpha = _render(layer_glyph, *_trajectory(layer_motion, params.frames, rng), px, params.size)
        color = torch.tensor(rng.uniform(0.5, 1.0, size=3), dtype=torch.float32).view(1, 3, 1, 1)
        video = video * (1 - alpha.unsqueeze(1)) + color * alpha.unsqueeze(1)
    if params.noise > 0:
        video = video + torch.from_numpy(rng.normal(0, params.noise, video.shape).astype(np.float32))
    pixels = (video.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    return pixels.numpy(), label


def write_mp4(path: Path, frames: np.ndarray, fps: int = 15) -> None:
    """Write (T, H, W, 3) uint8 frames as an h264 mp4 (4:4:4 chroma so small frames keep their colours)."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv444p"
        stream.options = {"crf": "12", "preset": "veryfast", "tune": "zerolatency"}
        stream.codec_context.thread_count = 1
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _write_one(args: tuple[SynthParams, str, int, str]) -> tuple[str, int, str]:
    params, split, index, root = args
    torch.set_num_threads(1)
    frames, label = render_clip(params, split, index)
    relative = f"{split}/{index:06d}.mp4"
    write_mp4(Path(root) / relative, frames)
    return relative, label, split


def generate(params: SynthParams, out_dir: Path, workers: int | None = None,
             progress: Callable[[int, int], None] | None = None) -> Path:
    """Write every clip and `manifest.csv` (path, label, split) under out_dir; returns the manifest."""
    out_dir = Path(out_dir)
    for split in ("train", "val"):
        (out_dir / split).mkdir(parents=True, exist_ok=True)
    jobs = [(params, "train", i, str(out_dir)) for i in range(params.train_clips)]
    jobs += [(params, "val", i, str(out_dir)) for i in range(params.val_clips)]
    workers = workers or min(len(jobs) // 64 + 1, os.cpu_count() or 1)
    rows = []
    with ProcessPoolExecutor(workers) if workers > 1 else _Serial() as pool:
        for done, row in enumerate(pool.map(_write_one, jobs, chunksize=16), start=1):
            rows.append(row)
            if progress:
                progress(done, len(jobs))
    manifest = out_dir / "manifest.csv"
    partial = out_dir / "manifest.csv.partial"
    pd.DataFrame(rows, columns=["path", "label", "split"]).to_csv(partial, index=False)
    (out_dir / "params.json").write_text(json.dumps(asdict(params), indent=1))
    os.replace(partial, manifest)  # the manifest's presence marks a complete dataset
    return manifest


def ensure_synth(params: SynthParams, cache_dir: Path | None = None,
                 progress: Callable[[int, int], None] | None = None) -> Path:
    """The cached dataset's manifest for these parameters, generating it once (process-safe)."""
    root = Path(cache_dir or default_cache_dir()) / "synth"
    out_dir = root / params.key()
    manifest = out_dir / "manifest.csv"
    if manifest.exists():
        return manifest
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{params.key()}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if manifest.exists():  # another process made it while we waited
            return manifest
        shutil.rmtree(out_dir, ignore_errors=True)
        return generate(params, out_dir, progress=progress)


class _Serial:
    """In-process stand-in for a process pool (small jobs, tests)."""

    def __enter__(self) -> "_Serial":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, fn: Callable, items: Iterable, chunksize: int = 1) -> Iterable:
        return map(fn, items)
