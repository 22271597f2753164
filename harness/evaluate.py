"""Evaluation stage on an encoder (pre-trained or scratch): a linear probe or k nearest
neighbours on frozen features, or fine-tuning (harness/finetune.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from models import VideoEncoder, temporal_features

from .data import ClipDataset
from .pretrain import CHECKPOINT_FILE, autocast, resolved_precision, skipped_files, starting_model
from .session import Session, all_gather, checkpoint_folder, keep_freed_memory, machine
from .sources import DataError, check_files, decode_cache_mb, resolve_source, split, stratified_subset
from .study import Experiment


def load_encoder(experiment: Experiment, seed: int, checkpoint: str | Path | None) -> VideoEncoder:
    """The pre-trained encoder from a checkpoint directory, or `pretrain.init`'s, or the seed's
    initial one (scratch)."""
    return starting_model(experiment, seed, checkpoint).encoder


@torch.no_grad()
def extract_features(encoder: VideoEncoder, dataset: ClipDataset, session: Session, pooling: str,
                     batch_size: int, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels of every clip; each worker extracts its share, then all gather."""
    encoder.eval()
    shard = range(session.rank, len(dataset), session.world_size)
    parts = []
    for video, labels in session.loader(dataset, batch_size, shard, flatten_views=False):
        views = video.shape[1] if video.dim() == 6 else 1  # several clips/crops: average them
        with autocast(precision, session.device):
            tokens = encoder(video.flatten(0, 1).to(session.device) if views > 1 else video.to(session.device))
        pooled = temporal_features(tokens, encoder.config.grid) if pooling == "temporal" else tokens.mean(1)
        pooled = pooled.view(len(labels), views, -1).mean(1)
        parts += list(zip(pooled.float().cpu(), labels.tolist()))
    parts = all_gather(without_stand_ins(parts, dataset, shard))
    return torch.stack([f for f, _ in parts]), torch.tensor([label for _, label in parts])


def without_stand_ins(parts: list, dataset: ClipDataset, shard: range) -> list:
    """The results of `shard`'s items (in order), less those of bad videos: on_error: skip puts
    another clip in a bad one's place, which scoring would count twice."""
    kept = [part for part, index in zip(parts, shard) if dataset.paths[index] not in dataset.skipped]
    if parts and not kept:
        raise DataError(f"no clip of {len(parts)} could be read ({len(dataset.skipped)} bad files, "
                        f"e.g. {next(iter(dataset.skipped))})")
    return kept


def train_probe(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, steps: int,
                lr: float, weight_decay: float, seed: int) -> torch.nn.Module:
    """Full-batch logistic regression on standardized features."""
    mean = train_x.mean(0)
    std = (train_x.std(0) if len(train_x) > 1 else torch.zeros_like(mean)) + 1e-6  # one clip has no spread
    torch.manual_seed(seed)
    linear = torch.nn.Linear(train_x.shape[1], num_classes)
    optimizer = torch.optim.AdamW(linear.parameters(), lr=lr, weight_decay=weight_decay)
    inputs = (train_x - mean) / std
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(linear(inputs), train_y).backward()
        optimizer.step()
    return torch.nn.Sequential(_Standardize(mean, std), linear)


class _Standardize(torch.nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.std


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels.unsqueeze(1)).any(1).float().mean().item()


def knn_scores(train_x: torch.Tensor, train_y: torch.Tensor, query_x: torch.Tensor, num_classes: int,
               k: int, temperature: float = 0.07) -> torch.Tensor:
    """Class scores of each query from its k most cosine-similar training features, each vote
    weighted by exp(similarity / temperature) (the weighted kNN of Wu et al. 2018 and DINO)."""
    similarity = F.normalize(query_x, dim=1) @ F.normalize(train_x, dim=1).T
    top, index = similarity.topk(min(k, len(train_x)), dim=1)
    votes = F.one_hot(train_y[index], num_classes).float() * (top / temperature).exp().unsqueeze(-1)
    return votes.sum(1)


def labelled_tables(experiment: Experiment) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """The evaluation source's labelled train subset, its val split and the class count."""
    spec = experiment.evaluate
    table = resolve_source(spec.source, experiment.synth_params())
    train_table = stratified_subset(split(table, "train"), spec.train_clips)
    val_table = split(table, "val")
    if train_table.empty or val_table.empty:
        raise DataError(f"{spec.source}: evaluation needs a train and a val (or test) split")
    for part in (train_table, val_table):
        check_files(part, spec.source)
    return train_table, val_table, int(table["label"].max()) + 1


def eval_dataset(experiment: Experiment, table: pd.DataFrame, train: bool, seed: int = 0) -> ClipDataset:
    """Clips of `table` as evaluation sees them: test views, or (train) fine-tuning augmentation."""
    config, spec = experiment.model.build(), experiment.evaluate
    return ClipDataset(table["path"], table["label"], config.num_frames, config.img_size,
                       stride=spec.window_stride(experiment.pretrain), train=train, seed=seed,
                       scales=experiment.pretrain.scales, test_clips=spec.test_clips,
                       test_crops=spec.test_crops, sampling=spec.sampling, on_error=experiment.on_error,
                       cache_mb=decode_cache_mb() if train else 0)  # fine-tuning reads each clip every epoch


def final_metrics(experiment: Experiment, logits: torch.Tensor, labels: torch.Tensor, train_clips: int,
                  num_classes: int, datasets: list[ClipDataset], device: torch.device) -> dict:
    skipped = skipped_files(datasets)
    return {"stage": "eval", "protocol": experiment.evaluate.protocol,
            "precision": resolved_precision(experiment.precision, device), "machine": machine(),
            "top1": topk_accuracy(logits, labels, 1),
            "top5": topk_accuracy(logits, labels, 5), "train_clips": train_clips, "val_clips": len(labels),
            "num_classes": num_classes, "skipped_videos": len(skipped), "skipped_files": sorted(skipped.items())}


def report_final(session: Session, metrics: dict, state: dict | None = None) -> dict:
    """Report the evaluation's result once, with a checkpoint holding it (Ray Train keeps a
    run's metrics only with a checkpoint); `state` (e.g. fine-tuned weights) is saved beside."""
    with checkpoint_folder() as tmp:
        if session.rank == 0:
            (Path(tmp) / "metrics.json").write_text(json.dumps(metrics))
            if state is not None:
                torch.save(state, Path(tmp) / CHECKPOINT_FILE)
        session.report(metrics, tmp if session.rank == 0 else None)
    return metrics


def evaluate(experiment: Experiment, seed: int, session: Session, checkpoint: str | Path | None) -> dict:
    """Top-1/top-5 on the evaluation source's val split by the study's protocol; reported once."""
    keep_freed_memory()
    spec = experiment.evaluate
    if spec.protocol == "finetune":
        from .finetune import finetune
        return finetune(experiment, seed, session, checkpoint)
    encoder = load_encoder(experiment, seed, checkpoint).to(session.device)  # frozen: no DDP wrapper needed
    train_table, val_table, num_classes = labelled_tables(experiment)
    datasets = [eval_dataset(experiment, table, train=False) for table in (train_table, val_table)]
    (train_x, train_y), (val_x, val_y) = (
        extract_features(encoder, dataset, session, spec.features, spec.batch_size, experiment.precision)
        for dataset in datasets)
    if spec.protocol == "knn":
        logits = knn_scores(train_x, train_y, val_x, num_classes, spec.knn_k)
    else:
        probe = train_probe(train_x, train_y, num_classes, spec.epochs, spec.lr, spec.weight_decay, seed)
        with torch.no_grad():
            logits = probe(val_x)
        if not bool(torch.isfinite(logits).all()):  # its arg-max would score the first class as if learned
            metrics = {"stage": "eval", "diverged": True, "protocol": "linear",
                       "reason": f"the linear probe's scores are not finite (evaluate.lr {spec.lr:g})",
                       "skipped_files": sorted(skipped_files(datasets).items())}
            return report_final(session, metrics)
    return report_final(session, final_metrics(experiment, logits, val_y, len(train_y), num_classes, datasets,
                                                 session.device))
