"""`--storage s3://...`: Ray's checkpoints and trial state in a bucket (a local moto S3 server),
the rows in the local run folder; trials share a pre-training run through the bucket, the report's
gallery reads its checkpoint from there, and a rerun resumes from it; a stage run in the trial's
own process keeps its checkpoints there too."""
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs
import pytest

from conftest import write_study

pytestmark = pytest.mark.slow
OPTIONS = "scheme=http&allow_bucket_creation=true"


@pytest.fixture
def s3_endpoint(monkeypatch):
    from moto.server import ThreadedMotoServer

    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)  # the harness's local Ray (and its workers) inherit them
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def harness_run(study, tmp_path, storage):
    return subprocess.run([sys.executable, "-m", "harness.cli", "run", str(study), "--runs", str(tmp_path / "runs"),
                           *(["--storage", storage] if storage else [])],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)


def test_checkpoints_and_trial_state_on_s3_then_resume(tmp_path, s3_endpoint):
    storage = f"s3://harness/ray?endpoint_override={s3_endpoint}&{OPTIONS}"
    study = write_study(tmp_path, "ons3", sweep={"parameters": {"evaluate.source": ["synth:motion", "synth:appearance"]}})
    first = harness_run(study, tmp_path, storage)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    run_dir = tmp_path / "runs" / "ons3"
    folder = json.loads((run_dir / "storage.json").read_text())["folder"]  # this run's own, ons3-<time>-<id>
    assert folder.startswith("ons3-") and f"checkpoints and trial state: s3://harness/ray/{folder}\n" in first.stdout
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert len(trials) == 2 and (trials["status"] == "ok").all()
    shared = trials["pretrain_shared_from"].dropna()  # one pre-training run, found through the bucket
    assert len(shared) == 1 and shared.iloc[0] in set(trials["pretrain_run"]) - {None}
    assert not (run_dir / "train").exists() and not (run_dir / "tune").exists()

    bucket, root = pafs.FileSystem.from_uri(storage)
    stored = [info.path.removeprefix(f"{root}/{folder}/") for info in
              bucket.get_file_info(pafs.FileSelector(f"{root}/{folder}", recursive=True))]
    owner = trials["pretrain_run"][trials["pretrain_shared_from"].isna()].iloc[0]
    assert any(p.startswith(f"train/{owner}/checkpoint_") for p in stored)
    assert sum(p.startswith("train/pretrained/") for p in stored) == 1
    assert {f"train/{t}.summary.json" for t in trials["trial_id"]} <= set(stored)
    assert any(p.startswith("tune/") for p in stored)

    report = subprocess.run([sys.executable, "-m", "harness.cli", "report", str(run_dir), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (tmp_path / "out" / "ons3_gallery.png").stat().st_size > 1000  # drawn from the bucket's checkpoint

    # A row lost (as when the driver dies between a trial's end and its write): the rerun reads the
    # Tune state back from the bucket and writes the row from the trial's result, running nothing
    trials.iloc[:1].to_parquet(run_dir / "trials.parquet", index=False)
    again = harness_run(study, tmp_path, storage)
    assert again.returncode == 0 and f"resuming s3://harness/ray/{folder}/tune" in again.stdout, again.stdout[-4000:]
    assert "] started" not in again.stdout, again.stdout[-4000:]
    restored = pd.read_parquet(run_dir / "trials.parquet")
    assert restored["trial_id"].tolist() == trials["trial_id"].tolist()
    assert restored["eval_top1"].tolist() == trials["eval_top1"].tolist()
    # Without --storage the rerun resumes from where the run started, not from an empty run folder
    trials.iloc[:1].to_parquet(run_dir / "trials.parquet", index=False)
    forgotten = harness_run(study, tmp_path, None)
    assert forgotten.returncode == 0 and f"resuming s3://harness/ray/{folder}/tune" in forgotten.stdout, forgotten.stderr
    assert pd.read_parquet(run_dir / "trials.parquet")["trial_id"].tolist() == trials["trial_id"].tolist()
    elsewhere = harness_run(study, tmp_path, str(tmp_path / "elsewhere"))  # would run every trial again
    assert elsewhere.returncode == 2 and not (tmp_path / "elsewhere").exists()
    assert f"keeps its checkpoints and trial state in s3://harness/ray?endpoint_override={s3_endpoint}" in elsewhere.stderr


def test_storage_that_cannot_be_written_is_refused_before_any_trial(tmp_path, s3_endpoint):
    storage = f"s3://no-such-bucket/ray?endpoint_override={s3_endpoint}&scheme=http"  # no bucket creation
    study = write_study(tmp_path, "refused", pretrain={"epochs": 1, "batch_size": 16, "warmup_epochs": 0})  # no note
    done = harness_run(study, tmp_path, storage)
    assert done.returncode == 2 and not (tmp_path / "runs").exists(), done.stdout + done.stderr
    message = done.stderr.strip().splitlines()
    assert len(message) == 1 and re.search(r"--storage s3://no-such-bucket/ray/refused-[\d-]+-\w{4}: cannot write there",
                                           message[0]), message


def test_two_runs_of_a_study_in_one_storage_keep_apart(tmp_path):
    """A second run folder, or a --restart, given the storage of an earlier run of the same study
    runs its own trials: it used to resume the other's Tune state (its rows copied in, under this
    run's settings) or reuse its pre-training. The same storage written another way is the same;
    a relative one is kept absolute; a run set aside by --restart keeps its gallery."""
    study = write_study(tmp_path, "apart", sweep={"parameters": {"evaluate.source": ["synth:motion", "synth:appearance"]}})
    first = harness_run(study, tmp_path, "store")
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    record = json.loads((tmp_path / "runs" / "apart" / "storage.json").read_text())
    assert record["location"] == str(tmp_path / "store")  # relative, taken from where the command ran
    other = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(study), "--runs", str(tmp_path / "runs2"),
                            "--storage", f"file://{tmp_path}//store/"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=900)
    assert other.returncode == 0 and "resuming" not in other.stdout, other.stdout[-4000:] + other.stderr[-4000:]
    assert other.stdout.count("] started") == 2 and "pretrain epoch" in other.stdout
    ours, theirs = (pd.read_parquet(tmp_path / runs / "apart" / "trials.parquet") for runs in ("runs", "runs2"))
    assert not set(ours["trial_id"]) & set(theirs["trial_id"])
    assert not set(theirs["pretrain_shared_from"].dropna()) & set(ours["pretrain_run"])  # pre-trained anew
    assert len(list((tmp_path / "store").iterdir())) == 2

    same = harness_run(study, tmp_path, f"{tmp_path}/store/")  # the first run's storage, spelt otherwise
    assert same.returncode == 0 and "nothing left to run" in same.stdout, same.stderr
    restarted = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(study), "--runs", str(tmp_path / "runs"),
                                "--storage", "store", "--restart"], cwd=tmp_path, capture_output=True, text=True,
                               timeout=900)
    assert restarted.returncode == 0 and "pretrain epoch" in restarted.stdout, restarted.stdout[-4000:]
    again = pd.read_parquet(tmp_path / "runs" / "apart" / "trials.parquet")
    assert not set(again["pretrain_shared_from"].dropna()) & set(ours["pretrain_run"])
    aside = next(p for p in (tmp_path / "runs").iterdir() if p.name.startswith("apart."))
    report = subprocess.run([sys.executable, "-m", "harness.cli", "report", str(aside), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0 and (tmp_path / "out" / f"{aside.name}_gallery.png").exists(), report.stdout


@pytest.mark.filterwarnings("ignore:`report` is meant to only be called")  # Tune's, outside a trial here
@pytest.mark.parametrize("where", ["folder", "s3"])
def test_a_stage_run_in_the_trial_keeps_its_newest_checkpoint_and_resumes_from_it(where, tmp_path, request, capfd):
    """With one worker per trial the stages run in the trial's process: each epoch's checkpoint
    goes to the study's storage, one kept (named by latest.json), and a new run resumes from it."""
    from harness.pretrain import pretrain
    from harness.storage import Storage
    from harness.study import Experiment
    from harness.worker import LATEST_FILE, LocalRunSession

    location = (str(tmp_path / "store") if where == "folder" else
                f"s3://harness/stage?endpoint_override={request.getfixturevalue('s3_endpoint')}&{OPTIONS}")
    storage = Storage.at(location, "study")
    class StoppedAfterTwoEpochs(LocalRunSession):  # as a killed trial's process
        def report(self, metrics, checkpoint_dir=None):
            super().report(metrics, checkpoint_dir)
            if metrics["epoch"] == 2:
                raise KeyboardInterrupt

    experiment = Experiment.model_validate({"synth": {"train_clips": 32, "val_clips": 16},
                                            "model": {"preset": "tiny", "overrides": {"depth": 2}},
                                            "pretrain": {"epochs": 3, "batch_size": 16}})
    first = StoppedAfterTwoEpochs(storage, "t1-pretrain")
    with pytest.raises(KeyboardInterrupt):
        pretrain(experiment, 0, first)
    assert storage.read_json("train", "t1-pretrain", LATEST_FILE) == {"index": 2, "checkpoint": "checkpoint_000002"}
    kept = storage.filesystem.get_file_info(pafs.FileSelector(storage.path("train", "t1-pretrain")))
    assert sorted(info.base_name for info in kept) == ["checkpoint_000002", LATEST_FILE]
    assert first.checkpoint.path == storage.path("train", "t1-pretrain", "checkpoint_000002")
    assert first.metrics["epoch"] == 2 and first.metrics["resumed_from_epoch"] == 0

    resumed = LocalRunSession(storage, "t1-pretrain")  # as a restarted trial makes it
    pretrain(experiment, 0, resumed)
    assert resumed.metrics["resumed_from_epoch"] == 2 and resumed.metrics["epoch"] == 3
    assert resumed.metrics["loss_curve"][:2] == first.metrics["loss_curve"]
    assert storage.read_json("train", "t1-pretrain", LATEST_FILE)["checkpoint"] == "checkpoint_000003"
    if where == "folder":  # cut short since (a full disk): the stage starts over, where it failed every rerun
        cut = Path(storage.path("train", "t1-pretrain", "checkpoint_000003", "checkpoint.pt"))
        cut.write_bytes(cut.read_bytes()[:1000])
        capfd.readouterr()
        again = LocalRunSession(storage, "t1-pretrain")
        pretrain(experiment, 0, again)
        assert again.metrics["resumed_from_epoch"] == 0 and again.metrics["epoch"] == 3
        assert "the stage's last checkpoint cannot be read" in capfd.readouterr().err
