import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.cli import main
from harness.study import StudyError
from harness.study_file import load_study
from harness.study_notes import study_notes
from harness.recorder import shown_epoch, shown_value, trial_phase
from harness.sweep import resource_plan, trial_points
from harness.trial import pretrain_key, shares_pretraining

from conftest import REPO

MASK_RATIO = REPO / "studies" / "mask_ratio.yaml"


def test_the_shipped_study_loads_at_its_scales():
    cpu = load_study(MASK_RATIO)
    smoke = load_study(MASK_RATIO, "smoke")
    assert cpu.scale == "cpu" and smoke.scale == "smoke"
    ratios = [point["pretrain.mask.ratio"] for point in cpu.sweep.points if "pretrain.mask.ratio" in point]
    assert min(ratios) <= 0.5 and max(ratios) >= 0.95 and {"pretrain.method": "scratch"} in cpu.sweep.points
    assert len(trial_points(smoke)) == 3 and smoke.pretrain.epochs < cpu.pretrain.epochs
    assert smoke.experiment({"pretrain.mask.ratio": 0.5}).pretrain.mask.ratio == 0.5


BASE = """
name: t
pretrain: {source: "synth:motion", epochs: 1}
sweep: {parameters: {pretrain.mask.ratio: [0.5, 0.9]}}
"""

BAD_STUDIES = sorted((REPO / "tests" / "bad_studies").glob("*.yaml"))  # first line: "# expect: <message>"


@pytest.mark.parametrize("path", BAD_STUDIES, ids=[p.stem for p in BAD_STUDIES])
def test_bad_study_files_name_file_and_field(path):
    message = path.read_text().splitlines()[0].removeprefix("# expect: ")
    with pytest.raises(StudyError) as error:
        load_study(path)
    line = str(error.value)
    assert line.startswith(f"{path}: ") and message in line and "\n" not in line


def test_the_bad_study_corpus_is_large():
    assert len(BAD_STUDIES) >= 25


def test_bad_study_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.yaml"
    path.write_text(BASE.replace("epochs: 1}", "epochs: 1, mask: {ratio: 1.2}}"))
    assert main(["run", str(path), "--scale", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pretrain.mask.ratio" in err and str(path) in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("path", sorted((REPO / "studies").glob("*.yaml")), ids=lambda p: p.stem)
def test_the_shipped_studies_set_nothing_their_trials_ignore(path):
    for scale in ("cpu", "smoke", "paper"):
        assert study_notes(path, scale) == []


def test_settings_no_trial_reads_and_a_warmup_longer_than_training_are_noted(tmp_path, capsys):
    path = tmp_path / "notes.yaml"
    path.write_text("""
name: t
pretrain: {source: "synth:motion", epochs: 1, mask: {ratio: 0.75}}
evaluate: {protocol: finetune, epochs: 5, knn_k: 3, finetune: {epochs: 2, warmup_epochs: 4}}
sweep: {points: [{pretrain.method: scratch}]}
scales:
  smoke: {evaluate.protocol: knn, evaluate.features: mean, evaluate.finetune.lr: 1.0e-4}
""")
    assert study_notes(path) == [
        f"{path}: evaluate.epochs: set, but no trial reads it: evaluate.protocol finetune never uses it; "
        "fine-tuning reads evaluate.finetune.epochs",
        f"{path}: evaluate.knn_k: set, but no trial reads it: evaluate.protocol finetune never uses it",
        f"{path}: pretrain.epochs: set, but no trial reads it: no trial pre-trains (pretrain.method scratch)",
        f"{path}: pretrain.mask.ratio: set, but no trial reads it: no trial pre-trains (pretrain.method scratch)",
        f"{path}: pretrain.source: set, but no trial reads it: no trial pre-trains (pretrain.method scratch)",
        f"{path}: evaluate.finetune.warmup_epochs: 4 warm-up epochs in 2 of training: the learning rate never "
        "reaches evaluate.finetune.lr"]
    # At a scale that turns the protocol to knn, the top level's fine-tuning recipe is the cpu scale's
    # business; what the scale itself sets and its trials ignore is still noted.
    assert [note.split(": ")[1] for note in study_notes(path, "smoke")] == [
        "evaluate.epochs", "evaluate.finetune.lr", "pretrain.epochs", "pretrain.mask.ratio", "pretrain.source"]
    path.write_text(BASE.replace("epochs: 1}", "epochs: 1}\nevaluate: {protocol: knn, knn_k: 5}")
                    .replace("pretrain.mask.ratio: [0.5, 0.9]", "evaluate.protocol: [knn, linear]"))
    assert study_notes(path) == [f"{path}: pretrain.warmup_epochs: 2 (the default) warm-up epochs in 1 of training: "
                                 "the learning rate never reaches pretrain.lr"]  # knn_k: the knn trials read it
    assert main(["run", str(path), "--dry-run"]) == 0
    assert capsys.readouterr().err == f"note: {study_notes(path)[0]}\n"
    path.write_text(path.read_text().replace("epochs: 1}", "epochs: 1, warmup_epochs: 0}")
                    + "resources: {cpus_per_worker: 2, loader_workers: 2}\n")
    assert study_notes(path) == [f"{path}: resources.loader_workers: 2 loader processes beside each worker of 2 CPU(s): "
                                 "they and the training share those CPUs (auto: cpus_per_worker - 1 on GPUs)"]


def test_the_paper_scales_fine_tune_on_every_labelled_clip():
    """The cpu scale's `evaluate.train_clips: 500` is its kNN's label budget: the paper scales, which
    fine-tune as the paper does, took it over and would have fine-tuned SSV2 on 500 clips."""
    for path in sorted((REPO / "studies").glob("*.yaml")):
        study = load_study(path, "paper", check_paths=False)
        for point in study.sweep.grid_points() if study.sweep.method == "grid" else [{}]:
            if "evaluate.train_clips" not in point:  # data_efficiency's points ask for their subsets
                assert study.experiment(point).evaluate.train_clips is None, (path.name, point)
            # a test pass takes every view of its videos: 64 x 6 ViT-B clips a GPU was the default
            evaluate = study.experiment(point).evaluate
            assert evaluate.batch_size * evaluate.test_clips * evaluate.test_crops <= 120, (path.name, point)


def test_only_the_batches_a_trial_runs_must_split_over_its_workers(tmp_path):
    """A kNN study over 3 workers was refused for fine-tuning's default batch of 16, which it never uses."""
    path = tmp_path / "three.yaml"
    path.write_text(BASE.replace("epochs: 1}", "epochs: 1, batch_size: 12}\nevaluate: {protocol: knn}\n"
                                 "resources: {workers_per_trial: 3}"))
    assert load_study(path).resources.workers_per_trial == 3
    path.write_text(path.read_text().replace("protocol: knn", "protocol: finetune"))
    with pytest.raises(StudyError, match="evaluate.finetune.batch_size: a batch of 16 does not split evenly"):
        load_study(path)
    path.write_text("name: t\npretrain: {method: scratch}\nevaluate: {protocol: finetune, finetune: {batch_size: 12}}\n"
                    "resources: {workers_per_trial: 3}\n")
    assert load_study(path).pretrain.batch_size == 32  # pre-training's: no trial runs it


def test_undefined_scale_is_an_error(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(BASE)
    with pytest.raises(StudyError, match="scales.smoke: this study does not define"):
        load_study(path, "smoke")


def test_dry_run_lists_trials(capsys):
    assert main(["run", str(MASK_RATIO), "--scale", "smoke", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "3 trials" in out and '"pretrain.mask.ratio": 0.75' in out
    # what each mask runs as: tiny frames hold 16 patches, and a tube covers int(16 x ratio) of them
    assert "mask tube 0.75: 96 of 128 tokens (0.75)" in out and "mask tube 0.9: 112 of 128 tokens (0.875)" in out


def test_output_piped_into_head_ends_quietly():
    """`harness run STUDY --dry-run | head -1` printed a BrokenPipeError traceback."""
    piped = subprocess.run(f"{shlex.quote(sys.executable)} -m harness.cli run {shlex.quote(str(MASK_RATIO))} "
                           "--scale smoke --dry-run | head -c 10", shell=True, capture_output=True, text=True,
                           cwd=REPO, executable="/bin/bash")
    assert piped.stdout == "study mask" and piped.stderr == ""


def test_dry_run_plans_a_cluster_study_whose_data_is_not_on_this_machine(capsys):
    """The paper scale names /data/k400 and /data/ssv2: a dry run here lists the trials and the
    sources they read, and notes the missing paths; a real run here refuses before starting."""
    if Path("/data/k400").exists():
        pytest.skip("this machine has /data/k400")
    study = REPO / "studies" / "domain_shift.yaml"
    assert main(["run", str(study), "--scale", "paper", "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert "18 trials" in captured.out
    assert "pre-train 800 | 4600 epochs on kinetics:/data/k400 | ssv2:/data/ssv2," in captured.out
    assert "evaluate (finetune) on ssv2:/data/ssv2 | kinetics:/data/k400" in captured.out
    assert "note: sweep.points: pretrain.source: data path /data/k400 does not exist on this machine" in captured.err
    assert main(["run", str(study), "--scale", "paper"]) == 2
    assert "pretrain.source: data path /data/k400 does not exist" in capsys.readouterr().err
    # data_efficiency's paper scale gives its subsets their own epochs, and the plan says so
    assert main(["run", str(REPO / "studies" / "data_efficiency.yaml"), "--scale", "paper", "--dry-run"]) == 0
    assert "18 trials" in (out := capsys.readouterr().out) and "pre-train 4800 | 3200 | 800 epochs on ssv2:" in out
    # Each target is tested as the VideoMAE code tests it: SSV2 on 2 x 3 segments, K400 on 5 x 3 windows at 4
    paper = load_study(study, "paper", check_paths=False)
    targets = {(e.evaluate.source, e.evaluate.sampling, e.evaluate.test_clips, e.evaluate.test_crops,
                e.evaluate.window_stride(e.pretrain) if e.evaluate.sampling == "window" else None)
               for e in map(paper.experiment, paper.sweep.grid_points())}
    assert targets == {("ssv2:/data/ssv2", "segment", 2, 3, None), ("kinetics:/data/k400", "window", 5, 3, 4)}


def test_a_cluster_address_nothing_answers_at_stops_at_once(tmp_path, capsys, monkeypatch):
    """Ray retries an unreachable cluster for ever; the harness stops with one line, exit 2,
    before it makes any data or starts Ray."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"
    command = ["run", str(MASK_RATIO), "--scale", "smoke", "--runs", str(tmp_path / "runs")]
    cases = [(["--address", closed], f"--address {closed}: no Ray cluster answers there (Connection refused)"),
             (["--address", "http://head:8265"], "that is the dashboard's (jobs) address"),
             (["--address", "head"], "--address head: expected host:port")]
    for options, message in cases:
        started = time.monotonic()
        assert main(command + options) == 2
        assert message in capsys.readouterr().err and time.monotonic() - started < 5
    from ray._private.services import find_gcs_addresses
    if not find_gcs_addresses():  # no Ray on this machine (the tests' own clusters are gone by now)
        started = time.monotonic()
        assert main(command + ["--address", "auto"]) == 2  # once failed after the data was made
        assert ("--address auto: no Ray is running on this machine (`ray start --head` starts one"
                in capsys.readouterr().err) and time.monotonic() - started < 5
    monkeypatch.setenv("RAY_ADDRESS", closed)
    assert main(command) == 2
    assert f"RAY_ADDRESS={closed}: no Ray cluster answers there" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "mask_ratio").exists()


def test_the_console_shows_every_epoch_of_short_stages_and_about_twenty_of_long_ones():
    assert all(shown_epoch(epoch, 30) for epoch in range(1, 31))
    paper = [epoch for epoch in range(1, 801) if shown_epoch(epoch, 800)]
    assert paper[:3] == [1, 40, 80] and paper[-1] == 800 and len(paper) == 21
    assert [epoch for epoch in range(1, 52) if shown_epoch(epoch, 51)] == [1, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30,
                                                                            33, 36, 39, 42, 45, 48, 51]
    from harness.recorder import _rate
    assert [_rate(rate) for rate in (0.153, 3.46, 45.6)] == ["0.15", "3.5", "46"]  # a ViT-B on a CPU was "0 clips/s"


def test_progress_lines_show_long_paths_by_their_last_parts():
    snapshot = "/home/me/.cache/huggingface/hub/models--MCG-NJU--videomae-base/snapshots/" + "0" * 40
    assert shown_value(snapshot) == "MCG-NJU/videomae-base"
    assert shown_value("/data/checkpoints/kinetics_800_epochs/checkpoint-799.pth") == "…/kinetics_800_epochs/checkpoint-799.pth"
    assert shown_value("runs/a/checkpoint.pth") == "runs/a/checkpoint.pth"  # short: as it is
    assert shown_value(0.123456) == "0.1235" and shown_value("tube") == "tube" and shown_value(None) == "None"


def test_the_progress_table_names_the_silent_work_after_a_stages_last_epoch():
    study = load_study(MASK_RATIO, "smoke")
    knn, scratch = study.experiment(), study.experiment({"pretrain.method": "scratch"})
    finetune = study.experiment({"evaluate.protocol": "finetune"})
    pretrain = {"stage": "pretrain", "epoch": 3, "total_epochs": 10}
    assert trial_phase({}, knn) == "starting" and trial_phase(pretrain, knn) == "pretrain epoch 3/10"
    assert trial_phase({**pretrain, "epoch": 10}, knn) == f"evaluating ({knn.evaluate.protocol})"
    assert trial_phase({**pretrain, "epoch": 10}, finetune) == "fine-tuning: starting"
    assert trial_phase({"stage": "finetune", "epoch": 50, "total_epochs": 50}, finetune) == "testing"
    assert trial_phase({}, scratch) == f"evaluating ({knn.evaluate.protocol})"
    # The evaluation's own report (a diverged fine-tuning's names its epoch, of no total) before the row
    assert trial_phase({"stage": "eval", "diverged": True, "epoch": 3}, finetune) == "finishing"


def test_resource_plan_fits_trials_to_the_cluster(tmp_path):
    study = load_study(MASK_RATIO, "smoke")
    assert resource_plan(study, {"CPU": 2})["concurrent_trials"] == 2
    assert resource_plan(study, {"CPU": 16})["concurrent_trials"] == 16
    gpu = study.model_copy(update={"resources": study.resources.model_copy(update={"gpus_per_worker": 1})})
    with pytest.raises(StudyError, match="needs 1 GPU, the cluster has 0"):
        resource_plan(gpu, {"CPU": 2})
    # A worker fits on no single node: Ray would have waited for one for ever, the run showing
    # "0 running, 1 waiting"; the paper scale's 8 CPUs a GPU on nodes of 4 CPUs a GPU likewise.
    wide = study.model_copy(update={"resources": study.resources.model_copy(update={"cpus_per_worker": 2})})
    with pytest.raises(StudyError, match=r"resources.cpus_per_worker: a worker needs 2 CPUs on one node, and no node "
                                         r"has that \(nodes: 1 CPU\)"):
        resource_plan(wide, {"CPU": 2}, nodes=[{"CPU": 1}, {"CPU": 1}])
    assert resource_plan(wide, {"CPU": 3}, nodes=[{"CPU": 1}, {"CPU": 2}])["concurrent_trials"] == 1
    paper = load_study(MASK_RATIO, "paper", check_paths=False)
    gpu_nodes = [{"CPU": 4, "GPU": 1}] * 8
    with pytest.raises(StudyError, match=r"needs 8 CPUs and 1 GPU on one node, and no node has that "
                                         r"\(nodes: 4 CPU and 1 GPU\)"):
        resource_plan(paper, {"CPU": 32, "GPU": 8} | {"CPU": 64}, nodes=gpu_nodes)
    with pytest.raises(StudyError, match="resources.gpus_per_worker: a worker needs 8 CPUs and 1 GPU"):
        resource_plan(paper, {"CPU": 64, "GPU": 8}, nodes=[{"CPU": 64}, {"CPU": 8, "GPU": 0.5}] * 8)
    # Loader processes beside each worker: on GPUs every CPU but the worker's own, on CPUs none.
    assert study.resources.loader_processes() == 0
    assert load_study(MASK_RATIO, "paper", check_paths=False).resources.loader_processes() == 7  # 8 CPUs, 1 GPU
    assert gpu.resources.model_copy(update={"loader_workers": 0}).loader_processes() == 0


def test_points_cross_the_grid_and_seeds(tmp_path):
    path = tmp_path / "points.yaml"
    path.write_text("""
name: p
seeds: [0, 1]
sweep:
  points: [{pretrain.method: scratch}, {pretrain.clips: 100}, {pretrain.clips: 200}]
  parameters: {evaluate.source: ['synth:motion', 'synth:appearance']}
""")
    study = load_study(path)
    points = trial_points(study)
    assert len(points) == 3 * 2 * 2
    assert points[0] == {"pretrain.method": "scratch", "evaluate.source": "synth:motion", "seed": 0}
    assert study.sweep.swept_names() == ["evaluate.source", "pretrain.method", "pretrain.clips"]
    from harness.study_file import data_sources
    assert {read.source for read in data_sources(study)} == {"synth:motion", "synth:appearance"}


def test_grid_neighbours_do_not_share_a_pre_training():
    """Tune starts a grid's points in order, two at a time here: domain_shift evaluates each encoder
    on two targets, and neighbours sharing one pre-training would make it one at a time."""
    study = load_study(REPO / "studies" / "domain_shift.yaml", "cpu")
    keys = [pretrain_key(study.experiment(point), 0) for point in study.sweep.grid_points()]
    assert len(set(keys)) < len(keys)  # some points do share one
    assert all(first != second for first, second in zip(keys, keys[1:]))


def test_the_lease_actor_runs_only_for_studies_whose_trials_can_share_a_pre_training():
    """Seeds and mask ratios make distinct encoders; domain_shift evaluates each on two targets;
    an Optuna sweep may draw any point twice."""
    def shared(name: str, scale: str = "cpu") -> bool:
        study = load_study(REPO / "studies" / f"{name}.yaml", scale)
        return shares_pretraining(study, trial_points(study))
    assert not shared("mask_ratio") and not shared("masking")
    assert shared("domain_shift") and shared("joint_optuna")


def test_data_paths_are_read_from_the_study_files_folder(tmp_path, monkeypatch):
    """Relative paths (and ?root=) are taken from the study file's folder, whatever the shell's
    working folder, and stored absolute: the trials run in Ray workers with folders of their own."""
    (tmp_path / "studies").mkdir()
    (tmp_path / "data" / "ucf").mkdir(parents=True)
    (tmp_path / "data" / "lists").mkdir()
    path = tmp_path / "studies" / "s.yaml"
    path.write_text("name: s\npretrain: {source: 'folder:../data/ucf'}\n"
                    "evaluate: {source: 'list:../data/lists?root=../data/ucf'}\n"
                    "sweep: {parameters: {evaluate.source: ['synth:motion', 'manifest:~/m.csv', 'folder:/srv/x']}}\n")
    monkeypatch.chdir(tmp_path / "data")
    study = load_study(path, check_paths=False)
    assert study.pretrain.source == f"folder:{tmp_path / 'data' / 'ucf'}"
    assert study.evaluate.source == f"list:{tmp_path / 'data' / 'lists'}?root={tmp_path / 'data' / 'ucf'}"
    assert study.sweep.parameters["evaluate.source"] == ["synth:motion", f"manifest:{Path.home() / 'm.csv'}",
                                                         "folder:/srv/x"]


def test_an_optuna_draw_runs_on_every_seed_and_optuna_sees_their_mean_across_a_resume(tmp_path):
    """Two seeds: a draw's trials share its parameters and take seeds 0 and 1; the searcher's
    state, saved between them (as Tune does before a resume), keeps which trials make a draw."""
    from ray.tune.search import SearchGenerator

    from harness.sweep import param_space, search_algorithm

    path = tmp_path / "o.yaml"
    path.write_text("""
name: o
seeds: [0, 1]
sweep:
  method: optuna
  num_samples: 2
  parameters: {pretrain.mask.ratio: {type: float, low: 0.5, high: 0.95}, pretrain.loss: [mse, l1]}
""")
    study = load_study(path)
    assert study.trial_count() == 4

    def searcher():
        made = search_algorithm(study)
        made.set_search_properties(None, None, param_space(study))
        return made

    first = SearchGenerator(searcher())
    a = first.searcher.suggest("a")
    first.save_to_dir(str(tmp_path), "before")  # as Tune saves it; a resumed run restores it
    restored = SearchGenerator(searcher())
    restored.restore_from_dir(str(tmp_path))
    resumed = restored.searcher
    b, c = resumed.suggest("b"), resumed.suggest("c")
    assert (a["seed"], b["seed"], c["seed"]) == (0, 1, 0)
    assert {k: v for k, v in a.items() if k != "seed"} == {k: v for k, v in b.items() if k != "seed"}
    assert c["pretrain.mask.ratio"] != a["pretrain.mask.ratio"]
    resumed.on_trial_complete("a", {"eval_top1": 0.2})
    resumed.on_trial_complete("b", {"eval_top1": 0.4})
    told = resumed.searcher._ot_study.trials  # Optuna's own record of the draws
    assert told[0].value == pytest.approx(0.3) and told[0].params["pretrain.loss"] == a["pretrain.loss"]
    assert told[1].value is None  # c's draw: one of its two seeds has not run


def test_a_study_file_that_is_not_there_names_the_folder_it_was_read_from(tmp_path, capsys, monkeypatch):
    """A Ray Job without --working-dir runs in the head's folder, where studies/x.yaml is not."""
    monkeypatch.chdir(tmp_path)
    assert main(["run", "studies/mask_ratio.yaml", "--dry-run"]) == 2
    assert capsys.readouterr().err == (f"harness: studies/mask_ratio.yaml: cannot read: No such file or directory "
                                       f"(read from {tmp_path})\n")
    (tmp_path / "binary.yaml").write_bytes(b"name: \xff\xfe\n")  # a file of another kind, given by mistake
    assert main(["run", "binary.yaml", "--dry-run"]) == 2
    assert capsys.readouterr().err == "harness: binary.yaml: not a text file in UTF-8 (byte 6): a study file is YAML text\n"


def test_a_resumed_trial_whose_pretraining_had_finished_shows_no_epoch_as_if_run_again(tmp_path, capsys):
    from harness.recorder import TrialRecorder

    class Trial:  # what the recorder reads of Tune's trial
        trial_id, config = "t1", {"point": {"pretrain.mask.ratio": 0.9}, "seed": 0}

    recorder = TrialRecorder(load_study(MASK_RATIO, "smoke"), tmp_path, total=3, recorded=2)
    report = {"stage": "pretrain", "total_epochs": 8, "loss": 1.07, "clips_per_s": 50.0}
    recorder.on_trial_result(0, [], Trial, {**report, "epoch": 8, "resumed_from_epoch": 8})
    assert capsys.readouterr().out == "  [ratio=0.9 seed=0] resumed: its pre-training had finished\n"
    recorder.on_trial_result(0, [], Trial, {**report, "epoch": 8, "resumed_from_epoch": 0})  # ran in this session
    assert capsys.readouterr().out == "  [ratio=0.9 seed=0] pretrain epoch 8/8 loss 1.0700 (50 clips/s)\n"


def test_a_failed_trials_reason_is_its_exception_not_the_last_line_of_a_long_message(tmp_path):
    """A pydantic error in a trial printed "failed, running it once more: For further information
    visit https://errors.pydantic.dev/...", its message's last line."""
    from harness.recorder import failure_reason
    from harness.study import Experiment

    try:
        Experiment.model_validate({"pretrain": {"method": "pretrained"}})
    except ValueError:
        import traceback
        error_file = tmp_path / "error.txt"
        error_file.write_text("Failure # 1 (occurred at 2026-12-06_13-00-00)\n" + traceback.format_exc())
    reason = failure_reason(error_file)
    assert reason.startswith("pydantic_core._pydantic_core.ValidationError: 1 validation error for Experiment")
    assert "set pretrain.init to a checkpoint" in reason and "errors.pydantic.dev" not in reason
    error_file.write_text("Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: boom\n")
    assert failure_reason(error_file) == "ValueError: boom"
    assert failure_reason(tmp_path / "gone.txt") == "no traceback kept; see the Ray logs"


def test_a_dry_run_names_every_protocol_the_trials_evaluate_with(tmp_path, capsys):
    path = tmp_path / "protocols.yaml"
    path.write_text(BASE.replace("epochs: 1}", "epochs: 1, warmup_epochs: 0}\nevaluate: {protocol: knn}")
                    .replace("sweep: {parameters: {pretrain.mask.ratio: [0.5, 0.9]}}",
                             "sweep: {points: [{evaluate.protocol: linear}, {}]}"))
    assert main(["run", str(path), "--dry-run"]) == 0
    assert "evaluate (linear | knn) on synth:motion" in capsys.readouterr().out


def test_early_stopping_evaluates_a_trial_at_its_last_epoch_and_keeps_its_rungs_over_a_resume(tmp_path):
    """ASHA with stop_last_trials=False still stopped a trial whose last epoch was a rung (2 epochs,
    grace 2), throwing its finished pre-training away; and Tune saves no scheduler state, so a
    resumed run judged its trials against empty rungs."""
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from harness.sweep import EarlyStopping

    def result(epoch, total, loss):
        return {"stage": "pretrain", "epoch": epoch, "total_epochs": total, "pretrain_epoch": epoch,
                "pretrain_loss": loss}

    asha = {"time_attr": "pretrain_epoch", "metric": "pretrain_loss", "mode": "min", "reduction_factor": 2,
            "stop_last_trials": False}
    last = EarlyStopping(None, max_t=2, grace_period=2, **asha)
    for name, loss in (("good", 0.5), ("worse", 0.9)):
        trial = SimpleNamespace(trial_id=name)
        last.on_trial_add(None, trial)
        assert last.on_trial_result(None, trial, result(2, 2, loss)) == TrialScheduler.CONTINUE
    rungs = tmp_path / "rungs.pkl"
    first = EarlyStopping(rungs, max_t=4, grace_period=1, **asha)
    good, worse = SimpleNamespace(trial_id="good"), SimpleNamespace(trial_id="worse")
    for trial in (good, worse):
        first.on_trial_add(None, trial)
    assert first.on_trial_result(None, good, result(1, 4, 0.5)) == TrialScheduler.CONTINUE
    assert first.on_trial_result(None, worse, result(1, 4, 0.9)) == TrialScheduler.STOP
    resumed, later = EarlyStopping(rungs, max_t=4, grace_period=1, **asha), SimpleNamespace(trial_id="later")
    resumed.on_trial_add(None, later)
    assert resumed.on_trial_result(None, later, result(1, 4, 0.95)) == TrialScheduler.STOP  # against "good"'s 0.5
    fresh = EarlyStopping(None, max_t=4, grace_period=1, **asha)
    fresh.on_trial_add(None, later)
    assert fresh.on_trial_result(None, later, result(1, 4, 0.95)) == TrialScheduler.CONTINUE


def test_sweep_settings_that_do_nothing_or_likely_the_opposite_are_noted(tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text("name: t\npretrain: {epochs: 4, warmup_epochs: 0}\nsweep: {method: optuna, num_samples: 3, "
                    "metric: pretrain_loss,\n  parameters: {model.overrides.decoder_depth: {type: int, low: 1, high: 3}},"
                    "\n  early_stopping: {grace_period: 4}}\n")
    assert [note.split(": ", 2)[1] for note in study_notes(path)] == ["sweep.mode", "sweep.early_stopping.grace_period"]
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "model.overrides.decoder_depth: {'type': 'int', 'low': 1, 'high': 3}" in out
    assert "ASHA stops trials early on the pre-training loss: first at epoch 4" in out
    path.write_text(BASE.replace("epochs: 1}", "epochs: 1, warmup_epochs: 0}").replace("sweep: {", "sweep: {num_samples: 4, "))
    assert study_notes(path) == [f"{path}: sweep.num_samples: a grid runs each point once per seed; num_samples is "
                                 "for method: optuna"]
