"""One trial: a pre-training Ray Train run, then an evaluation Ray Train run from its encoder.
With one worker per trial (and `resources.local_mode`, the default) each is a run in Ray Train's
local mode (`num_workers=0`): the training function runs in the trial's own process, with no
Train worker group to start for each stage.

This is the only layer (with harness/sweep.py, harness/recorder.py, harness/worker.py and
harness/stage_report.py) that imports Ray; the loops it runs are plain functions of (experiment, seed, session). It imports
neither torch nor the models at the top: the driver imports it, and never needs them."""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import time
from typing import Any, Callable

import ray.train
import ray.tune

from .stage_report import StageReportCallback
from .storage import Storage
from .study import Experiment, Study


TRIAL_CPU = 0.01  # what the Tune trainable itself reserves: it only waits on its Train runs
LEASE_S = 60.0    # a pre-training lease not renewed for this long is taken over: its trial died
POINT = "point"   # a grid trial's config: {POINT: {dotted path: value}, "seed": s}; Optuna's is flat


def sweep_point(config: dict[str, Any]) -> dict[str, Any]:
    """A Tune trial config -> its sweep point (dotted path -> value), without the seed."""
    return dict(config[POINT]) if POINT in config else {k: v for k, v in config.items() if k != "seed"}


def in_trial_process(study: Study) -> bool:
    """Whether a trial's stages run in its own process (one worker, `local_mode`: Ray Train's
    local mode) rather than in a Train worker group."""
    return study.resources.local_mode and study.resources.workers_per_trial == 1


def trial_resources(study: Study) -> dict[str, float]:
    """What the Tune trainable reserves: a worker's share when it runs the stages itself, else
    almost nothing (it only waits on its Train runs, whose workers reserve their own)."""
    resources = study.resources
    if not in_trial_process(study):
        return {"CPU": TRIAL_CPU}
    return {"CPU": resources.cpus_per_worker, **({"GPU": resources.gpus_per_worker} if resources.gpus_per_worker else {})}


def run_stage(worker: Callable[..., None], name: str, study: Study, storage: Storage,
              loop_config: dict) -> tuple[dict, ray.train.Checkpoint | None]:
    """Run one stage named `name` as a Ray Train run (relaunching it resumes it); its last
    metrics and checkpoint."""
    loop_config = {**loop_config, "cpus_per_worker": study.resources.cpus_per_worker,
                   "loader_workers": study.resources.loader_processes(),
                   "checkpoint_interval_s": study.resources.checkpoint_interval_s}
    if in_trial_process(study):
        from .worker import LocalRunSession

        # Inside a Tune trial Ray Train's report and checkpoint API refuse to run (Ray 2.60), so
        # the loop reports through this session: it keeps the checkpoints and reports to Tune.
        session = LocalRunSession(storage, name)
        _fit_here(functools.partial(worker, session=session), name, loop_config)
        return session.metrics, session.checkpoint
    result = _fit(worker, name, study, storage, loop_config)
    return result.metrics, result.checkpoint


def _fit_here(worker: Callable[[dict], None], name: str, loop_config: dict) -> None:
    """A run in Ray Train's local mode: the training function runs here, in this process."""
    from ray.train.torch import TorchTrainer  # imports torch: only once a stage is about to run

    logging.getLogger("ray.train.v2.api.config").setLevel(logging.WARNING)  # its notice, per stage
    TorchTrainer(worker, train_loop_config=loop_config, scaling_config=ray.train.ScalingConfig(num_workers=0),
                 run_config=ray.train.RunConfig(name=name)).fit()


def _fit(worker: Callable[[dict], None], name: str, study: Study, storage: Storage,
         loop_config: dict) -> ray.train.Result:
    """A run on a Ray Train worker group."""
    from ray.train.torch import TorchTrainer  # imports torch: only once a stage is about to run

    resources = study.resources
    # The trainable holds TRIAL_CPU on one node; each worker leaves that much room on its own
    # node, so trials pack exactly (two 1-CPU trials on 2 cores; 2 workers over two 1-CPU nodes).
    per_worker = {"CPU": resources.cpus_per_worker - TRIAL_CPU}
    if resources.gpus_per_worker:
        per_worker["GPU"] = resources.gpus_per_worker
    trainer = TorchTrainer(
        worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=resources.workers_per_trial,
                                               use_gpu=resources.gpus_per_worker > 0,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=name,  # named after the trial: relaunching resumes it
            storage_path=storage.path("train"), storage_filesystem=storage.filesystem,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            failure_config=ray.train.FailureConfig(max_failures=2),
            callbacks=[StageReportCallback()]),
    )
    return trainer.fit()


def pretrain_key(experiment: Experiment, seed: int) -> str:
    """What a pre-training run's result depends on (not the evaluation), hashed."""
    settings = experiment.model_dump(include={"model", "synth", "pretrain", "precision", "on_error"})
    return hashlib.sha1(json.dumps({**settings, "seed": seed}, sort_keys=True).encode()).hexdigest()[:16]


def shares_pretraining(study: Study, points: list[dict[str, Any]]) -> bool:
    """Whether two of the trials (`points`: grid point + seed each; none for an Optuna sweep,
    which may draw any point) would pre-train the same encoder."""
    if study.sweep.method == "optuna":
        return True
    experiments = [(study.experiment(sweep_point(point)), point["seed"]) for point in points]
    keys = [pretrain_key(e, seed) for e, seed in experiments if e.pretrain.trains]
    return len(keys) != len(set(keys))


def leases_name(study: str) -> str:
    return f"videomae-harness-pretrain-leases:{study}"


@ray.remote(num_cpus=0)
class PretrainLeases:
    """Which trial is making each shared pre-training run (pretrain key -> trial). The driver
    creates it; the holder renews its lease while it trains, so one whose trial died lapses."""

    def __init__(self) -> None:
        self.holders: dict[str, tuple[str, float]] = {}

    def acquire(self, key: str, trial_id: str) -> bool:
        """Take or renew the lease of `key`; False while another live trial holds it."""
        holder = self.holders.get(key)
        if holder and holder[0] != trial_id and time.monotonic() - holder[1] < LEASE_S:
            return False
        self.holders[key] = (trial_id, time.monotonic())
        return True

    def release(self, key: str, trial_id: str) -> None:
        if self.holders.get(key, ("",))[0] == trial_id:
            del self.holders[key]


def _renew(leases: Any, key: str, trial_id: str, stop: threading.Event) -> None:
    while not stop.wait(LEASE_S / 4):
        leases.acquire.remote(key, trial_id)


def pretrained(experiment: Experiment, seed: int, trial_id: str, study: Study, storage: Storage,
               loop_config: dict, shared: bool) -> tuple[ray.train.Checkpoint, dict, str | None]:
    """Pre-train (a Ray Train run named after the trial), or reuse the finished run of another
    trial of the study with the same pre-training settings and seed (e.g. the same encoder
    evaluated on two targets); a trial that needs one being made waits for it.
    `shared`: whether other trials may pre-train the same (then the study's PretrainLeases runs).
    Returns the checkpoint, the run's last metrics and the run reused (None if our own)."""
    key = pretrain_key(experiment, seed)
    record = ("train", "pretrained", f"{key}.json")
    leases = ray.get_actor(leases_name(study.name)) if shared else None
    while leases and not ray.get(leases.acquire.remote(key, trial_id)):
        time.sleep(2)
    stop = threading.Event()
    if leases:
        threading.Thread(target=_renew, args=(leases, key, trial_id, stop), daemon=True).start()
    try:
        found = storage.read_json(*record)
        if found and found["trial_id"] != trial_id:
            return ray.train.Checkpoint(found["checkpoint"], storage.filesystem), found["metrics"], found["run"]
        from .worker import pretrain_worker

        run = f"{trial_id}-pretrain"
        metrics, checkpoint = run_stage(pretrain_worker, run, study, storage, loop_config)
        storage.write_json({"trial_id": trial_id, "run": run, "checkpoint": checkpoint.path,
                            "metrics": metrics}, *record)
        return checkpoint, metrics, None
    finally:
        stop.set()
        if leases:
            leases.release.remote(key, trial_id)


def run_trial(params: dict[str, Any], study: dict, storage: Storage, shared: bool = True) -> None:
    """Tune trainable: `params` is one sweep point (dotted paths) plus `seed`. `shared`: whether
    trials may share a pre-training run (`shares_pretraining`)."""
    study_obj = Study.model_validate(study)
    seed = int(params["seed"])
    experiment = study_obj.experiment(sweep_point(params))
    trial_id = ray.tune.get_context().get_trial_id()
    finished = ("train", f"{trial_id}.summary.json")
    kept = storage.read_json(*finished)
    if kept:  # it finished, but the driver died before Tune recorded that
        ray.tune.report(kept)
        return
    loop_config = {"experiment": experiment.model_dump(), "seed": seed}
    started = time.time()
    summary: dict[str, Any] = {"pretrain_loss": None, "pretrain_loss_curve": [], "pretrain_clips_per_s": None,
                               "pretrain_time_s": 0.0, "pretrain_epochs": [], "peak_rss_mb": None,
                               "resumed_from_epoch": None}
    checkpoint, skipped = None, {}  # bad file -> why it was skipped
    if experiment.pretrain.trains:
        checkpoint, metrics, shared_from = pretrained(experiment, seed, trial_id, study_obj, storage, loop_config,
                                                      shared)
        if not shared_from:  # epochs run before an interruption count in the trial's times too
            started -= time_before_stop(metrics, "epochs")
        skipped.update(bad_files(metrics))
        summary.update(pretrain_loss=metrics["loss"], pretrain_loss_curve=metrics["loss_curve"],
                       pretrain_clips_per_s=mean_rate(metrics), pretrain_time_s=time.time() - started,
                       pretrain_epochs=[] if shared_from else metrics["epochs"], peak_rss_mb=metrics["peak_rss_mb"],
                       resumed_from_epoch=metrics["resumed_from_epoch"], pretrain_shared_from=shared_from,
                       pretrain_run=shared_from or f"{trial_id}-pretrain")
        if metrics.get("diverged"):  # recorded as such, not evaluated; the study goes on
            return _finish(storage, finished, _diverged(summary, started, skipped, study_obj.resources,
                                                        f"non-finite loss or gradient at epoch {metrics['epoch']} "
                                                        f"({metrics['bad_steps']} bad steps)"))
    from .worker import evaluate_worker

    eval_started = time.time()
    metrics, _ = run_stage(evaluate_worker, f"{trial_id}-eval", study_obj, storage,
                           {**loop_config, "checkpoint": checkpoint})
    skipped.update(bad_files(metrics))  # a file bad in both stages counts once
    ran_before = time_before_stop(metrics, "finetune_epochs")
    eval_started, started = eval_started - ran_before, started - ran_before
    if metrics.get("diverged"):
        summary.update(finetune_loss_curve=metrics.get("finetune_loss_curve", []), eval_time_s=time.time() - eval_started)
        reason = metrics.get("reason") or f"non-finite loss or gradient while fine-tuning, at epoch {metrics['epoch']}"
        return _finish(storage, finished, _diverged(summary, started, skipped, study_obj.resources, reason))
    summary.update(eval_top1=metrics["top1"], eval_top5=metrics["top5"],
                   eval_protocol=metrics["protocol"], precision=metrics["precision"],
                   machine=metrics["machine"],
                   finetune_loss_curve=metrics.get("finetune_loss_curve", []),
                   eval_train_clips=metrics["train_clips"], eval_time_s=time.time() - eval_started,
                   wall_time_s=time.time() - started, skipped_videos=len(skipped),
                   skipped_files=sorted(skipped.items()), stage="done")
    resources = study_obj.resources
    summary.update(workers=resources.workers_per_trial,
                   cpu_seconds=summary["wall_time_s"] * resources.workers_per_trial * resources.cpus_per_worker,
                   gpu_seconds=summary["wall_time_s"] * resources.workers_per_trial * resources.gpus_per_worker)
    return _finish(storage, finished, summary)


def mean_rate(metrics: dict[str, Any]) -> float:
    """Pre-training's clips per second over all its epochs (the last report's is its last epoch's)."""
    epochs = [e for e in metrics.get("epochs", []) if e.get("epoch_time_s")]
    seconds = sum(e["epoch_time_s"] for e in epochs)
    return sum(e["clips_per_s"] * e["epoch_time_s"] for e in epochs) / seconds if seconds else metrics["clips_per_s"]


def bad_files(metrics: dict[str, Any]) -> dict[str, str]:
    """A stage's skipped files, path -> reason (a pre-training run recorded before reasons were
    kept lists paths only)."""
    return dict((entry, "") if isinstance(entry, str) else tuple(entry) for entry in metrics.get("skipped_files", []))


def time_before_stop(metrics: dict, epochs: str) -> float:
    """Seconds a resumed stage ran before its interruption: the times of its `epochs` entries
    before `resumed_from_epoch`."""
    earlier = metrics.get(epochs, [])[:metrics.get("resumed_from_epoch") or 0]
    return sum(epoch.get("epoch_time_s", 0.0) for epoch in earlier)


def _diverged(summary: dict[str, Any], started: float, skipped: dict, resources: Any, reason: str) -> dict[str, Any]:
    """The row of a trial stopped by a non-finite loss or gradient: recorded, not scored."""
    return {**summary, "status": "diverged", "stage": "done", "wall_time_s": time.time() - started,
            "skipped_videos": len(skipped), "skipped_files": sorted(skipped.items()),
            "workers": resources.workers_per_trial, "reason": reason}


def _finish(storage: Storage, finished: tuple[str, ...], summary: dict[str, Any]) -> None:
    """Keep the trial's summary (whole or not at all), then hand it to Tune, which records the row."""
    storage.write_json(summary, *finished)
    ray.tune.report(summary)
