"""What keeping freed memory in glibc's heap does to our training step, alone in a process, as
a Ray Train worker or a trial runs it (harness.session.keep_freed_memory, which the loops call).

Each round runs one fresh process per setting, alternating: build our model, warm up, then time
`--steps` steps (forward, backward, fused AdamW) and count the minor page faults they take.
A step's time is their mean (an epoch is their sum; the faults make some steps much slower than
others); medians over rounds. (benchmarks/model_step.py cannot show this: its two models share a process,
and one's large frees raise glibc's dynamic thresholds for the other.)

    python benchmarks/malloc.py                            # tiny b32 and base b2, bf16
    python benchmarks/malloc.py --cases tiny:32 --precisions fp32 bf16 --rounds 3
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHILD = """
import json, resource, sys, time
sys.path.insert(0, {here!r}); sys.path.insert(0, {repo!r})
import torch
import model_step as m
from harness.session import keep_freed_memory
kept = {keep} and keep_freed_memory()
torch.set_num_threads({threads})
torch.manual_seed(0)
video, mask = m.inputs({preset!r}, {batch})
step = m.stepper(m.VideoMAE(m.PRESETS[{preset!r}]), False, video, mask, {precision!r})
for _ in range(3):
    step()
faults, times = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, []
for _ in range({steps}):
    start = time.perf_counter(); step(); times.append(time.perf_counter() - start)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / {steps}
print(json.dumps({{"kept": kept, "step_s": sum(times) / len(times), "faults": faults}}))
"""


def run(preset: str, batch: int, precision: str, keep: bool, steps: int, threads: int) -> dict:
    code = CHILD.format(here=str(HERE), repo=str(HERE.parent), keep=keep, threads=threads, preset=preset,
                        batch=batch, precision=precision, steps=steps)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["tiny:32", "base:2"], help="preset:batch")
    parser.add_argument("--precisions", nargs="+", default=["bf16"])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print("| case | glibc default: step, page faults | freed memory kept: step, page faults | speed-up |")
    print("|---|---|---|---|")
    for case in args.cases:
        preset, batch = case.split(":")
        for precision in args.precisions:
            found: dict[bool, list[dict]] = {False: [], True: []}
            for _ in range(args.rounds):
                for keep in (False, True):
                    found[keep].append(run(preset, int(batch), precision, keep, args.steps, args.threads))
            assert all(r["kept"] for r in found[True]), "mallopt refused: not glibc?"
            step = {k: statistics.median(r["step_s"] for r in v) for k, v in found.items()}
            faults = {k: statistics.median(r["faults"] for r in v) for k, v in found.items()}
            print(f"| {preset} b{batch} {precision} | {step[False] * 1e3:.1f} ms, {faults[False]:,.0f} | "
                  f"{step[True] * 1e3:.1f} ms, {faults[True]:,.0f} | {step[False] / step[True]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
