"""Faults through real Ray on a 2-node `ray.cluster_utils.Cluster`: the driver killed (kill -9) at
each phase of a study then the same command rerun, a Train worker killed mid-epoch, a trial that
keeps failing, and the loss of a node running a worker. Each ends with every trial recorded once."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import MICRO, optuna_told, write_study as write_micro_study
from harness.results import FAULT_ENV
from harness.render import render_clip
from harness.report import runs_table, status_table
from harness.synth import SynthParams, write_mp4

pytestmark = pytest.mark.slow

EPOCHS = 8  # pre-training epochs of the studies here, unless a test says otherwise


def write_study(tmp_path, name, **sections):
    return write_micro_study(tmp_path, name, **{"pretrain": {"epochs": EPOCHS, "batch_size": 16}, **sections})


def start(study, cluster, cwd, env=None):
    return subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(study), "--address", cluster.address],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, **(env or {})})


def finish(driver, timeout=600):
    try:
        output, _ = driver.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        fail_stuck(driver, f"the study did not end in {timeout} s", expired.output)
    return driver.returncode, output


def ray_status(address):
    """`ray status -v` of the cluster at `address`: its resources in use and waiting demands."""
    state = subprocess.run([str(Path(sys.executable).parent / "ray"), "status", "-v", "--address", address],
                           capture_output=True, text=True, timeout=60)
    return state.stdout + state.stderr


def cpus_in_use(address):
    usage = re.search(r"Total Usage:\s*([\d.]+)/[\d.]+ CPU", ray_status(address))
    return float(usage.group(1)) if usage else None


def wait_until_released(address, timeout=180):
    """Wait until nothing holds a CPU of the cluster: a killed driver's trial actors and worker
    placement groups are released by Ray a moment after it dies (longer on a loaded machine)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cpus_in_use(address) == 0:
            return
        time.sleep(1)
    pytest.fail(f"CPUs still held {timeout} s after the study's driver ended:\n{ray_status(address)[-4000:]}")


@pytest.fixture(autouse=True)
def idle_cluster(cluster):
    """Each test starts on a cluster that nothing from an earlier test holds."""
    wait_until_released(cluster.address)


def fail_stuck(driver, what, output=None):
    """Fail with the driver's output and the cluster's resources, after killing the driver: a
    driver left running would hold the module's cluster and starve the tests after this one."""
    state = ray_status(driver.args[driver.args.index("--address") + 1])
    kill_driver(driver)
    output = output if output is not None else driver.stdout.read()
    if isinstance(output, bytes):
        output = output.decode(errors="replace")
    pytest.fail(f"{what}\n--- driver output (end) ---\n{(output or '')[-6000:]}\n--- ray status -v ---\n{state[-4000:]}")


def run(study, cluster, cwd):
    code, output = finish(start(study, cluster, cwd))
    assert code == 0, output[-5000:]
    return output


def wait_for(condition, driver, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if driver.poll() is not None:
            pytest.fail(f"the study ended first:\n{driver.stdout.read()[-4000:]}")
        time.sleep(0.2)
    fail_stuck(driver, f"what the test waits for did not happen in {timeout} s")


def kill_driver(driver):
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()


def unfinished_with_checkpoint(run_dir, stage):
    """Trials with a checkpoint of `stage` (pretrain or eval) registered that have not finished:
    by a Ray Train worker group, or by a trial running its stages itself (latest.json)."""
    found = set()
    for snapshot in (*(run_dir / "train").glob(f"*-{stage}/checkpoint_manager_snapshot.json"),
                     *(run_dir / "train").glob(f"*-{stage}/latest.json")):
        trial = snapshot.parent.name.removesuffix(f"-{stage}")
        if not (run_dir / "train" / f"{trial}.summary.json").exists():
            found.add(trial)
    return found


def rows(run_dir):
    return pd.read_parquet(run_dir / "trials.parquet")


def check_complete(run_dir, before, trials, epochs):
    """Every trial exactly once, finished rows untouched, every epoch row once per trial."""
    after = rows(run_dir).set_index("trial_id")
    assert len(after) == trials and after.index.is_unique and (after["status"] == "ok").all()
    assert after.loc[before["trial_id"], "finished_at"].tolist() == before["finished_at"].tolist()
    per_trial = pd.read_parquet(run_dir / "epochs.parquet").groupby("trial_id")["epoch"].apply(sorted).map(list)
    assert len(per_trial) == trials and (per_trial == [list(range(1, epochs + 1))] * trials).all()
    return after


PHASES = {  # what the driver is killed during: the study, and when to kill
    "pretraining": ({"pretrain": {"epochs": 16, "batch_size": 16},
                     "sweep": {"parameters": {"pretrain.mask.ratio": [0.75, 0.9]}}},
                    lambda run_dir: unfinished_with_checkpoint(run_dir, "pretrain")),
    "evaluation": ({"evaluate": {"protocol": "finetune", "train_clips": 32,
                                 "finetune": {"epochs": 30, "batch_size": 16, "warmup_epochs": 1}},
                    "sweep": {"parameters": {"pretrain.mask.ratio": [0.75, 0.9]}}},
                   lambda run_dir: unfinished_with_checkpoint(run_dir, "eval")),
    "between trials": ({"resources": {"workers_per_trial": 1, "cpus_per_worker": 1, "max_concurrent_trials": 1},
                        "sweep": {"parameters": {"pretrain.mask.ratio": [0.75, 0.9]}}},
                       lambda run_dir: (run_dir / "trials.parquet").exists()),
}


@pytest.mark.parametrize("phase", PHASES)
def test_driver_killed_then_rerun_completes_each_trial_once(phase, tmp_path, cluster):
    sections, moment = PHASES[phase]
    study = write_study(tmp_path, "killed", **sections)
    run_dir = tmp_path / "runs" / "killed"
    driver = start(study, cluster, tmp_path)
    wait_for(lambda: moment(run_dir), driver)
    interrupted = {stage: unfinished_with_checkpoint(run_dir, stage) for stage in ("pretrain", "eval")}
    kill_driver(driver)
    wait_until_released(cluster.address)
    before = rows(run_dir) if (run_dir / "trials.parquet").exists() else pd.DataFrame({"trial_id": [], "finished_at": []})

    output = run(study, cluster, tmp_path)
    assert "resuming" in output
    trials = len(sections["sweep"]["parameters"]["pretrain.mask.ratio"])
    epochs = sections.get("pretrain", {"epochs": EPOCHS})["epochs"]
    after = check_complete(run_dir, before, trials, epochs)
    if phase == "pretraining":  # the interrupted trial went on from its checkpoint
        assert (after.loc[sorted(interrupted["pretrain"]), "resumed_from_epoch"] >= 1).all()
    if phase == "evaluation":  # and an interrupted fine-tuning from its own
        assert "] resumed: fine-tuning goes on from its epoch " in output, output[-3000:]


def test_an_optuna_sweep_over_seeds_killed_mid_draw_resumes_each_draw_on_every_seed(tmp_path, cluster):
    """Killed after a draw's first seed: the rerun runs its second seed with the same parameters
    (Tune's searcher checkpoint keeps the draws), then the next draw, each trial once."""
    study = write_study(tmp_path, "draws", seeds=[0, 1], sweep={
        "method": "optuna", "num_samples": 2, "parameters": {"pretrain.mask.ratio": {"type": "float", "low": 0.5, "high": 0.95}}},
        resources={"workers_per_trial": 1, "cpus_per_worker": 1, "max_concurrent_trials": 1})
    run_dir = tmp_path / "runs" / "draws"
    driver = start(study, cluster, tmp_path)
    wait_for(lambda: (run_dir / "trials.parquet").exists(), driver)
    kill_driver(driver)
    wait_until_released(cluster.address)
    before = rows(run_dir)

    assert "resuming" in run(study, cluster, tmp_path)
    after = check_complete(run_dir, before, 4, EPOCHS)
    draws = after.groupby("pretrain.mask.ratio")
    assert draws.ngroups == 2 and all(sorted(d["seed"]) == [0, 1] for _, d in draws)
    told = optuna_told(study, run_dir / "tune", "pretrain.mask.ratio")
    assert told == pytest.approx(draws["eval_top1"].mean().to_dict())


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_ctrl_c_stops_the_study_and_the_same_command_resumes_it(tmp_path, cluster, stop):
    """Ctrl+C, or a job scheduler's SIGTERM (Slurm, Kubernetes, `timeout`), for which Ray's own
    handler printed a crash dump and the command exited 1 without counting what was left."""
    sections, _ = PHASES["pretraining"]
    study = write_study(tmp_path, "interrupted", **sections)
    run_dir = tmp_path / "runs" / "interrupted"
    driver = start(study, cluster, tmp_path)
    wait_for(lambda: unfinished_with_checkpoint(run_dir, "pretrain"), driver)
    interrupted = unfinished_with_checkpoint(run_dir, "pretrain")
    if stop == "ctrl-c":
        os.killpg(driver.pid, signal.SIGINT)  # what Ctrl+C in a terminal sends: to the whole group
    else:
        os.kill(driver.pid, signal.SIGTERM)  # to the command alone
    code, output = finish(driver)
    assert code == 130, output[-5000:]
    assert "interrupted: 2 trial(s) did not finish; run the same command again to resume" in output
    assert "0 trials finished, 0 failed; no results yet" in output and "report:" not in output  # nothing to report
    assert "Tuner.restore" not in output  # Tune's own resume advice, which a harness user cannot follow
    # A trial Ctrl+C stopped is not a row (it was once recorded as stopped early by ASHA, for good)
    assert not (run_dir / "trials.parquet").exists()
    assert status_table(run_dir).startswith("interrupted (cpu scale): 0 of 2 trials recorded\nno trial has finished")
    wait_until_released(cluster.address)

    cwd = tmp_path
    if stop == "sigterm":  # and the runs folder moved before the rerun: Tune's restored state named the old one
        cwd = tmp_path / "moved"
        cwd.mkdir()
        shutil.move(tmp_path / "runs", cwd / "runs")
        run_dir = cwd / "runs" / "interrupted"
    rerun = run(study, cluster, cwd)
    after = check_complete(run_dir, pd.DataFrame({"trial_id": [], "finished_at": []}), 2, 16)
    assert not (tmp_path / "runs").exists() or stop == "ctrl-c"  # no row written where the folder was
    assert "resuming" in rerun and (after.loc[sorted(interrupted), "resumed_from_epoch"] >= 1).all()
    assert "(2/2 done)" in rerun
    spent = pd.read_parquet(run_dir / "epochs.parquet").groupby("trial_id")["epoch_time_s"].sum()
    assert (after["pretrain_time_s"] >= spent.loc[after.index]).all()  # the epochs before the stop count too
    for epoch in after.loc[sorted(interrupted), "resumed_from_epoch"]:  # each trial says where it goes on from
        assert f"] resumed: pre-training goes on from its epoch {epoch} checkpoint" in rerun, rerun[-3000:]


def test_a_second_run_of_a_running_study_is_refused(tmp_path, cluster):
    """The same command in a second terminal ran every trial again over the first one's Tune
    state and checkpoints; it stops with one line. Once the first run ends, the folder is free."""
    sections, _ = PHASES["pretraining"]
    study = write_study(tmp_path, "twice", **sections)
    run_dir = tmp_path / "runs" / "twice"
    first = start(study, cluster, tmp_path)
    wait_for(lambda: unfinished_with_checkpoint(run_dir, "pretrain"), first)
    code, output = finish(start(study, cluster, tmp_path), timeout=120)
    assert code == 2, output[-3000:]
    assert output.strip().endswith(f"harness: {run_dir}: another harness run (pid {first.pid}) is running this "
                                   "study; wait for it to end, or give --runs another folder")
    code, output = finish(first)
    assert code == 0, output[-5000:]
    check_complete(run_dir, pd.DataFrame({"trial_id": [], "finished_at": []}), 2, 16)
    assert "nothing left to run" in run(study, cluster, tmp_path)  # the lock went with the first run
    assert len(rows(run_dir)) == 2


def test_driver_killed_while_replacing_the_results_file(tmp_path, cluster):
    """The driver dies between writing the new trials.parquet and renaming it over the old one."""
    study = write_study(tmp_path, "torn", sweep={"parameters": {"pretrain.mask.ratio": [0.75, 0.9]}},
                        resources={**MICRO["resources"], "max_concurrent_trials": 1})
    run_dir = tmp_path / "runs" / "torn"
    code, output = finish(start(study, cluster, tmp_path, env={FAULT_ENV: "kill-while-replacing:trials.parquet"}))
    assert code == -signal.SIGKILL, output[-3000:]
    assert list(run_dir.glob(".trials.parquet.*.partial"))  # the new file was written, not renamed
    before = rows(run_dir)  # the old file is whole
    assert len(before) == 1
    assert status_table(run_dir).startswith("torn (cpu scale): trials recorded 1 of 2")
    assert runs_table(run_dir.parent).split()[:4] == ["torn", "cpu", "1/2", "trials"]
    wait_until_released(cluster.address)

    run(study, cluster, tmp_path)
    check_complete(run_dir, before, 2, EPOCHS)
    assert not list(run_dir.glob(".*.partial"))


def parent(pid):
    """The parent pid from /proc (0 once the process is gone)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def cluster_workers(cluster, title=b"RayTrainWorker"):
    """(pid, node) of each Ray Train worker process of this cluster (or each process whose title
    has `title`), by the raylet it descends from."""
    raylets = {node.all_processes["raylet"][0].process.pid: node for node in cluster.list_all_nodes()}
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if title not in (entry / "cmdline").read_bytes():
                continue
        except OSError:
            continue
        pid = ancestor = int(entry.name)
        while ancestor > 1 and ancestor not in raylets:
            ancestor = parent(ancestor)
        if ancestor in raylets:
            found.append((pid, raylets[ancestor]))
    return found


@pytest.mark.parametrize("local_mode", [False, True])
def test_training_process_killed_mid_epoch_restarts_from_its_checkpoint(local_mode, tmp_path, cluster):
    """The Ray Train worker (restarted by Train), or the trial that runs its stages itself
    (restarted by Tune), is killed; either way pre-training goes on from its last checkpoint."""
    study = write_study(tmp_path, "worker", pretrain={"epochs": 16, "batch_size": 16},
                        resources={**MICRO["resources"], "local_mode": local_mode})
    run_dir = tmp_path / "runs" / "worker"
    title = b"ImplicitFunc" if local_mode else b"RayTrainWorker"  # a Tune function trial's actor
    driver = start(study, cluster, tmp_path)
    wait_for(lambda: unfinished_with_checkpoint(run_dir, "pretrain") and cluster_workers(cluster, title), driver)
    for pid, _ in cluster_workers(cluster, title):
        os.kill(pid, signal.SIGKILL)
    code, output = finish(driver)
    assert code == 0, output[-5000:]
    trial = check_complete(run_dir, rows(run_dir).iloc[:0], 1, 16).iloc[0]
    assert trial["resumed_from_epoch"] >= 1


def broken_manifest(folder, good=12):
    """A manifest of real mp4 clips, one of which is empty (0 bytes)."""
    folder.mkdir()
    params = SynthParams(size=32, frames=32, background="texture")
    lines = ["path,label,split"]
    for index in range(good):
        frames, _ = render_clip(params, "train", index)
        write_mp4(folder / f"clip{index}.mp4", frames)
        lines.append(f"clip{index}.mp4,0,train")
    (folder / "empty.mp4").write_bytes(b"")
    lines.append("empty.mp4,0,train")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder / "manifest.csv"


def test_a_trial_that_keeps_failing_is_recorded_as_failed_and_the_others_go_on(tmp_path, cluster):
    manifest = broken_manifest(tmp_path / "videos")
    study = write_study(tmp_path, "failing", pretrain={"epochs": 1, "batch_size": 13, "source": f"manifest:{manifest}"},
                        sweep={"parameters": {"on_error": ["raise", "skip"]}})
    run_dir = tmp_path / "runs" / "failing"
    code, output = finish(start(study, cluster, tmp_path))
    assert code == 1 and "FAILED" in output, output[-5000:]
    # Each failure is a line naming the file, the first with "running it once more"; no traceback
    assert "failed, running it once more: harness.sources.DataError: bad video" in output, output[-5000:]
    assert "empty.mp4: empty file (0 bytes)" in output and "Traceback" not in output, output[-5000:]
    trials = rows(run_dir).set_index("on_error")
    assert trials.loc["skip", "status"] == "ok" and trials.loc["skip", "skipped_videos"] == 1
    # The skipping trial names the file and why on the console, not only with --verbose
    assert "on_error=skip seed=0] skipped 1 bad video (on_error: skip): " in output, output[-5000:]
    assert "empty.mp4 (empty file (0 bytes))" in output.split("on_error=skip seed=0] skipped")[1].splitlines()[0]
    assert "1 of 2 trials skipped bad videos (up to 1 a trial" in status_table(run_dir)
    assert trials.loc["raise", "status"] == "failed" and "empty file (0 bytes)" in trials.loc["raise", "reason"]
    report = subprocess.run([sys.executable, "-m", "harness.cli", "report", str(run_dir), "--out", str(tmp_path / "reports")],
                            capture_output=True, text=True)
    page = (tmp_path / "reports" / "failing.md").read_text()
    assert report.returncode == 0 and "1 ok, 1 failed" in page and "**bad videos**: 1 of 2 trials skipped" in page
    assert "## Trials that did not finish" in page and "empty.mp4: empty file (0 bytes)" in page


def test_losing_the_node_of_a_worker_ends_in_a_completed_trial_after_at_most_one_rerun(tmp_path, cluster):
    cluster.add_node(num_cpus=1)  # three 1-CPU nodes: the two workers leave one node spare
    cluster.wait_for_nodes()
    study = write_study(tmp_path, "node", pretrain={"epochs": 16, "batch_size": 16},
                        resources={"workers_per_trial": 2, "cpus_per_worker": 1})
    run_dir = tmp_path / "runs" / "node"
    driver = start(study, cluster, tmp_path)
    wait_for(lambda: unfinished_with_checkpoint(run_dir, "pretrain") and len(cluster_workers(cluster)) == 2, driver)
    doomed = next(node for _, node in cluster_workers(cluster) if node is not cluster.head_node)
    cluster.remove_node(doomed, allow_graceful=False)
    code, output = finish(driver)
    if code != 0:  # a clear failure, which the rerun retries
        assert "FAILED" in output, output[-5000:]
        code, output = finish(start(study, cluster, tmp_path))
        assert code == 0, output[-5000:]
    trial = check_complete(run_dir, rows(run_dir).iloc[:0], 1, 16).iloc[0]
    assert trial["resumed_from_epoch"] >= 1
