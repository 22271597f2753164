"""The Ray Train callback that forwards each epoch's report to Tune. Part of the trial layer, kept
in its own small module because Ray Train's controller process unpickles it."""
from __future__ import annotations

from typing import Any

from ray.tune.integration.ray_train import TuneReportCallback


class StageReportCallback(TuneReportCallback):
    """Forwards each epoch's report to Tune with its stage in two keys (pretrain_epoch and
    pretrain_loss, or finetune_*), so a scheduler compares trials at the same pre-training epoch."""

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        first = metrics[0]
        if {"stage", "epoch", "loss"} <= first.keys():
            metrics = [{**first, f"{first['stage']}_epoch": first["epoch"], f"{first['stage']}_loss": first["loss"]},
                       *metrics[1:]]
        super().after_report(run_context, metrics, checkpoint)
