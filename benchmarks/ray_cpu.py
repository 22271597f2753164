"""Where the CPU goes while `harness run` trains: every process's CPU time, read from /proc at two
moments of the run, grouped by process name (Ray names its actors' processes `ray::<class>`).
Linux only. A diagnosis for the Ray overhead in BENCHMARKS.md, not a target.

    python benchmarks/ray_cpu.py --epochs 2 --window 90 170     # mask_ratio, cpu scale, 2 points
"""
from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from overhead import REPO, trimmed_study  # the sibling benchmark: the same trimmed study file

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> dict[str, tuple[str, float]]:
    """pid -> (process name, user + system CPU seconds so far), for every process."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue  # it ended while we looked
        name, fields = stat.split("(", 1)[1].rsplit(")", 1)
        values = fields.split()
        found[pid] = (name, (int(values[11]) + int(values[12])) / TICK)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", default=str(REPO / "studies" / "mask_ratio.yaml"))
    parser.add_argument("--scale", default="cpu")
    parser.add_argument("--points", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2, help="override pretrain.epochs")
    parser.add_argument("--window", type=float, nargs=2, default=(90.0, 170.0), metavar=("FROM", "TO"),
                        help="seconds after the command between which to measure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        study = trimmed_study(args.study, args.scale, args.points, args.epochs, "ray_cpu", Path(tmp))
        command = [sys.executable, "-m", "harness.cli", "run", study, "--scale", args.scale,
                   "--runs", str(Path(tmp) / "runs")]
        started = time.monotonic()
        with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO) as run:
            time.sleep(max(0.0, args.window[0] - (time.monotonic() - started)))
            before = cpu_seconds()
            time.sleep(args.window[1] - args.window[0])
            after = cpu_seconds()
            seconds = args.window[1] - args.window[0]
            run.wait()
    per_name: collections.Counter[str] = collections.Counter()
    for pid, (name, cpu) in after.items():
        if pid in before and pid != str(os.getpid()):
            per_name[name] += cpu - before[pid][1]
    print(f"{seconds:.0f} s from {args.window[0]:.0f} s after the command; CPU % of one core "
          f"(all: {100 * sum(per_name.values()) / seconds:.1f}% of {100 * (os.cpu_count() or 1)}%)")
    for name, cpu in per_name.most_common():
        if cpu / seconds >= 0.001:
            print(f"  {100 * cpu / seconds:6.1f}%  {name}")


if __name__ == "__main__":
    main()
