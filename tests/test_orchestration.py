"""Sweeps through real Ray on a 2-node `ray.cluster_utils.Cluster`: grid with the scratch
baseline and 2 gloo workers per trial, Optuna, and resume after the driver is killed."""
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slow

MICRO = {
    "model": {"preset": "tiny", "overrides": {"depth": 2}},
    "synth": {"train_clips": 32, "val_clips": 16},
    "pretrain": {"epochs": 1, "batch_size": 16},
    "evaluate": {"train_clips": 32, "epochs": 20},
    "resources": {"workers_per_trial": 1, "cpus_per_worker": 1},
}


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    nodes = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1"})
    nodes.add_node(num_cpus=1)
    nodes.wait_for_nodes()
    yield nodes
    nodes.shutdown()


def write_study(tmp_path, name, **sections):
    study = {"name": name, **MICRO, **sections}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def run(study, cluster, cwd, **popen):
    command = [sys.executable, "-m", "harness.cli", "run", str(study), "--address", cluster.address]
    if popen:
        return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done


def test_grid_with_scratch_baseline_and_two_gloo_workers_across_two_nodes(tmp_path, cluster):
    study = write_study(tmp_path, "baseline", sweep={"parameters": {"pretrain.method": ["videomae", "scratch"]}},
                        resources={"workers_per_trial": 2, "cpus_per_worker": 1})
    run(study, cluster, tmp_path)
    trials = pd.read_parquet(tmp_path / "runs" / "baseline" / "trials.parquet").set_index("pretrain.method")
    assert sorted(trials.index) == ["scratch", "videomae"] and (trials["workers"] == 2).all()
    assert trials.loc["videomae", "pretrain_loss"] > 0 and pd.isna(trials.loc["scratch", "pretrain_loss"])
    assert trials["eval_top1"].between(0, 1).all()
    epochs = pd.read_parquet(tmp_path / "runs" / "baseline" / "epochs.parquet")
    assert epochs["trial_id"].tolist() == [trials.loc["videomae", "trial_id"]] and epochs["epoch"].tolist() == [1]


def test_optuna_sweep_samples_ranges_and_choices(tmp_path, cluster):
    study = write_study(tmp_path, "optuna", sweep={
        "method": "optuna", "num_samples": 3, "sampler_seed": 7,
        "parameters": {"pretrain.mask.ratio": {"type": "float", "low": 0.5, "high": 0.95},
                       "pretrain.loss": ["mse", "l1"]}})
    run(study, cluster, tmp_path)
    trials = pd.read_parquet(tmp_path / "runs" / "optuna" / "trials.parquet")
    assert len(trials) == 3 and trials["trial_id"].is_unique
    assert trials["pretrain.mask.ratio"].between(0.5, 0.95).all() and trials["pretrain.mask.ratio"].is_unique
    assert set(trials["pretrain.loss"]) <= {"mse", "l1"}


def unfinished_with_checkpoint(run_dir):
    """Trials whose pre-training checkpoint Ray Train has registered but that have not finished."""
    found = set()
    for snapshot in (run_dir / "train").glob("*-pretrain/checkpoint_manager_snapshot.json"):
        trial = snapshot.parent.name.removesuffix("-pretrain")
        if not (run_dir / "train" / f"{trial}.summary.json").exists():
            found.add(trial)
    return found


def test_resume_after_the_driver_is_killed(tmp_path, cluster):
    study = write_study(tmp_path, "resume", pretrain={"epochs": 24, "batch_size": 16},
                        sweep={"parameters": {"pretrain.mask.ratio": [0.5, 0.75, 0.9]}})
    run_dir = tmp_path / "runs" / "resume"
    driver = run(study, cluster, tmp_path, popen=True)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once one trial is recorded and another is mid-way
        time.sleep(0.3)
        if (run_dir / "trials.parquet").exists() and unfinished_with_checkpoint(run_dir):
            break
    assert time.time() < deadline, driver.stdout.read() if driver.poll() is not None else "timed out"
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    time.sleep(3)  # the driver's trial actors die with it, a moment later
    interrupted = unfinished_with_checkpoint(run_dir)
    assert interrupted
    before = pd.read_parquet(run_dir / "trials.parquet")

    resumed = run(study, cluster, tmp_path)
    assert "resuming" in resumed.stdout
    after = pd.read_parquet(run_dir / "trials.parquet").set_index("trial_id")
    assert len(after) == 3 and after.index.is_unique
    kept = after.loc[before["trial_id"], "finished_at"]
    assert kept.tolist() == before["finished_at"].tolist()  # finished trials were not run again
    assert (after.loc[sorted(interrupted), "resumed_from_epoch"] >= 1).all()  # continued from a checkpoint
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    assert (epochs.groupby("trial_id")["epoch"].apply(sorted).map(list) == [list(range(1, 25))] * 3).all()
