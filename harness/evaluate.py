"""Evaluation stage: a linear probe on frozen encoder features (pre-trained or scratch)."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from models import VideoEncoder, temporal_features

from .data import ClipDataset
from .pretrain import CHECKPOINT_FILE, autocast, build_pretrain_model, skipped_files
from .session import Session, all_gather
from .sources import DataError, check_files, resolve_source, split, stratified_subset
from .study import Experiment


def load_encoder(experiment: Experiment, seed: int, checkpoint: str | Path | None) -> VideoEncoder:
    """The pre-trained encoder from a checkpoint directory, or the seed's initial one (scratch)."""
    model = build_pretrain_model(experiment, seed)
    if checkpoint:
        state = torch.load(Path(checkpoint) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
    return model.encoder


@torch.no_grad()
def extract_features(encoder: VideoEncoder, dataset: ClipDataset, session: Session, pooling: str,
                     batch_size: int, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels of every clip; each worker extracts its share, then all gather."""
    encoder.eval()
    shard = Subset(dataset, range(session.rank, len(dataset), session.world_size))
    parts = []
    for video, labels in DataLoader(shard, batch_size=batch_size):
        views = video.shape[1] if video.dim() == 6 else 1  # several clips/crops: average them
        with autocast(precision, session.device):
            tokens = encoder(video.flatten(0, 1).to(session.device) if views > 1 else video.to(session.device))
        pooled = temporal_features(tokens, encoder.config.grid) if pooling == "temporal" else tokens.mean(1)
        pooled = pooled.view(len(labels), views, -1).mean(1)
        parts += list(zip(pooled.float().cpu(), labels.tolist()))
    parts = all_gather(parts)
    return torch.stack([f for f, _ in parts]), torch.tensor([label for _, label in parts])


def train_probe(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, steps: int,
                lr: float, weight_decay: float, seed: int) -> torch.nn.Module:
    """Full-batch logistic regression on standardized features."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
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


def evaluate(experiment: Experiment, seed: int, session: Session, checkpoint: str | Path | None) -> dict:
    """Linear-probe top-1/top-5 on the evaluation source's val split; reported once."""
    spec, config = experiment.evaluate, experiment.model.build()
    encoder = load_encoder(experiment, seed, checkpoint).to(session.device)  # frozen: no DDP wrapper needed
    table = resolve_source(spec.source, experiment.synth_params())
    train_table = stratified_subset(split(table, "train"), spec.train_clips)
    val_table = split(table, "val")
    if train_table.empty or val_table.empty:
        raise DataError(f"{spec.source}: evaluation needs a train and a val (or test) split")
    num_classes = int(table["label"].max()) + 1
    features, datasets = {}, []
    for name, part in (("train", train_table), ("val", val_table)):
        check_files(part, spec.source)
        datasets.append(ClipDataset(part["path"], part["label"], config.num_frames, config.img_size,
                                    stride=experiment.pretrain.stride, train=False,
                                    test_clips=spec.test_clips, test_crops=spec.test_crops,
                                    on_error=experiment.on_error))
        features[name] = extract_features(encoder, datasets[-1], session, spec.features, spec.batch_size,
                                          experiment.precision)
    skipped = skipped_files(datasets)
    probe = train_probe(*features["train"], num_classes, spec.epochs, spec.lr, spec.weight_decay, seed)
    with torch.no_grad():
        val_x, val_y = features["val"]
        logits = probe(val_x)
    metrics = {"stage": "eval", "protocol": spec.protocol, "top1": topk_accuracy(logits, val_y, 1),
               "top5": topk_accuracy(logits, val_y, 5), "train_clips": len(train_table),
               "val_clips": len(val_table), "num_classes": num_classes,
               "skipped_videos": len(skipped), "skipped_files": sorted(skipped)}
    with tempfile.TemporaryDirectory() as tmp:  # Ray Train keeps metrics only with a checkpoint
        if session.rank == 0:
            (Path(tmp) / "metrics.json").write_text(json.dumps(metrics))
        session.report(metrics, tmp if session.rank == 0 else None)
    return metrics
