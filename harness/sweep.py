"""Study -> a Ray Tune sweep of trials on a local or existing Ray cluster -> rows in Parquet."""
from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import ray
import ray.tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Repeater
from ray.tune.search.optuna import OptunaSearch

from .cluster import check_address, remove_leaked_placement_groups, start_ray
from .prepare import check_weights, prepare_data
from .recorder import TrialRecorder, reconcile
from .results import (EXPERIMENTS_FILE, STUDY_FILE, TRIALS_FILE, added_seeds, check_storage, recorded_count,
                      recorded_trials, remove_partial_writes, run_lock, set_aside, settings_changed,
                      tune_experiments, write_atomically)
from .storage import Storage, new_storage_folder, normal_location, remember_storage, resumed_storage
from .study import Study, StudyError
from .trial import POINT, PretrainLeases, leases_name, run_trial, shares_pretraining, trial_resources

def trial_points(study: Study) -> list[dict[str, Any]]:
    """Every grid point x seed, in a stable order (an Optuna sweep draws its points as it runs)."""
    if study.sweep.method == "optuna":
        return []
    return [{**point, "seed": seed} for point in study.sweep.grid_points() for seed in study.seeds]


def param_space(study: Study, seeds: list[int] | None = None) -> dict[str, Any]:
    """The Tune search space: grid_search lists for a grid (over `seeds`, default the study's);
    Tune domains for Optuna to sample."""
    sweep = study.sweep
    if sweep.method == "grid":  # one grid axis of whole points, so explicit points fit in too
        return {POINT: ray.tune.grid_search(sweep.grid_points()), "seed": ray.tune.grid_search(seeds or study.seeds)}
    space: dict[str, Any] = {"seed": study.seeds[0]}
    for name, values in sweep.parameters.items():
        if isinstance(values, list):
            space[name] = ray.tune.choice(values)
        elif values.type == "int":
            space[name] = ray.tune.randint(int(values.low), int(values.high) + 1)
        else:
            space[name] = (ray.tune.loguniform if values.type == "loguniform" else ray.tune.uniform)(values.low, values.high)
    return space


class _FinalMetricOptuna(OptunaSearch):
    """Optuna fed only the final result: per-epoch progress reports carry no eval metric."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.metric in result:
            super().on_trial_result(trial_id, result)


class SeedRepeater(Repeater):
    """Each Optuna draw run once per seed, as trials of their own; Optuna is told the mean over
    the seeds, so it optimizes the configuration rather than one seed's luck. Tune keeps which
    trials make a draw in its searcher checkpoint (Repeater's state), so a resumed run goes on."""

    def __init__(self, searcher: OptunaSearch, seeds: list[int]):
        super().__init__(searcher, repeat=len(seeds), set_index=False)
        self.seeds = seeds

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if isinstance(config, dict):  # the n-th trial of the current draw takes the n-th seed
            config = {**config, "seed": self.seeds[self._current_group.count() - 1]}
        return config


def search_algorithm(study: Study) -> OptunaSearch | SeedRepeater | None:
    """Optuna's TPE sampler (seeded), fed each trial's final metric; with several seeds each draw
    runs once per seed and Optuna sees the mean."""
    sweep = study.sweep
    if sweep.method != "optuna":
        return None
    # Progress reports lack the metric until the trial's end; Tune would reject them otherwise.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    searcher = _FinalMetricOptuna(metric=sweep.metric, mode=sweep.mode,
                                  sampler=optuna.samplers.TPESampler(seed=sweep.sampler_seed))
    return SeedRepeater(searcher, study.seeds) if len(study.seeds) > 1 else searcher


def resource_plan(study: Study, cluster: dict[str, float], source: str = "",
                  nodes: list[dict[str, float]] | None = None) -> dict[str, Any]:
    """Per-trial resources and how many trials run at once; StudyError if a trial cannot fit in
    the cluster, or a worker on any one of its `nodes` (Ray would wait for one for ever)."""
    res = study.resources
    cpus = res.workers_per_trial * res.cpus_per_worker
    gpus = res.workers_per_trial * res.gpus_per_worker
    have_cpus, have_gpus = cluster.get("CPU", 0), cluster.get("GPU", 0)
    if gpus > have_gpus:
        raise StudyError(f"{source}resources.gpus_per_worker: a trial needs {_count(gpus, 'GPU')}, "
                         f"the cluster has {have_gpus:g}")
    if cpus > have_cpus:
        raise StudyError(f"{source}resources.cpus_per_worker: a trial needs {_count(cpus, 'CPU')}, "
                         f"the cluster has {have_cpus:g}")
    if nodes and not any(_holds_a_worker(node, res) for node in nodes):
        gpu_short = res.gpus_per_worker and not any(node.get("GPU", 0) >= res.gpus_per_worker for node in nodes)
        worker = _count(res.cpus_per_worker, "CPU") + (f" and {_count(res.gpus_per_worker, 'GPU')}"
                                                        if res.gpus_per_worker else "")
        sizes = sorted({(node.get("CPU", 0), node.get("GPU", 0)) for node in nodes}, reverse=True)
        largest = "; ".join(f"{cpu:g} CPU" + (f" and {gpu:g} GPU" if res.gpus_per_worker else "") for cpu, gpu in sizes)
        raise StudyError(f"{source}resources.{'gpus' if gpu_short else 'cpus'}_per_worker: a worker needs {worker} "
                         f"on one node, and no node has that (nodes: {largest})")
    fits = math.floor((have_cpus + 1e-9) / cpus)
    if gpus:
        fits = min(fits, math.floor(have_gpus / gpus))
    concurrent = min(fits, res.max_concurrent_trials or fits)
    return {"trials": study.trial_count(), "cpus_per_trial": cpus, "gpus_per_trial": gpus,
            "concurrent_trials": concurrent, "cluster_cpus": have_cpus, "cluster_gpus": have_gpus}


def _count(amount: float, unit: str) -> str:
    return f"{amount:g} {unit}{'' if amount == 1 else 's'}"


def _holds_a_worker(node: dict[str, float], resources: Any) -> bool:
    return (node.get("CPU", 0) + 1e-9 >= resources.cpus_per_worker
            and node.get("GPU", 0) + 1e-9 >= resources.gpus_per_worker)


def early_stopping(study: Study, state_file: Path | None = None) -> TrialScheduler | None:
    """ASHA over the pre-training epochs, if the study asks for it (see EarlyStoppingSpec); its rung
    records kept in `state_file` (and read back from it when a run resumes)."""
    spec = study.sweep.early_stopping
    if spec is None:
        return None
    swept = study.sweep.parameters.get("pretrain.epochs")
    epochs = max([study.pretrain.epochs, *(swept if isinstance(swept, list) else [])]
                 + [int(point.get("pretrain.epochs", 0)) for point in study.sweep.points])
    return EarlyStopping(state_file, time_attr="pretrain_epoch", metric="pretrain_loss", mode="min",
                         max_t=max(epochs, spec.grace_period), grace_period=spec.grace_period,
                         reduction_factor=spec.reduction_factor, stop_last_trials=False)


class EarlyStopping(ASHAScheduler):
    """ASHA that lets a trial at its last pre-training epoch go on to its evaluation (with
    stop_last_trials=False Ray still stops one whose last epoch is a rung: 10 epochs, grace 5,
    factor 2), and keeps its rung records in `state_file`, which Tune does not save: a resumed
    run compares its trials with those recorded before the stop, as the whole run would have."""

    def __init__(self, state_file: Path | None, **asha: Any):
        super().__init__(**asha)
        if state_file is not None and state_file.exists():
            self.restore(str(state_file))
        self.state_file = state_file

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and result.get("stage") == "pretrain" \
                and result.get("epoch") == result.get("total_epochs"):  # pre-trained: evaluate it
            self._num_stopped -= 1
            action = TrialScheduler.CONTINUE
        self._keep()
        return action

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        super().on_trial_complete(tune_controller, trial, result)
        self._keep()

    def _keep(self) -> None:
        if self.state_file is not None:
            partial = self.state_file.with_name(f".{self.state_file.name}.partial")
            self.save(str(partial))
            os.replace(partial, self.state_file)


def run_study(study: Study, runs_root: str | Path, address: str | None = None, restart: bool = False,
              verbose: bool = False, source: str = "", storage: str | None = None) -> tuple[Path, int, int]:
    """Run every trial not yet finished; returns the study's run folder, the failed count and the
    count of trials an interruption (Ctrl+C) left without a row.
    `source` (the study file) prefixes errors found once the cluster is known. `storage` (a path
    or pyarrow URI) holds Ray's checkpoints and trial state instead of the run folder."""
    check_storage(runs_root)
    address = check_address(address)  # before any data is made for a cluster that cannot be reached
    run_dir = Path(runs_root).absolute() / study.name
    with run_lock(run_dir):
        return _run_study(study, run_dir, address, restart, verbose, source, storage)


def _run_study(study: Study, run_dir: Path, address: str | None, restart: bool, verbose: bool,
               source: str, storage: str | None) -> tuple[Path, int, int]:
    where = f"{source}: " if source else ""
    storage, folder = (normal_location(storage) if storage else None, None) if restart else \
        resumed_storage(run_dir, storage)
    folder = folder or new_storage_folder(study.name)  # a new run's own, in a storage other runs may share
    ray_storage = Storage.at(storage, folder) if storage else None
    if ray_storage:
        ray_storage.check_writable()
    settings = json.loads(study.model_dump_json())
    added = [] if restart else added_seeds(run_dir, settings)
    changed = [] if restart or added else settings_changed(run_dir, settings)
    if changed:  # Tune would resume the earlier study's trials, and the rows would mix
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        raise StudyError(f"{where}{run_dir} holds a run of this study with other "
                         f"settings ({', '.join(changed[:4])}{more}): --restart moves it aside and starts "
                         f"over; --runs DIR runs this one elsewhere")
    if not restart and not added and recorded_count(run_dir, study.seeds) >= study.trial_count():  # a failed row runs again
        print(f"all {study.trial_count()} trials of {study.name} are recorded in {run_dir}: nothing left to run "
              "(--restart runs them again)", flush=True)
        return run_dir, 0, 0
    prepare_data(study, where)
    check_weights(study, where)
    if start_ray(address, verbose):  # a local Ray ends with its driver, and leaves nothing behind
        remove_leaked_placement_groups()
    # A job scheduler's stop (SIGTERM: Slurm, Kubernetes, `timeout`) ends the run as Ctrl+C does, so Tune
    # saves its state and the unfinished trials are counted; Ray's own handler printed a crash dump.
    signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
    plan = resource_plan(study, ray.cluster_resources(), where,
                         nodes=[node["Resources"] for node in ray.nodes() if node["Alive"]])
    if restart and (aside := set_aside(run_dir)):  # nothing is written here before the plan fits
        print(f"the earlier run of {study.name} is kept in {aside}", flush=True)
    # Tune cannot add trials to an experiment it restores: added seeds run as an experiment of their own
    experiments = ([] if restart else tune_experiments(run_dir)) or [{"name": "tune", "seeds": study.seeds}]
    if added:
        kept = len(recorded_trials(run_dir))
        experiments.append({"name": "tune-seeds-" + "-".join(map(str, added)), "seeds": added})
        print(f"adding seed{'s' if len(added) > 1 else ''} {', '.join(map(str, added))} to the run in {run_dir} "
              f"(its {kept} finished trial{'s' if kept != 1 else ''} are kept)", flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_partial_writes(run_dir)
    remember_storage(run_dir, storage, folder)
    # what the report reads for the description and the gallery, and what a rerun is compared with
    write_atomically(run_dir / STUDY_FILE, study.model_dump_json(indent=1))
    write_atomically(run_dir / EXPERIMENTS_FILE, json.dumps(experiments))
    trials, left = plan["trials"], plan["trials"] - len(recorded_trials(run_dir))  # a resumed run has fewer left
    print(f"{trials} trial{'s' if trials != 1 else ''}{f' ({left} left)' if 0 <= left < trials else ''}, "
          f"{min(trials, plan['concurrent_trials'])} at a time, "
          f"{plan['cpus_per_trial']:g} CPU / {plan['gpus_per_trial']:g} GPU each", flush=True)
    if ray_storage:
        print(f"checkpoints and trial state: {ray_storage.describe()}", flush=True)
    ray_storage = ray_storage or Storage.at(str(run_dir))
    # Tune would insist that every report carry the scheduler's metric (the pre-training loss for
    # ASHA); evaluation reports have none by design.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # Tune's JSON and CSV logs of each trial, not its TensorBoard one: that warned about the
    # per-epoch list in every report and printed a TensorBoard command; our results are the Parquet.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    # Only when trials share a pre-training run (an idle actor costs half a percent of a core).
    # Kept referenced until the study ends: a named actor without a handle is collected.
    shared = shares_pretraining(study, trial_points(study))
    leases = PretrainLeases.options(name=leases_name(study.name), get_if_exists=True).remote() if shared else None
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(run_trial, study=study.model_dump(), storage=ray_storage, shared=shared),
        trial_resources(study))
    done = failed = unfinished = 0
    for experiment in experiments:
        total, recorded = study.trial_count(experiment["seeds"]), recorded_count(run_dir, experiment["seeds"])
        if unfinished:  # interrupted (Ctrl+C): the later experiments wait for the rerun
            unfinished += total - recorded
            continue
        restore = not restart and ray.tune.Tuner.can_restore(ray_storage.path(experiment["name"]),
                                                             storage_filesystem=ray_storage.filesystem)
        if recorded >= total and not restore:
            continue  # rows copied in without Tune's state (a shipped report's folder): nothing left to run
        recorder = TrialRecorder(study, run_dir, total, recorded)
        tuner = make_tuner(study, experiment, trainable, ray_storage, plan, recorder, restore)
        grid = tuner.fit()  # on Ctrl+C, Tune saves its state, stops the trials and returns
        for result in grid:  # a row lost to an interruption between a trial's end and its write lands now
            reconcile(run_dir, study, result)
        done += sum(1 for r in grid if r.error is None and r.metrics.get("stage") == "done")
        failed += sum(1 for r in grid if r.error is not None)
        unfinished += unfinished_trials(run_dir, grid, total)
    if leases:
        ray.kill(leases)
    results = run_dir / TRIALS_FILE
    print(f"{done} trial{'s' if done != 1 else ''} finished, {failed} failed; "
          + (f"results: {results}" if results.exists() else "no results yet"), flush=True)
    return run_dir, failed, unfinished


def make_tuner(study: Study, experiment: dict, trainable: Any, ray_storage: Storage, plan: dict[str, Any],
               recorder: TrialRecorder, restore: bool) -> ray.tune.Tuner:
    """The Tune experiment `experiment` ({"name", "seeds"}): restored (`restore`) where it has run
    before, with `recorder` writing this session's rows and progress."""
    tune_dir, filesystem = ray_storage.path(experiment["name"]), ray_storage.filesystem
    rungs_file = recorder.run_dir / f"early_stopping-{experiment['name']}.pkl"
    if restore:
        print(f"resuming {ray_storage.describe()}/{experiment['name']} (finished trials are kept; "
              "--restart starts over)", flush=True)
        tuner = ray.tune.Tuner.restore(tune_dir, trainable, resume_errored=True, storage_filesystem=filesystem)
        # Tune restores the callbacks it pickled with its state: the first session's recorder, which
        # would write rows into the run folder as it was then named, and count from its start
        if tuner._local_tuner is not None:  # None only through Ray Client (ray://), where Tune runs on the head
            run_config = tuner._local_tuner.get_run_config()
            run_config.callbacks = [recorder if isinstance(c, TrialRecorder) else c for c in run_config.callbacks]
            # and the scheduler as it was first made, with no rung records: read them back
            tuner._local_tuner._tune_config.scheduler = early_stopping(study, rungs_file) or FIFOScheduler()
        return tuner
    rungs_file.unlink(missing_ok=True)  # a fresh start: no rung records of an earlier one
    return ray.tune.Tuner(
        trainable,
        param_space=param_space(study, experiment["seeds"]),
        tune_config=ray.tune.TuneConfig(max_concurrent_trials=plan["concurrent_trials"],
                                        search_alg=search_algorithm(study), scheduler=early_stopping(study, rungs_file),
                                        num_samples=study.trial_count() if study.sweep.method == "optuna" else 1),
        run_config=ray.tune.RunConfig(
            name=experiment["name"], storage_path=ray_storage.root, storage_filesystem=filesystem, verbose=0,
            failure_config=ray.tune.FailureConfig(max_failures=1),
            callbacks=[JsonLoggerCallback(), CSVLoggerCallback(), recorder]),
    )


def unfinished_trials(run_dir: Path, grid: ray.tune.ResultGrid, total: int) -> int:
    """How many of the study's `total` trials neither failed nor have a row: none after a whole
    run; after an interruption, the trials it stopped and those not started yet."""
    path = run_dir / TRIALS_FILE
    rows = set(pd.read_parquet(path, columns=["trial_id"])["trial_id"]) if path.exists() else set()
    ended = sum(1 for r in grid if r.error is not None or r.metrics.get("trial_id") in rows)
    return max(0, total - ended)
