"""What runs inside a Ray Train worker: the session the training loops report through, and the
entry points of the two stages. Only the Train workers (and the controller, which unpickles the
entry points) import this module; the driver and the Tune trainable do not need torch."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch

from .session import Session
from .study import Experiment


class RayTrainSession(Session):
    """The loops' session inside a Ray Train worker."""

    def __init__(self) -> None:
        super().__init__()
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()

    @property
    def device(self) -> torch.device:
        return ray.train.torch.get_device()

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(model)  # DDP (gloo on CPU, nccl on GPU) when > 1 worker

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | Path | None = None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)

    def latest_checkpoint(self) -> Path | None:
        checkpoint = ray.train.get_checkpoint()
        return Path(checkpoint.to_directory()) if checkpoint else None


def _worker_setup(config: dict) -> tuple[Experiment, int, RayTrainSession]:
    # Ray sets OMP threads from the CPU share (fractions become 1): size torch's pool ourselves.
    torch.set_num_threads(max(1, int(config["cpus_per_worker"])))
    return Experiment.model_validate(config["experiment"]), config["seed"], RayTrainSession()


# The loops import the model (timm, about 3 s) inside the Train workers only: the Train
# controller, which also imports this module, never needs it.
def pretrain_worker(config: dict) -> None:
    from .pretrain import pretrain
    pretrain(*_worker_setup(config))


def evaluate_worker(config: dict) -> None:
    from .evaluate import evaluate
    experiment, seed, session = _worker_setup(config)
    checkpoint = config.get("checkpoint")  # a ray.train.Checkpoint, on whatever storage it is
    directory = checkpoint.to_directory() if checkpoint else None
    evaluate(experiment, seed, session, directory)
