"""The pre-training loop: VideoMAE on one data source, checkpoint every epoch, resumable."""
from __future__ import annotations

import functools
import math
import resource
import time
from pathlib import Path

import torch
from timm.optim import param_groups_weight_decay
from torch.utils.data import DistributedSampler

from models import VideoMAE, decoder_mask, make_mask

from .data import ClipDataset
from .session import Session, all_gather, all_reduce_mean, checkpoint_folder, keep_freed_memory
from .sources import check_files, decode_cache_mb, resolve_source, split, stratified_subset
from .study import Experiment, PretrainSpec
from .weights import load_init

CHECKPOINT_FILE = "checkpoint.pt"


@functools.lru_cache(maxsize=None)
def _cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16: without them (e.g. an AVX2-only CPU) bf16 matmuls run ~10x slower than fp32."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line for line in info if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolved_precision(precision: str, device: torch.device) -> str:
    """`auto` -> bf16 where the hardware runs it fast (AMX/AVX512-BF16 CPUs, Ampere or newer GPUs),
    fp16 on the GPUs before them with tensor cores (V100, T4: the paper's setting), else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":  # torch counts a V100's or T4's emulated bf16, several times slower than fp32
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return "bf16"
        return "fp16" if torch.cuda.get_device_capability(device) >= (7, 0) else "fp32"
    return "bf16" if _cpu_has_fast_bf16() else "fp32"


def autocast(precision: str, device: torch.device) -> torch.autocast:
    resolved = resolved_precision(precision, device)
    return torch.autocast(device.type, dtype=torch.float16 if resolved == "fp16" else torch.bfloat16,
                          enabled=resolved != "fp32")


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """fp16 needs its loss scaled up before the backward (its gradients would otherwise flush to
    zero below 6e-8); for bf16 and fp32 the scaler is disabled and passes everything through."""
    return torch.amp.GradScaler(device.type, enabled=resolved_precision(precision, device) == "fp16")


def optimizer_step(loss: torch.Tensor, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler, clip_grad: float | None) -> str:
    """Backward, gradient clipping and the optimizer step of one batch. Returns `taken`;
    `overflow` (fp16: the scaled gradients overflowed, the scaler halved its scale and skipped the
    step, its usual search for a scale, not a fault); or `bad` (a NaN/inf loss or gradient
    otherwise: the step is skipped, for the caller to count or stop on)."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    # The norm of the (all-reduced) gradient is the same on every worker, so all skip together.
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad or float("inf"))
    finite = bool(torch.isfinite(norm))
    # Below a scale of 1 the gradients overflow fp16 unscaled: a fault, not a scale to search.
    overflow = not finite and scaler.is_enabled() and bool(torch.isfinite(loss)) and scaler.get_scale() >= 1
    if finite or overflow:
        scaler.step(optimizer)  # skips the update itself after an overflow
    scaler.update()
    return "taken" if finite else "overflow" if overflow else "bad"


def scaler_state(scaler: torch.amp.GradScaler) -> dict:
    """The scaler's state for a checkpoint: none when disabled (bf16, fp32)."""
    return {"scaler": scaler.state_dict()} if scaler.is_enabled() else {}


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float, floor: float) -> float:
    """Linear warmup, then cosine decay from `peak` to `floor`."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def build_pretrain_model(experiment: Experiment, seed: int) -> VideoMAE:
    torch.manual_seed(seed)  # same initial weights for the same seed, pre-trained or scratch
    return VideoMAE(experiment.model.build(), loss=experiment.pretrain.loss)


def starting_model(experiment: Experiment, seed: int, checkpoint: str | Path | None) -> VideoMAE:
    """The model an evaluation starts from: a pre-training checkpoint's weights, else those of
    `pretrain.init` (pretrain.method: pretrained), else the seed's initialisation (scratch)."""
    model = build_pretrain_model(experiment, seed)
    if checkpoint:
        state = torch.load(Path(checkpoint) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
    elif experiment.pretrain.init:
        load_init(model, experiment.pretrain.init)
    return model


def pretrain_optimizer(model: VideoMAE, spec: PretrainSpec) -> torch.optim.AdamW:
    """AdamW as the VideoMAE code builds it: weight decay on the weight matrices only (not on
    biases, norms or the mask token); fused: one pass over the parameters, not ~10 foreach ops."""
    groups = param_groups_weight_decay(model, spec.weight_decay, no_weight_decay_list=model.no_weight_decay())
    return torch.optim.AdamW(groups, lr=spec.lr, betas=(0.9, 0.95), fused=True)


def pretrain_dataset(experiment: Experiment, seed: int) -> ClipDataset:
    config, spec = experiment.model.build(), experiment.pretrain
    table = split(resolve_source(spec.source, experiment.synth_params()), "train")
    table = stratified_subset(table, spec.clips)
    check_files(table, spec.source)  # missing files stop the trial before any training
    return ClipDataset(table["path"], table["label"], config.num_frames, config.img_size,
                       stride=spec.stride, train=True, seed=seed, num_sample=spec.num_sample,
                       scales=spec.scales, flip=spec.flip, on_error=experiment.on_error,
                       cache_mb=decode_cache_mb())


def skipped_files(datasets: list[ClipDataset]) -> dict[str, str]:
    """Bad files any worker skipped (path -> reason), gathered from every worker."""
    return dict(all_gather(sorted({p: r for d in datasets for p, r in d.skipped.items()}.items())))


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM where Linux has it: ru_maxrss carries a
    parent's peak over exec, so a freshly started worker would report its launcher's."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def pretrain(experiment: Experiment, seed: int, session: Session) -> None:
    """Pre-train and `session.report` once per epoch with a checkpoint; resumes from the latest."""
    keep_freed_memory()
    spec, device = experiment.pretrain, session.device
    model = build_pretrain_model(experiment, seed)
    start_epoch, history, skipped = 0, [], {}
    state = session.resumed_state(CHECKPOINT_FILE)
    if state and (state["epoch"] >= spec.epochs or state["metrics"].get("diverged")):  # ended before an interruption
        with session.latest_checkpoint() as checkpoint:
            session.report({**state["metrics"], "resumed_from_epoch": state["epoch"]},
                           checkpoint if session.rank == 0 else None)
        return
    if state:
        model.load_state_dict(state["model"])
        start_epoch, history = state["epoch"], state["history"]
        skipped = state.get("skipped", {})
    elif spec.init:  # pre-training further from given weights (e.g. released ones) on this data
        load_init(model, spec.init)
    resumed_from = start_epoch
    model = session.prepare_model(model)
    core = getattr(model, "module", model)
    optimizer = pretrain_optimizer(core, spec)
    scaler = grad_scaler(experiment.precision, device)
    if state:  # loaded once the model is on its device, which the optimizer's state then follows
        if "optimizer" not in state:
            raise ValueError(f"its last checkpoint, a finished pre-training of {state['epoch']} epochs saved without "
                             f"its optimizer state, cannot be continued to {spec.epochs}")
        optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])

    dataset = pretrain_dataset(experiment, seed)
    dataset.skipped.update(skipped)  # known bad files are not decoded (or logged) again
    per_worker_batch = max(1, min(spec.batch_size // session.world_size, len(dataset) // session.world_size))
    sampler = DistributedSampler(dataset, session.world_size, session.rank, shuffle=True, seed=seed, drop_last=True)
    loader = session.loader(dataset, per_worker_batch, sampler, drop_last=True)
    steps_per_epoch = len(loader)
    total_steps, warmup_steps = spec.epochs * steps_per_epoch, spec.warmup_epochs * steps_per_epoch
    masks = torch.Generator().manual_seed(seed * 1000 + session.rank)
    grid = core.config.grid
    bad_steps = 0

    for epoch in range(start_epoch, spec.epochs):
        model.train()
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        masks.manual_seed(seed * 1000 + session.rank + 7919 * epoch)  # resumable mid-study
        started, loss_sum, clips = time.perf_counter(), 0.0, 0
        for step, (video, _) in enumerate(loader):
            lr = lr_at(epoch * steps_per_epoch + step, total_steps, warmup_steps, spec.lr, spec.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            mask = make_mask(spec.mask.strategy, video.shape[0], grid, spec.mask.ratio, masks)
            dropped = decoder_mask(mask, grid, spec.decoder_mask.ratio, masks) if spec.decoder_mask else None
            video, mask = video.to(device, non_blocking=True), mask.to(device, non_blocking=True)
            with autocast(experiment.precision, device):
                loss = model(video, mask, None if dropped is None else dropped.to(device)).loss
            outcome = optimizer_step(loss, model, optimizer, scaler, spec.clip_grad)
            if outcome == "bad":  # a NaN/inf loss or gradient: the step was skipped, count it
                bad_steps += 1
                if bad_steps > spec.max_bad_steps:
                    break
            if outcome != "taken":
                continue
            loss_sum += loss.item() * video.shape[0]
            clips += video.shape[0]
        diverged = bad_steps > spec.max_bad_steps
        seconds = time.perf_counter() - started
        history.append({"epoch": epoch + 1, "loss": all_reduce_mean(loss_sum / max(clips, 1), device), "lr": lr,
                        "clips_per_s": clips * session.world_size / seconds, "epoch_time_s": seconds})
        skipped = skipped_files([dataset])
        metrics = {"stage": "pretrain", **history[-1], "total_epochs": spec.epochs,
                   "loss_curve": [h["loss"] for h in history],
                   "epochs": list(history), "workers": session.world_size, "peak_rss_mb": peak_rss_mb(),
                   "precision": resolved_precision(experiment.precision, device),
                   "resumed_from_epoch": resumed_from, "bad_steps": bad_steps, "diverged": diverged,
                   "skipped_videos": len(skipped), "skipped_files": sorted(skipped.items())}
        # The last checkpoint is never trained on again, so it leaves out AdamW's two moments
        # (2/3 of it: 750 MB of a ViT-B's 1.1 GB), as fine-tuning's last one does.
        last = diverged or epoch + 1 == spec.epochs
        resumable = {} if last else {"optimizer": optimizer.state_dict(), **scaler_state(scaler)}
        with checkpoint_folder() as tmp:
            kept = session.rank == 0 and session.checkpoint_due(last)
            if kept:
                torch.save({"model": core.state_dict(), **resumable, "epoch": epoch + 1, "history": history,
                            "skipped": skipped, "metrics": metrics}, Path(tmp) / CHECKPOINT_FILE)
            session.report(metrics, tmp if kept else None)
        if diverged:  # stopped: the trial is recorded as diverged, not evaluated
            return
