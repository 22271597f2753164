"""Fine-tuning protocol: the encoder (pre-trained, or the seed's random init for scratch) with a
mean-pool + LayerNorm + Linear head, trained end to end on the labelled clips with layer-wise lr
decay, then tested on the val split with its views' scores averaged. Checkpoints every epoch and
resumes from the latest, like pre-training."""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DistributedSampler

from models import VideoClassifier, layer_decay_groups

from .data import ClipDataset
from .evaluate import eval_dataset, final_metrics, labelled_tables, report_final, without_stand_ins
from .pretrain import (CHECKPOINT_FILE, autocast, grad_scaler, lr_at, optimizer_step, scaler_state, skipped_files,
                       starting_model)
from .session import Session, all_gather, all_reduce_mean, checkpoint_folder
from .study import Experiment


def build_classifier(experiment: Experiment, seed: int, checkpoint: str | Path | None,
                     num_classes: int) -> VideoClassifier:
    """Classifier whose encoder is the pre-trained one (checkpoint), `pretrain.init`'s, or the
    seed's initial one."""
    pretrained = starting_model(experiment, seed, checkpoint)
    torch.manual_seed(seed)  # the head's init: the same for pre-trained and scratch
    return VideoClassifier.from_pretrained(pretrained, num_classes, drop_path=experiment.evaluate.finetune.drop_path)


@torch.no_grad()
def predict(model: torch.nn.Module, dataset: ClipDataset, session: Session, batch_size: int,
            precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax scores averaged over each clip's test views, and labels, gathered from every worker."""
    model.eval()
    shard = range(session.rank, len(dataset), session.world_size)
    parts = []
    for video, labels in session.loader(dataset, batch_size, shard, flatten_views=False):
        views = video.shape[1] if video.dim() == 6 else 1
        with autocast(precision, session.device):
            logits = model(video.flatten(0, 1).to(session.device) if views > 1 else video.to(session.device))
        scores = logits.float().softmax(-1).view(len(labels), views, -1).mean(1)
        parts += list(zip(scores.cpu(), labels.tolist()))
    parts = all_gather(without_stand_ins(parts, dataset, shard))
    return torch.stack([s for s, _ in parts]), torch.tensor([label for _, label in parts])


def finetune(experiment: Experiment, seed: int, session: Session, checkpoint: str | Path | None) -> dict:
    """Fine-tune, `session.report` each epoch with a checkpoint, test, report the result once."""
    spec, recipe, device = experiment.evaluate, experiment.evaluate.finetune, session.device
    train_table, val_table, num_classes = labelled_tables(experiment)
    model = build_classifier(experiment, seed, checkpoint, num_classes)
    start_epoch, history = 0, []
    state = session.resumed_state(CHECKPOINT_FILE)
    if state:
        if "metrics" in state:  # tested before an interruption: hand back the result, all of it run before
            return report_final(session, {**state["metrics"], "resumed_from_epoch": recipe.epochs}, state)
        model.load_state_dict(state["model"])
        start_epoch, history = state["epoch"], state["history"]
    model = session.prepare_model(model)
    core = getattr(model, "module", model)
    groups = layer_decay_groups(core, recipe.lr, recipe.weight_decay, recipe.layer_decay)
    optimizer = torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.999), fused=True)
    scaler = grad_scaler(experiment.precision, device)
    if state:  # loaded once the model is on its device, which the optimizer's state then follows
        optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])

    train_set = eval_dataset(experiment, train_table, train=True, seed=seed)
    per_worker = max(1, min(recipe.batch_size, len(train_set)) // session.world_size)
    sampler = DistributedSampler(train_set, session.world_size, session.rank, shuffle=True, seed=seed, drop_last=True)
    loader = session.loader(train_set, per_worker, sampler, drop_last=True)
    steps, diverged_at = len(loader), None
    for epoch in range(start_epoch, recipe.epochs):
        model.train()
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        # Drop path draws from torch's global generator: seeded by epoch, a resumed run draws what
        # the uninterrupted one would have (and each worker its own).
        torch.manual_seed(seed * 1000 + session.rank + 7919 * epoch)
        started, loss_sum, clips = time.perf_counter(), 0.0, 0
        for step, (video, labels) in enumerate(loader):
            lr = lr_at(epoch * steps + step, recipe.epochs * steps, recipe.warmup_epochs * steps,
                       recipe.lr, recipe.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            with autocast(experiment.precision, device):
                logits = model(video.to(device, non_blocking=True))
            loss = F.cross_entropy(logits.float(), labels.to(device), label_smoothing=recipe.label_smoothing)
            outcome = optimizer_step(loss, model, optimizer, scaler, recipe.clip_grad)
            if outcome == "bad":  # NaN weights would score as a guess: stop, say so
                diverged_at = epoch + 1
                break
            if outcome == "overflow":
                continue
            loss_sum += loss.item() * len(labels)
            clips += len(labels)
        if diverged_at:
            metrics = {"stage": "eval", "diverged": True, "epoch": diverged_at, "protocol": "finetune",
                       "finetune_loss_curve": [h["loss"] for h in history],
                       "skipped_files": sorted(skipped_files([train_set]).items())}
            return report_final(session, metrics, {"metrics": metrics})
        seconds = time.perf_counter() - started
        history.append({"epoch": epoch + 1, "loss": all_reduce_mean(loss_sum / max(clips, 1), device),
                        "lr": lr, "clips_per_s": clips * session.world_size / seconds, "epoch_time_s": seconds})
        with checkpoint_folder() as tmp:  # the last epoch's is kept: testing may take minutes
            kept = session.rank == 0 and session.checkpoint_due(epoch + 1 == recipe.epochs)
            if kept:
                torch.save({"model": core.state_dict(), "optimizer": optimizer.state_dict(), **scaler_state(scaler),
                            "epoch": epoch + 1, "history": history}, Path(tmp) / CHECKPOINT_FILE)
            session.report({"stage": "finetune", **history[-1], "total_epochs": recipe.epochs,
                            "resumed_from_epoch": start_epoch or None}, tmp if kept else None)

    val_set = eval_dataset(experiment, val_table, train=False)
    scores, labels = predict(model, val_set, session, spec.batch_size, experiment.precision)
    metrics = {**final_metrics(experiment, scores, labels, len(train_table), num_classes,
                                [train_set, val_set], device),
               "finetune_loss_curve": [h["loss"] for h in history], "finetune_epochs": history,
               "resumed_from_epoch": start_epoch or None}
    return report_final(session, metrics, {"model": core.state_dict(), "epoch": recipe.epochs,
                                           "history": history, "metrics": metrics})
