"""One clip dataset over a manifest: decord decoding, temporal sampling, augmentation in torch.

Sampling follows the VideoMAE code. Pre-training: one random window of T frames at stride tau
per decode, cropped `num_sample` times (V2). Evaluation: `test_clips` temporal views (segment-uniform, TSN style, or evenly spaced
windows) x `test_crops` spatial views (1: centre, 3: both ends and the centre of the long side).
Spatial work is done once per view on the whole (T, 3, h, w) uint8 stack, not frame by frame.

Short videos (fewer frames than (T - 1) x tau + 1): the stride is lowered to the largest that
fits; a video shorter than T frames is looped. Neither is an error.

Bad videos (empty, truncated, not a video, undecodable frames): with on_error="raise" the first
one stops with one line naming the file; with "skip" each is logged once, remembered in
`skipped` (path -> reason) and replaced by another clip chosen deterministically, so a batch is
always full and made of real clips. Missing files are caught before training by
`sources.check_files`.
"""
from __future__ import annotations

import logging
import os
import random
from typing import Callable, Literal, Sequence

import decord
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from models import IMAGENET_MEAN, IMAGENET_STD

from .sources import DataError
from .synth import DECORD_UNREADABLE_WIDTHS

decord.bridge.set_bridge("native")
log = logging.getLogger(__name__)

SCALES = (1.0, 0.875, 0.75, 0.66)  # GroupMultiScaleCrop in the VideoMAE code
MAX_SUBSTITUTES = 20                # consecutive bad clips tolerated before giving up
OnError = Literal["skip", "raise"]


class BadVideo(Exception):
    """A file that cannot give the requested frames; the message is the one-line reason."""


# ----------------------------------------------------------------------------- temporal sampling
def fit_stride(length: int, num_frames: int, stride: int) -> int:
    """The largest stride <= `stride` whose window fits in `length` frames (at least 1)."""
    if num_frames <= 1:
        return stride
    return max(1, min(stride, (length - 1) // (num_frames - 1)))


def window(start: int, length: int, num_frames: int, stride: int) -> list[int]:
    """T indices from `start` at `stride`, wrapping around when the video is too short."""
    return [(start + i * stride) % length for i in range(num_frames)]


def random_window(length: int, num_frames: int, stride: int, rng: random.Random) -> list[int]:
    stride = fit_stride(length, num_frames, stride)
    span = (num_frames - 1) * stride + 1
    return window(rng.randint(0, max(0, length - span)), length, num_frames, stride)


def random_segments(length: int, num_frames: int, rng: random.Random) -> list[int]:
    """One random frame in each of T equal segments (TSN training, as the VideoMAE code fine-tunes
    on SSV2); a video shorter than T frames repeats frames in order."""
    segment = length // num_frames
    if segment == 0:
        return [length * i // num_frames for i in range(num_frames)]
    return [i * segment + rng.randrange(segment) for i in range(num_frames)]


def spaced_windows(length: int, num_frames: int, stride: int, clips: int) -> list[list[int]]:
    """`clips` windows with evenly spaced starts (dense sampling, Kinetics-style testing)."""
    stride = fit_stride(length, num_frames, stride)
    room = max(0, length - ((num_frames - 1) * stride + 1))
    starts = [round(room * (k + 0.5) / clips) if clips > 1 else room // 2 for k in range(clips)]
    return [window(s, length, num_frames, stride) for s in starts]


def segment_indices(length: int, num_frames: int, clips: int) -> list[list[int]]:
    """T equal segments; clip k takes the frame at offset (k + 0.5) / clips in each (TSN-style)."""
    segment = length / num_frames
    return [[min(length - 1, int(segment * (i + (k + 0.5) / clips))) for i in range(num_frames)]
            for k in range(clips)]


# ----------------------------------------------------------------------------- spatial transforms
def multiscale_box(height: int, width: int, size: int, scales: Sequence[float], rng: random.Random,
                   max_distort: int = 1) -> tuple[int, int, int, int]:
    """(top, left, h, w) as GroupMultiScaleCrop: sides from base x scales (aspect distorted by at
    most one step), placed at one of 13 fixed positions."""
    base = min(height, width)
    sides = [size if abs(int(base * s) - size) < 3 else int(base * s) for s in scales]
    pairs = [(h, w) for i, h in enumerate(sides) for j, w in enumerate(sides) if abs(i - j) <= max_distort]
    crop_h, crop_w = rng.choice(pairs)
    crop_h, crop_w = min(crop_h, height), min(crop_w, width)
    step_y, step_x = (height - crop_h) // 4, (width - crop_w) // 4
    spots = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2), (2, 0), (2, 4), (4, 2), (0, 2),
             (1, 1), (1, 3), (3, 1), (3, 3)]  # (row, col) in quarters of the free room
    row, col = rng.choice(spots)
    return row * step_y, col * step_x, crop_h, crop_w


def eval_boxes(height: int, width: int, crops: int) -> list[tuple[int, int, int, int]]:
    """Square boxes of the short side: the centre, or (3 crops) both ends and the centre."""
    side = min(height, width)
    spots = [0.5] if crops == 1 else [0.0, 0.5, 1.0]
    if height > width:
        return [(round((height - side) * s), 0, side, side) for s in spots]
    return [(0, round((width - side) * s), side, side) for s in spots]


_SCALE = 1 / (255 * torch.tensor(IMAGENET_STD).view(3, 1, 1, 1))  # uint8 -> (x / 255 - mean) / std
_SHIFT = -torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1) / torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)


def crop_resize(frames: torch.Tensor, box: tuple[int, int, int, int], size: int, flip: bool = False,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, T, size, size), all frames at once, written into `out` when given
    (saves a copy when views are stacked): uint8, or ImageNet-normalized if `out` is float, as
    `normalize_clips` does (the cast, transpose and normalization in one copy and two in-place
    passes). Resizing stays in uint8: torch's antialiased uint8 kernel is several times faster."""
    top, left, h, w = box
    clip = frames[:, top:top + h, left:left + w].permute(0, 3, 1, 2)  # T, 3, h, w (a view)
    if (h, w) != (size, size):
        clip = F.interpolate(clip, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if flip:
        clip = clip.flip(-1)
    if out is None:
        out = torch.empty(3, clip.shape[0], size, size, dtype=torch.uint8)
    out.copy_(clip.permute(1, 0, 2, 3))
    return out.mul_(_SCALE).add_(_SHIFT) if out.is_floating_point() else out


def normalize_clips(video: torch.Tensor) -> torch.Tensor:
    """uint8 clips (..., 3, T, H, W) -> ImageNet-normalized float32 on the same device: one cast
    and two in-place passes."""
    return video.float().mul_(_SCALE.to(video.device)).add_(_SHIFT.to(video.device))


# ----------------------------------------------------------------------------- decoding
def decode(path: str, indices_for: Callable[[int], list[list[int]]]) -> tuple[np.ndarray, list[list[int]], int]:
    """Frames (N, H, W, 3) uint8 for the union of the index lists `indices_for(length)` returns,
    those lists re-expressed as rows of the decoded array, and the video's length (N == length:
    every frame was read, rows are frame indices). Raises BadVideo."""
    try:
        reader = decord.VideoReader(path, num_threads=1)
    except Exception as error:  # decord raises RuntimeError or DECORDError with a long trace
        raise BadVideo(_open_reason(path, error)) from None
    length = len(reader)
    if length < 1:
        raise BadVideo("holds no video frames")
    views = indices_for(length)
    wanted = sorted({i for view in views for i in view})
    try:
        frames = reader.get_batch(wanted).asnumpy()
    except Exception as error:
        width = _width(path) if "from_size == to_size" in str(error) else None
        if width in DECORD_UNREADABLE_WIDTHS:  # a decord bug, not a damaged file
            raise BadVideo(f"decord {decord.__version__} cannot decode frames {width} pixels wide "
                           "(a known gap of the decoder; the file itself may be fine)") from None
        raise BadVideo(f"frames cannot be decoded (corrupt or truncated stream): {_last_line(error)}") from None
    if frames.shape[0] != len(wanted) or frames.ndim != 4 or frames.shape[-1] != 3:
        raise BadVideo(f"decoder returned {frames.shape} for {len(wanted)} frames")
    row = {index: r for r, index in enumerate(wanted)}
    return frames, [[row[i] for i in view] for view in views], length


def probe(path: str) -> tuple[int, int, int, float]:
    """(frames, height, width, fps) of a video whose first, middle and last frames decode (a
    truncated file fails at its end). Raises BadVideo."""
    frames, _, length = decode(path, lambda count: [[0, count // 2, count - 1]])
    return length, frames.shape[1], frames.shape[2], decord.VideoReader(path, num_threads=1).get_avg_fps()


def _open_reason(path: str, error: Exception) -> str:
    if not os.path.exists(path):
        return "file is missing"
    if os.path.getsize(path) == 0:
        return "empty file (0 bytes)"
    return f"cannot be opened as a video (not a video, or truncated): {_last_line(error)}"


def _width(path: str) -> int | None:
    """A video's frame width, read from its header (PyAV), where decord cannot tell it."""
    import av

    try:
        with av.open(path) as container:
            return container.streams.video[0].width
    except (av.error.FFmpegError, IndexError):
        return None


def _last_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:200]


# ----------------------------------------------------------------------------- the dataset
class ClipDataset(Dataset):
    """(video, label) per manifest row; video is (C, T, H, W), or (V, C, T, H, W) with V > 1 views.

    train=True: one random window of `num_frames` at `stride` per decode, new each epoch
    (set_epoch), and `num_sample` views of it, each with its own multi-scale crop (and flip if
    `flip`): VideoMAE V2's repeated augmentation, which halves decoding per clip at num_sample=2.
    train=False: `test_clips` x `test_crops` views.
    `sampling`: "window" (T frames at `stride`: a random window in training, `test_clips` evenly
    spaced ones in testing) or "segment" (one frame in each of T equal segments, TSN style: a
    random one in training, at offsets (k + 0.5) / test_clips in testing). None: window in
    training (pre-training, always), segment in testing.
    `cache_mb`: videos no longer than what one decode reads (the synthetic clips of the studies)
    are kept decoded, up to this many MB per process, so later epochs only augment them."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], num_frames: int, size: int,
                 stride: int = 1, train: bool = True, seed: int = 0, *, num_sample: int = 1,
                 scales: Sequence[float] = SCALES, flip: bool = False, test_clips: int = 1,
                 test_crops: int = 1, sampling: Literal["segment", "window"] | None = None,
                 on_error: OnError = "skip", cache_mb: float = 0):
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be skip or raise, not {on_error!r}")
        if test_crops not in (1, 3):
            raise ValueError("test_crops must be 1 or 3")
        self.paths, self.labels = [str(p) for p in paths], [int(v) for v in labels]
        self.num_frames, self.size, self.stride = num_frames, size, stride
        self.train, self.seed, self.epoch = train, seed, 0
        self.num_sample, self.scales, self.flip = num_sample, tuple(scales), flip
        self.test_clips, self.test_crops = test_clips, test_crops
        self.sampling = sampling or ("window" if train else "segment")
        self.on_error = on_error
        self.skipped: dict[str, str] = {}  # path -> reason, in this process
        self.cache_room = int(cache_mb * 2**20)  # bytes of uint8 frames still to keep
        self.decoded: dict[int, torch.Tensor] = {}  # item -> all its frames, in this process

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def views(self) -> int:
        return self.num_sample if self.train else self.test_clips * self.test_crops

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rng(self, index: int, purpose: str, epoch: int | None = None) -> random.Random:
        # A string seed is hashed with SHA-512: the same in every process (hash() of str is not).
        return random.Random(f"{purpose}/{self.seed}/{self.epoch if epoch is None else epoch}/{index}")

    def frame_indices(self, length: int, index: int) -> list[list[int]]:
        """One index list per temporal view of item `index` for a video of `length` frames."""
        if self.train:  # one draw per decode; its num_sample views differ in space (as V2)
            rng = self._rng(index, "time")
            if self.sampling == "segment":
                return [random_segments(length, self.num_frames, rng)]
            return [random_window(length, self.num_frames, self.stride, rng)]
        if self.sampling == "window":
            return spaced_windows(length, self.num_frames, self.stride, self.test_clips)
        return segment_indices(length, self.num_frames, self.test_clips)

    def load(self, index: int, normalized: bool = True) -> torch.Tensor:
        """The views of item `index` (V, C, T, size, size), normalized or uint8; raises BadVideo."""
        frames, views = self._frames(index)
        height, width = frames.shape[1:3]
        out = torch.empty(self.views, 3, self.num_frames, self.size, self.size,
                          dtype=torch.float32 if normalized else torch.uint8)
        if self.train:
            rng = self._rng(index, "space")
            clip = _take(frames, views[0])
            for view in out:
                box = multiscale_box(height, width, self.size, self.scales, rng)
                crop_resize(clip, box, self.size, self.flip and rng.random() < 0.5, out=view)
        else:
            boxes = eval_boxes(height, width, self.test_crops)
            for view, (rows, box) in zip(out, [(r, b) for r in views for b in boxes]):
                crop_resize(_take(frames, rows), box, self.size, out=view)
        return out

    def _frames(self, index: int) -> tuple[torch.Tensor, list[list[int]]]:
        """Decoded frames of item `index` and its views as rows of them, from the cache if kept."""
        kept = self.decoded.get(index)
        if kept is not None:
            return kept, self.frame_indices(len(kept), index)
        array, views, length = decode(self.paths[index], lambda n: self.frame_indices(n, index))
        frames = torch.from_numpy(array)
        if len(frames) == length and frames.numel() <= self.cache_room:
            self.cache_room -= frames.numel()
            self.decoded[index] = frames
        return frames, views

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """Item `index`'s clip (C, T, size, size), or its views (V, C, T, size, size), normalized,
        and its label; a bad video's stand-in in its place (on_error: skip)."""
        return self.item(index, normalized=True)

    def item(self, index: int, normalized: bool = False) -> tuple[torch.Tensor, int]:
        """As `dataset[index]`, by default in uint8: what loader processes hand over (a quarter of
        the bytes; `normalize_clips` makes it `dataset[index]`)."""
        for attempt in range(MAX_SUBSTITUTES):
            candidate = index if attempt == 0 else self._substitute(index, attempt)
            if self.paths[candidate] in self.skipped:
                continue
            try:
                video = self.load(candidate, normalized)
            except BadVideo as error:
                self._bad(candidate, str(error))
                continue
            return (video[0] if self.views == 1 else video), self.labels[candidate]
        raise DataError(f"{MAX_SUBSTITUTES} clips in a row could not be read near item {index} "
                        f"({len(self.skipped)} bad files so far, e.g. {next(iter(self.skipped), '?')})")

    def _substitute(self, index: int, attempt: int) -> int:
        # Deterministic in (seed, index, attempt), not the epoch: a bad item always has one stand-in.
        return self._rng(index, f"substitute{attempt}", epoch=0).randrange(len(self.paths))

    def _bad(self, index: int, reason: str) -> None:
        path = self.paths[index]
        if self.on_error == "raise":
            raise DataError(f"bad video {path}: {reason}")
        self.skipped[path] = reason
        log.warning("skipping bad video %s: %s", path, reason)


def _take(frames: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """frames[rows], without a copy when rows are all the frames in order (the usual case)."""
    return frames if rows == list(range(len(frames))) else frames[rows]
