"""What Ray costs: the same trials through `harness run` against the same training loop called
in-process, in one run, and the time from the command to the first trial running.

In-process: each trial is `harness.pretrain.pretrain` then `harness.evaluate.evaluate`, as a Ray
Train worker runs them, in as many processes at once as `harness run` runs trials (one thread
each). Through Ray: `harness run` on the same study file and scale, from a fresh local Ray, as a
user runs it. The synthetic data is made before either is timed.

    python benchmarks/overhead.py                                   # mask_ratio, cpu scale, 2 points, 1 seed
    python benchmarks/overhead.py --epochs 3 --points 2             # a quick look
    python benchmarks/overhead.py --startup 3                       # only the time to the first trial, 3 times
    python benchmarks/overhead.py --epochs 10 --rounds 3            # alternating, 3 times: the median overhead
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from harness.study_file import load_study  # noqa: E402
from harness.prepare import prepare_data  # noqa: E402
from harness.sweep import trial_points  # noqa: E402


def trimmed_study(source: str, scale: str, points: int, epochs: int | None, name: str, folder: Path) -> str:
    """A copy of a study file in `folder` with its first `points` grid points, its first seed and
    (if given) `epochs` of pre-training, at any scale; returns its path."""
    raw = yaml.safe_load(Path(source).read_text())
    raw["name"] = name
    raw["seeds"] = [raw.get("seeds", [0])[0]]
    raw.setdefault("sweep", {})["points"] = raw["sweep"].get("points", [{}])[:points]
    if epochs:
        raw["pretrain"]["epochs"] = epochs
    scale_block = raw.get("scales", {}).get(scale) or {}
    scale_block.pop("sweep.points", None)
    scale_block.pop("seeds", None)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def in_process_trial(args: tuple[str, str, dict]) -> dict:
    """Seconds of one trial run in this process: the whole trial, each stage, the pre-training
    epochs (their sum is the loop), and the pre-training clips/s per epoch."""
    study_path, scale, point = args
    import torch

    from harness.evaluate import evaluate
    from harness.pretrain import pretrain
    from harness.session import Session

    torch.set_num_threads(1)
    study = load_study(study_path, scale)
    experiment = study.experiment({k: v for k, v in point.items() if k != "seed"})
    started = time.perf_counter()
    reports = []
    with tempfile.TemporaryDirectory() as checkpoints:
        checkpoint = None
        if experiment.pretrain.method == "videomae":
            session = Session(checkpoints)
            pretrain(experiment, point["seed"], session)
            checkpoint = Path(checkpoints) / "latest"
            reports = session.reports
        pretrained = time.perf_counter()
        evaluate(experiment, point["seed"], Session(), checkpoint)
    ended = time.perf_counter()
    return {"trial": ended - started, "pretrain": pretrained - started, "eval": ended - pretrained,
            "epochs": sum(r["epoch_time_s"] for r in reports), "speeds": [r["clips_per_s"] for r in reports]}


def ray_stage_times(runs: Path, study: str, points: list[dict]) -> list[dict]:
    """The same times for each point as `harness run` recorded them in its Parquet rows."""
    import pandas as pd

    trials, epochs = (pd.read_parquet(runs / study / f"{name}.parquet") for name in ("trials", "epochs"))
    found = []
    for point in points:
        match = (trials["seed"] == point["seed"])
        for key, value in point.items():
            if key != "seed":
                match &= trials[key] == value
        row = trials[match].iloc[0]
        epoch_s = epochs.loc[epochs["trial_id"] == row["trial_id"], "epoch_time_s"].sum()
        found.append({"trial": row["wall_time_s"], "pretrain": row["pretrain_time_s"], "eval": row["eval_time_s"],
                      "epochs": epoch_s})
    return found


def print_stages(points: list[dict], in_process: list[dict], through: list[dict]) -> None:
    """Where each trial's extra time goes: the pre-training loop itself, the rest of the
    pre-training stage (start, checkpoints, shut down), and the evaluation stage."""
    print("| trial | side | pre-training epochs | rest of pre-training stage | evaluation stage | trial |")
    print("|---|---|---|---|---|---|")
    for point, ours, theirs in zip(points, in_process, through):
        name = ", ".join(f"{k}={v}" for k, v in point.items())
        for side, times in (("in-process", ours), ("harness run", theirs)):
            print(f"| {name} | {side} | {times['epochs']:.1f} | {times['pretrain'] - times['epochs']:.1f} | "
                  f"{times['eval']:.1f} | {times['trial']:.1f} |")


def through_ray(study_path: str, scale: str, runs: Path) -> tuple[float, float]:
    """(wall time of `harness run`, seconds from the command to the first trial started)."""
    started, first = time.perf_counter(), None
    command = [sys.executable, "-m", "harness.cli", "run", study_path, "--scale", scale, "--runs", str(runs)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO) as run:
        for line in run.stdout:
            if first is None and line.rstrip().endswith("] started"):
                first = time.perf_counter() - started
            if "done:" in line or "started" in line or "clips/s" in line:
                print(f"  harness run, {time.perf_counter() - started:.0f} s: {line.strip()}", flush=True)
    if run.returncode:
        raise SystemExit(f"harness run failed ({run.returncode})")
    return time.perf_counter() - started, first or float("nan")


def time_to_first_trial(study_path: str, scale: str, runs: Path) -> float:
    """Seconds from `harness run` to its first trial started; the run is then stopped (and Ray with it)."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "harness.cli", "run", study_path, "--scale", scale, "--runs", str(runs),
               "--restart"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                          start_new_session=True) as run:
        first = next((time.perf_counter() - started for line in run.stdout if line.rstrip().endswith("] started")),
                     float("nan"))
        os.killpg(run.pid, signal.SIGINT)  # as Ctrl-C: the driver stops Tune and its local Ray
        try:
            run.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
    return first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default=str(REPO / "studies" / "mask_ratio.yaml"))
    parser.add_argument("--scale", default="cpu")
    parser.add_argument("--points", type=int, default=2, help="grid points to run (default 2)")
    parser.add_argument("--epochs", type=int, default=None, help="override pretrain.epochs")
    parser.add_argument("--startup", type=int, default=0, metavar="N",
                        help="only measure the time from the command to the first trial, N times")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate in-process and `harness run` this many times; prints the median overhead")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        study_path = trimmed_study(args.study, args.scale, args.points, args.epochs, "overhead", Path(tmp))
        study = load_study(study_path, args.scale)
        points = trial_points(study)
        prepare_data(study)
        if args.startup:
            times = [time_to_first_trial(study_path, args.scale, Path(tmp) / "runs") for _ in range(args.startup)]
            print(f"command to first trial started: {', '.join(f'{t:.1f}' for t in times)} s; "
                  f"median {statistics.median(times):.1f} s")
            return
        workers = min(len(points), max(1, int((os.cpu_count() or 1) // study.resources.cpus_per_worker)))
        print(f"{len(points)} trials of {study.name} ({args.scale} scale, {study.pretrain.epochs} epochs), "
              f"{workers} at a time", flush=True)

        overheads = []
        for round_index in range(args.rounds):
            if args.rounds > 1:
                print(f"round {round_index + 1} of {args.rounds}", flush=True)
            overheads.append(measure_round(study_path, args.scale, points, workers, Path(tmp) / f"runs{round_index}",
                                           study.name))
        if args.rounds > 1:
            print(f"overhead per round: {', '.join(f'{o:+.1f}%' for o in overheads)}; "
                  f"median {statistics.median(overheads):+.1f}%")


def measure_round(study_path: str, scale: str, points: list[dict], workers: int, runs: Path, name: str) -> float:
    """The trials in-process, then through `harness run`; prints both and returns the overhead in %."""
    started = time.perf_counter()
    in_process_times = []
    with ProcessPoolExecutor(workers) as pool:
        for point, times in zip(points, pool.map(in_process_trial, [(study_path, scale, p) for p in points])):
            in_process_times.append(times)
            print(f"  in-process trial {len(in_process_times)}/{len(points)} {point}: {times['trial']:.1f} s; "
                  f"pre-training clips/s per epoch {', '.join(f'{s:.1f}' for s in times['speeds'])}", flush=True)
    in_process = time.perf_counter() - started
    trial_list = ", ".join(f"{t['trial']:.1f}" for t in in_process_times)
    print(f"in-process: {in_process:.1f} s (trials {trial_list} s)", flush=True)

    ray_wall, first = through_ray(study_path, scale, runs)
    print(f"harness run: {ray_wall:.1f} s; first trial started {first:.1f} s after the command", flush=True)
    overhead = 100 * (ray_wall / in_process - 1)
    print(f"overhead: {overhead:+.1f}% ({ray_wall - in_process:+.1f} s over {len(points)} trials)")
    print_stages(points, in_process_times, ray_stage_times(runs, name, points))
    return overhead


if __name__ == "__main__":
    main()
