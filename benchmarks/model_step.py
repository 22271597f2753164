"""Pre-training step speed of our VideoMAE against Hugging Face transformers' VideoMAEForPreTraining.

Same config, batch, clip and mask (tube 0.9); one step = forward, backward, AdamW (fused, for both).
Steps of the variants alternate in one process and medians are compared, of the whole step and
of each of its three phases. Also: FLOPs per clip (counted by torch's FlopCounterMode), achieved
FLOP/s as a fraction of this machine's measured matmul peak, and peak memory (max RSS of a
separate process per model).

    python benchmarks/model_step.py                      # tiny b2, tiny b32, base b2; fp32 and bf16
    python benchmarks/model_step.py --cases tiny:2 --steps 10
    python benchmarks/model_step.py --malloc default         # glibc's default: freed pages go back each step
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness.session import keep_freed_memory  # noqa: E402
from models import PRESETS, VideoMAE, config_to_transformers, from_transformers, make_mask  # noqa: E402


def hf_model(preset: str):
    import transformers

    torch.manual_seed(0)
    config = config_to_transformers(PRESETS[preset], use_mean_pooling=False, attn_implementation="sdpa")
    return transformers.VideoMAEForPreTraining(config)


def inputs(preset: str, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    config = PRESETS[preset]
    generator = torch.Generator().manual_seed(0)
    video = torch.randn(batch, 3, config.num_frames, config.img_size, config.img_size, generator=generator)
    return video, make_mask("tube", batch, config.grid, 0.9, generator)


def stepper(model, hf: bool, video, mask, precision: str):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # the same optimizer for both
    clip = video.transpose(1, 2).contiguous() if hf else video  # transformers takes (B, T, C, H, W)

    def step() -> tuple[float, float, float]:
        """Seconds spent in the forward, the backward and the optimizer step (CPU ops run synchronously)."""
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            output = model(clip, bool_masked_pos=mask) if hf else model(clip, mask)
        forward_done = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        backward_done = time.perf_counter()
        optimizer.step()
        return forward_done - start, backward_done - forward_done, time.perf_counter() - backward_done
    return step


def compile_blocks(model, hf: bool):
    layers = (list(model.videomae.encoder.layer) + list(model.decoder.decoder_layers) if hf
              else list(model.encoder.blocks) + list(model.decoder.blocks))
    for layer in layers:
        layer.compile(dynamic=False)
    return model


def variants(preset: str, compiled: bool) -> dict:
    theirs = hf_model(preset)
    found = {"theirs": (theirs, True), "ours": (from_transformers(theirs), False)}
    if compiled:
        found["ours+compile"] = (compile_blocks(from_transformers(theirs), False), False)
    return found


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times)


def step_flops(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def time_case(preset: str, batch: int, precision: str, steps: int, compiled: bool) -> dict:
    video, mask = inputs(preset, batch)
    steppers = {name: stepper(model, hf, video, mask, precision)
                for name, (model, hf) in variants(preset, compiled).items()}
    flops = step_flops(steppers["ours"])
    for step in steppers.values():  # warm up (and compile)
        step()
        step()
    parts: dict[str, list[tuple[float, float, float]]] = {name: [] for name in steppers}
    for _ in range(steps):
        for name, step in steppers.items():
            parts[name].append(step())
    steps_per_s = {name: 1 / statistics.median(map(sum, found)) for name, found in parts.items()}
    phase_ms = {name: dict(zip(("forward", "backward", "optimizer"),
                               (1e3 * statistics.median(phase) for phase in zip(*found))))
                for name, found in parts.items()}
    return {"preset": preset, "batch": batch, "precision": precision, "steps_per_s": steps_per_s,
            "phase_ms": phase_ms, "flops_per_clip": flops / batch, "flops_per_step": flops}


def peak_rss_mb(preset: str, batch: int, precision: str, which: str, keep: bool) -> float:
    """Peak RSS (VmHWM) of a fresh process that builds one model and runs 3 steps. Not
    ru_maxrss: Linux carries that over exec, so a child would report this process's peak."""
    code = (f"import sys; sys.argv=['x']; sys.path.insert(0, {str(Path(__file__).parent)!r});"
            "import model_step as m, torch; torch.set_num_threads(2);"
            f"{keep} and m.keep_freed_memory();"
            f"v, k = m.inputs({preset!r}, {batch});"
            f"model = m.hf_model({preset!r}) if {which == 'theirs'} else m.VideoMAE(m.PRESETS[{preset!r}]);"
            f"s = m.stepper(model, {which == 'theirs'}, v, k, {precision!r}); [s() for _ in range(3)];"
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["tiny:2", "tiny:32", "base:2"], help="preset:batch")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="also time ours with torch.compile'd blocks")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--malloc", choices=["keep", "default"], default="keep",
                        help="keep (default): glibc keeps freed memory, as the harness's training processes "
                             "do (harness.session.keep_freed_memory); both models run under the same setting")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    keep = args.malloc == "keep" and keep_freed_memory()
    torch.set_num_threads(args.threads)
    peaks = {p: matmul_peak(torch.float32 if p == "fp32" else torch.bfloat16) for p in args.precisions}
    print(f"torch {torch.__version__}, {args.threads} threads, malloc {'keeps freed memory' if keep else 'default'}; "
          "matmul peak: "
          + ", ".join(f"{p} {v / 1e9:.0f} GFLOP/s" for p, v in peaks.items()))
    results = []
    for case in args.cases:
        preset, batch = case.split(":")
        for precision in args.precisions:
            result = time_case(preset, int(batch), precision, args.steps, args.compile)
            result["peak_rss_mb"] = {w: peak_rss_mb(preset, int(batch), precision, w, keep) for w in ("ours", "theirs")}
            rates = result["steps_per_s"]
            line = (f"{preset:5s} b{batch:<3s} {precision}: " + "  ".join(f"{n} {r:.2f}/s" for n, r in rates.items())
                    + f"  ratio {rates['ours'] / rates['theirs']:.2f}x")
            if "ours+compile" in rates:
                line += f" (compiled {rates['ours+compile'] / rates['theirs']:.2f}x)"
            best = max(rates[n] for n in rates if n != "theirs")
            fraction = result["flops_per_step"] * best / peaks[precision]
            line += (f"  {result['flops_per_clip'] / 1e9:.1f} GFLOP/clip, {fraction:.0%} of {precision} peak"
                     f"  RSS ours {result['peak_rss_mb']['ours']:.0f} MB / theirs {result['peak_rss_mb']['theirs']:.0f} MB")
            print(line, flush=True)
            print("      median ms, forward / backward / optimizer: " + "  ".join(
                f"{n} " + " / ".join(f"{v:.1f}" for v in phases.values()) for n, phases in result["phase_ms"].items()),
                flush=True)
            results.append(result)
    if args.json:
        Path(args.json).write_text(json.dumps({"matmul_peak": peaks, "results": results}, indent=1))


if __name__ == "__main__":
    main()
