"""How a stage's epoch reports reach Tune: the Ray Train callback that forwards them from a worker
group, kept in its own small module because Ray Train's controller process unpickles it."""
from __future__ import annotations

from typing import Any

from ray.tune.integration.ray_train import TuneReportCallback


def tune_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """A stage's report with its stage in two more keys (pretrain_epoch and pretrain_loss, or
    finetune_*), so a scheduler compares trials at the same pre-training epoch."""
    if {"stage", "epoch", "loss"} <= metrics.keys():
        return {**metrics, f"{metrics['stage']}_epoch": metrics["epoch"], f"{metrics['stage']}_loss": metrics["loss"]}
    return metrics


class StageReportCallback(TuneReportCallback):
    """Forwards each epoch's report of a Ray Train worker group to Tune (`tune_metrics`)."""

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        super().after_report(run_context, [tune_metrics(metrics[0]), *metrics[1:]], checkpoint)
