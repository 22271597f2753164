"""How long `harness report` takes over a large study: 1,000 trials by default.

The rows are made here, in the shape `harness run` writes (every column of a real row, a
data-efficiency sweep with a scratch baseline and a domain-shift matrix, 30-epoch loss curves),
with random metric values: this measures speed only, and the report it writes is thrown away.

    python benchmarks/report.py                 # 1,000 trials
    python benchmarks/report.py --trials 5000
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness.report import write_report  # noqa: E402
from harness.results import upsert_rows  # noqa: E402


def rows(count: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    sources = ["synth:motion", "synth:appearance", "synth:scenes"]
    made = []
    for index in range(count):
        scratch = index % 5 == 0
        made.append({
            "study": "report_benchmark", "trial_id": f"t{index:05d}", "status": "ok", "scale": "cpu",
            "seed": index % 10, "pretrain.method": "scratch" if scratch else "videomae",
            "pretrain.clips": None if scratch else int(rng.choice([250, 500, 1000, 2000])),
            "pretrain.source": None if scratch else str(rng.choice(sources)),
            "evaluate.source": str(rng.choice(sources[:2])),
            "pretrain_loss": None if scratch else float(rng.uniform(0.5, 1.0)),
            "pretrain_loss_curve": [] if scratch else list(np.sort(rng.uniform(0.5, 1.2, 30))[::-1]),
            "pretrain_clips_per_s": None if scratch else float(rng.uniform(40, 60)),
            "eval_top1": float(rng.uniform(0.2, 0.6)), "eval_top5": float(rng.uniform(0.6, 1.0)),
            "eval_protocol": "linear", "finetune_loss_curve": [], "eval_train_clips": 1000,
            "wall_time_s": float(rng.uniform(60, 900)), "cpu_seconds": float(rng.uniform(60, 900)),
            "gpu_seconds": 0.0, "skipped_videos": 0, "workers": 1, "peak_rss_mb": 900.0,
            "precision": "fp32", "machine": "benchmark", "git_commit": "benchmark",
            "finished_at": f"2026-11-23T{index // 3600 % 24:02d}:{index // 60 % 60:02d}:{index % 60:02d}"})
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "runs" / "report_benchmark"
        upsert_rows(run_dir / "trials.parquet", rows(args.trials))
        started = time.perf_counter()
        page = write_report(run_dir, Path(tmp) / "reports")
        seconds = time.perf_counter() - started
        print(f"report over {args.trials} trials: {seconds:.2f} s ({page.stat().st_size / 2 ** 20:.1f} MiB of HTML)")


if __name__ == "__main__":
    main()
