"""Sweeps through real Ray on a 2-node `ray.cluster_utils.Cluster`: grid with the scratch
baseline and 2 gloo workers per trial, Optuna, ASHA early stopping, and a Ray Job submission.
Interruption and faults: tests/test_faults.py."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, optuna_told, write_study

pytestmark = pytest.mark.slow


def run(study, cluster, cwd):
    command = [sys.executable, "-m", "harness.cli", "run", str(study), "--address", cluster.address]
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done


def test_grid_with_scratch_baseline_and_two_gloo_workers_across_two_nodes(tmp_path, cluster):
    study = write_study(tmp_path, "baseline", sweep={"parameters": {"pretrain.method": ["videomae", "scratch"]}},
                        # each Train worker loads its clips in a process of its own, as on a GPU node
                        resources={"workers_per_trial": 2, "cpus_per_worker": 1, "loader_workers": 1})
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


def test_optuna_runs_each_draw_on_every_seed_and_is_told_their_mean(tmp_path, cluster):
    path = write_study(tmp_path, "optuna_seeds", seeds=[0, 1], sweep={
        "method": "optuna", "num_samples": 2, "sampler_seed": 7,
        "parameters": {"pretrain.mask.ratio": {"type": "float", "low": 0.5, "high": 0.95}}})
    run(path, cluster, tmp_path)
    trials = pd.read_parquet(tmp_path / "runs" / "optuna_seeds" / "trials.parquet")
    draws = trials.groupby("pretrain.mask.ratio")
    assert len(trials) == 4 and draws.ngroups == 2 and all(sorted(d["seed"]) == [0, 1] for _, d in draws)
    # What Optuna was told, from the searcher state Tune saved beside the experiment
    told = optuna_told(path, tmp_path / "runs" / "optuna_seeds" / "tune", "pretrain.mask.ratio")
    assert told == pytest.approx(draws["eval_top1"].mean().to_dict())


def submitted_job(cluster, entrypoint: str, **options) -> tuple[str, str]:
    """Submit a Ray Job to the cluster as `ray job submit` does, wait for it: (status, logs)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(f"http://{cluster.head_node.address_info['webui_url']}")
    job = client.submit_job(entrypoint=entrypoint, **options)
    deadline = time.time() + 600
    while client.get_job_status(job) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.time() < deadline, "the job did not end"
        time.sleep(1)
    return client.get_job_status(job), client.get_job_logs(job)


def test_submitted_as_a_ray_job(tmp_path, cluster):
    """`ray job submit -- harness run ...`: the job's RAY_ADDRESS is joined, the rows land."""
    study = write_study(tmp_path, "job")
    status, logs = submitted_job(cluster, f"{sys.executable} -m harness.cli run {study} --runs {tmp_path / 'runs'}")
    assert status == "SUCCEEDED", logs[-4000:]
    assert "Ray cluster " in logs and "started locally" not in logs  # it joined the job's cluster
    trials = pd.read_parquet(tmp_path / "runs" / "job" / "trials.parquet")
    assert len(trials) == 1 and (trials["status"] == "ok").all()


def test_a_job_run_in_its_working_dir_copy_keeps_no_results_there(tmp_path, cluster):
    """`ray job submit --working-dir .`: the command runs in a copy Ray deletes later, so a
    relative --runs (or --out) there is refused, in one line, before anything is written."""
    project = tmp_path / "project"
    project.mkdir()
    write_study(project, "copied")
    status, logs = submitted_job(cluster, f"{sys.executable} -m harness.cli run copied.yaml; echo run exit $?; ls; "
                                          f"{sys.executable} -m harness.cli report {tmp_path} --out reports",
                                 runtime_env={"working_dir": str(project)})
    assert status == "FAILED", logs[-4000:]
    lines = logs.splitlines()
    refusals = [line for line in lines if "in the copy of its working dir that Ray made for this job" in line]
    assert [line.split(":")[0:2] for line in refusals] == [["harness", " --runs runs"], ["harness", " --out reports"]]
    assert "run exit 2" in lines and "runs" not in lines  # nothing written in the copy


def test_asha_stops_the_trial_with_the_worse_pretraining_loss(tmp_path, cluster):
    """One trial at a time, the better loss first: at the first rung the second is worse, so ASHA
    stops it; its row says so and keeps the epochs it ran."""
    study = write_study(tmp_path, "asha", pretrain={"epochs": 4, "batch_size": 16},
                        resources={"workers_per_trial": 1, "cpus_per_worker": 1, "max_concurrent_trials": 1},
                        sweep={"parameters": {"pretrain.loss": ["mse_raw", "mse"]},  # raw pixels: the smaller loss
                               "early_stopping": {"grace_period": 1, "reduction_factor": 2}})
    output = run(study, cluster, tmp_path).stdout
    trials = pd.read_parquet(tmp_path / "runs" / "asha" / "trials.parquet").set_index("pretrain.loss")
    assert trials.loc["mse_raw", "status"] == "ok" and trials.loc["mse", "status"] == "stopped", output[-3000:]
    assert "stopped early by ASHA after pre-training epoch 1" in trials.loc["mse", "reason"]
    assert "STOPPED" in output
    epochs = pd.read_parquet(tmp_path / "runs" / "asha" / "epochs.parquet").groupby("pretrain.loss")["epoch"].max()
    assert epochs["mse_raw"] == 4 and epochs["mse"] < 4


@pytest.mark.parametrize("user_value", [None, "3"])
def test_train_poll_interval_reaches_the_trial_processes(cluster, user_value):
    """`harness run` passes Ray Train's poll interval (0.5 s, or the user's own) to every process
    of its job, where the Tune trainables read it when they start a Train run."""
    script = ("import os, ray\nfrom harness.cluster import start_ray\n"
              f"start_ray({cluster.address!r})\n"
              "print('VALUE', ray.get(ray.remote(lambda: os.environ.get('RAY_TRAIN_HEALTH_CHECK_INTERVAL_S')).remote()))")
    env = {k: v for k, v in os.environ.items() if k != "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"}
    if user_value:
        env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = user_value
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"VALUE {user_value or '0.5'}" in done.stdout


def test_a_local_ray_prints_how_to_get_the_token_its_dashboard_asks_for(cluster):
    """Ray turns token authentication on for a new local cluster: the dashboard's API refuses a
    browser without the token, and the command `harness run` names prints the one it accepts.
    With another Ray on the machine (the 2-node cluster's raylets), it says they share the CPUs."""
    script = ("import contextlib, io, re, subprocess, urllib.request\nfrom harness.cluster import start_ray\n"
              "with contextlib.redirect_stdout(io.StringIO()) as said:\n"
              "    start_ray(None)\n"
              "print(said.getvalue())\n"
              "url = re.search(r'dashboard: (http://\\S+)', said.getvalue()).group(1)\n"
              "token = subprocess.run(['ray', 'get-auth-token'], capture_output=True, text=True).stdout.strip()\n"
              "for headers in ({}, {'Authorization': 'Bearer ' + token}):\n"
              "    request = urllib.request.Request(url + '/api/jobs/', headers=headers)\n"
              "    try:\n"
              "        print('STATUS', urllib.request.urlopen(request, timeout=30).status)\n"
              "    except urllib.error.HTTPError as error:\n"
              "        print('STATUS', error.code)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the venv's `ray`
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "the dashboard asks for Ray's token: `ray get-auth-token` prints it" in done.stdout
    assert ("another Ray already runs on this machine (2 raylet processes): its work and this study's share the "
            f"{os.cpu_count()} CPUs") in done.stdout
    assert [line.split()[1] for line in done.stdout.splitlines() if line.startswith("STATUS")] == ["401", "200"]


def test_a_cluster_that_asks_for_a_token_the_driver_lacks_stops_the_command_at_once(tmp_path):
    """Ray sends its token to an explicit address only with RAY_AUTH_MODE=token; without it,
    `ray.init` retried for ever, printing a warning a second. Now one line and exit 2."""
    script = ("import os, subprocess, sys\nfrom ray.cluster_utils import Cluster\n"
              "nodes = Cluster(initialize_head=True, head_node_args={'num_cpus': 1})\n"
              "env = {k: v for k, v in os.environ.items() if k != 'RAY_AUTH_MODE'}\n"
              "done = subprocess.run([sys.executable, '-m', 'harness.cli', 'run', sys.argv[1], '--scale', 'smoke',\n"
              "                       '--address', nodes.address, '--runs', sys.argv[2]], env=env, capture_output=True,\n"
              "                      text=True, timeout=120)\n"
              "print('CODE', done.returncode, nodes.address)\nprint(done.stderr)\n"
              "nodes.shutdown()\n")
    env = {**os.environ, "HOME": str(tmp_path), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0123456789abcdef" * 2}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-c", script, str(REPO / "studies" / "mask_ratio.yaml"), str(tmp_path / "runs")],
                          env=env, capture_output=True, text=True, timeout=240)
    code, address = done.stdout.split("\n", 1)[0].split()[1:]
    assert code == "2", done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.splitlines()[1] == (f"harness: --address {address}: that cluster asks for Ray's token: set "
                                           "RAY_AUTH_MODE=token, with the token in RAY_AUTH_TOKEN or ~/.ray/auth_token "
                                           "(`ray get-auth-token` on its head prints it)")
    assert not (tmp_path / "runs").exists()


def test_leak_cleanup_keeps_the_placement_groups_of_live_jobs_and_detached_ones(cluster):
    """`harness run` on a cluster removes what ended jobs left (tests/test_faults.py reruns hit
    that), never a running job's placement group or a detached one."""
    script = ("import ray\nfrom ray.util.placement_group import placement_group, remove_placement_group\n"
              "from ray.util.state import list_placement_groups\nfrom harness.cluster import remove_leaked_placement_groups\n"
              f"ray.init(address={cluster.address!r})\n"
              "live = placement_group([{'CPU': 0.01}]); detached = placement_group([{'CPU': 0.01}], lifetime='detached')\n"
              "ray.get([live.ready(), detached.ready()])\nremove_leaked_placement_groups()\n"
              "states = {g.placement_group_id: g.state for g in list_placement_groups(detail=True, limit=10000)}\n"
              "print('STATES', states[live.id.hex()], states[detached.id.hex()])\nremove_placement_group(detached)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "STATES CREATED CREATED" in done.stdout


def test_a_stage_leaves_its_loader_processes_their_cpus():
    """A worker's torch threads and its loader processes (one thread each) share its CPUs."""
    import torch

    from harness.session import Session
    from harness.worker import _worker_setup

    before = torch.get_num_threads()
    try:
        for loaders, threads in ((7, 1), (3, 5), (0, 8)):
            config = {"cpus_per_worker": 8, "loader_workers": loaders, "experiment": {}, "seed": 0}
            _, _, session = _worker_setup(config, Session())
            assert (torch.get_num_threads(), session.loader_workers) == (threads, loaders)
    finally:
        torch.set_num_threads(before)
