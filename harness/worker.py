"""What runs a stage: the sessions the training loops report through (in a Ray Train worker, or
in Ray Train's local mode, in the trial's own process) and the entry points of the two stages.
The Train workers, the controller (which unpickles the entry points) and a trial running a stage
itself import this module; the driver does not need torch."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import pyarrow.fs as pafs
import ray
import ray.train
import ray.train.torch
import ray.tune
import torch

from .session import Session
from .stage_report import tune_metrics
from .storage import Storage
from .study import Experiment

LATEST_FILE = "latest.json"  # a stage run in the trial: its newest checkpoint, {"index": n, "checkpoint": folder}


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

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        with local_folder(ray.train.get_checkpoint()) as folder:
            yield folder


class LocalRunSession(Session):
    """The loops' session in a one-worker stage: a run in Ray Train's local mode, in the trial's
    own process, where Ray Train's report and checkpoint API refuse to run (inside a Tune trial).
    It keeps each checkpoint where a Train run would (the run's folder in the study's storage,
    which a rerun resumes from) and reports each epoch to Tune."""

    def __init__(self, storage: Storage, run: str) -> None:
        super().__init__()
        self.storage, self.run = storage, run
        self.record = storage.read_json("train", run, LATEST_FILE)
        self.metrics: dict[str, Any] = {}
        self.checkpoint: ray.train.Checkpoint | None = None

    @property
    def device(self) -> torch.device:
        # Only the GPUs the trial reserved (Ray points CUDA_VISIBLE_DEVICES at them), none otherwise.
        return torch.device("cuda" if ray.is_initialized() and ray.get_gpu_ids() else "cpu")

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | Path | None = None) -> None:
        self.metrics = metrics
        if checkpoint_dir:
            self.checkpoint = self._keep(Path(checkpoint_dir))
        ray.tune.report(tune_metrics(metrics))

    def _keep(self, directory: Path) -> ray.train.Checkpoint:
        """Copy a checkpoint into storage, then point the run's record at it, then drop the one
        before: a kill at any moment leaves the record naming a whole checkpoint."""
        index = (self.record or {"index": 0})["index"] + 1
        name, filesystem = f"checkpoint_{index:06d}", self.storage.filesystem
        target = self.storage.path("train", self.run, name)
        filesystem.create_dir(target, recursive=True)
        pafs.copy_files(str(directory), target, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=filesystem)
        previous, self.record = self.record, {"index": index, "checkpoint": name}
        self.storage.write_json(self.record, "train", self.run, LATEST_FILE)
        if previous:
            filesystem.delete_dir(self.storage.path("train", self.run, previous["checkpoint"]))
        return ray.train.Checkpoint(target, filesystem=filesystem)

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        checkpoint = ray.train.Checkpoint(self.storage.path("train", self.run, self.record["checkpoint"]),
                                          filesystem=self.storage.filesystem) if self.record else None
        with local_folder(checkpoint) as folder:
            yield folder


@contextlib.contextmanager
def local_folder(checkpoint: ray.train.Checkpoint | None) -> Iterator[Path | None]:
    """A checkpoint as a local folder while the block runs: its own folder on local (or mounted)
    storage, else a download removed afterwards. (`Checkpoint.to_directory` copies even a local
    checkpoint into /tmp/checkpoint_tmp_* and never removes it: a pre-trained model per trial.)"""
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as folder:
        yield Path(folder)


def _worker_setup(config: dict, session: Session | None) -> tuple[Experiment, int, Session]:
    # Ray sets OMP threads from the CPU share (fractions become 1): size torch's pool ourselves,
    # leaving the loader processes (one thread each) the CPUs they take.
    loader_workers = config.get("loader_workers", 0)
    torch.set_num_threads(max(1, int(config["cpus_per_worker"]) - loader_workers))
    session = session or RayTrainSession()
    session.loader_workers = loader_workers
    session.checkpoint_interval_s = config.get("checkpoint_interval_s", 0.0)
    return Experiment.model_validate(config["experiment"]), config["seed"], session


# The loops import the model (timm, about 3 s) where a stage runs only: the Train controller,
# which also imports this module, never needs it.
# Ray Train calls them with the config alone; a trial running a stage itself passes its session.
def pretrain_worker(config: dict, session: Session | None = None) -> None:
    from .pretrain import pretrain
    pretrain(*_worker_setup(config, session))


def evaluate_worker(config: dict, session: Session | None = None) -> None:
    from .evaluate import evaluate
    experiment, seed, session = _worker_setup(config, session)
    # config["checkpoint"]: the pre-training's ray.train.Checkpoint, on whatever storage it is
    with local_folder(config.get("checkpoint")) as directory:
        evaluate(experiment, seed, session, directory)
