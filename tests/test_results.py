import subprocess

import pandas as pd
import pyarrow.dataset as ds

from harness.figures import parameter_figure, summarize
from harness.gallery import declared_point
from harness.results import code_commit, upsert_rows
from harness.study_file import load_study
from models import VideoMAE
from conftest import REPO


def test_upsert_replaces_by_trial_and_leaves_no_partial_files(tmp_path):
    path = tmp_path / "trials.parquet"
    upsert_rows(path, [{"trial_id": "a", "x": 1.0}, {"trial_id": "b", "x": 2.0}])
    upsert_rows(path, [{"trial_id": "b", "x": 3.0}, {"trial_id": "c", "x": 4.0}])
    table = pd.read_parquet(path).sort_values("trial_id")
    assert table["trial_id"].tolist() == ["a", "b", "c"] and table["x"].tolist() == [1.0, 3.0, 4.0]
    assert ds.dataset(path).count_rows() == 3
    assert [p.name for p in tmp_path.iterdir()] == ["trials.parquet"]


def test_summary_interval_and_figure_data():
    trials = pd.DataFrame({"status": "ok", "pretrain.mask.ratio": [0.5, 0.5, 0.5, 0.9, 0.9, 0.9],
                           "eval_top1": [0.2, 0.3, 0.4, 0.5, 0.6, 0.7]})
    table = summarize(trials, ["pretrain.mask.ratio"])
    assert table["mean"].round(6).tolist() == [0.3, 0.6] and table["n"].tolist() == [3, 3]
    assert abs(table["ci95"][0] - 4.303 * 0.1 / 3 ** 0.5) < 1e-6
    line = parameter_figure(trials, "pretrain.mask.ratio").data[1]
    assert list(line.x) == [0.5, 0.9] and [round(v, 6) for v in line.y] == [0.3, 0.6]
    with_scratch = pd.concat([trials.assign(**{"pretrain.method": "videomae"}), pd.DataFrame(
        {"status": "ok", "pretrain.method": "scratch", "eval_top1": [0.1, 0.12]})], ignore_index=True)
    drawn = {trace.name: (list(trace.x), [round(v, 6) for v in trace.y]) for trace in
             parameter_figure(with_scratch, "pretrain.mask.ratio").data if trace.showlegend is not False}
    assert drawn["ours"] == ([0.5, 0.9], [0.3, 0.6])  # the swept curve, which a scratch row used to replace
    assert drawn["scratch"] == ([0.5, 0.9], [0.11, 0.11])  # and the baseline across its range


def test_storage_that_cannot_take_results_is_refused_before_anything_runs(tmp_path, capsys, monkeypatch):
    import pytest

    from conftest import REPO
    from harness.cli import main
    from harness.results import StorageError, check_storage

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(REPO / "studies" / "mask_ratio.yaml"), "--scale", "smoke", "--runs", str(blocker / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--runs" in err and "is a file, not a folder" in err and "\n" not in err
    with pytest.raises(StorageError, match="cannot write"):
        check_storage("/proc/videomae-runs")  # a filesystem nobody can create files in
    with pytest.raises(StorageError, match="MiB free"):
        check_storage(tmp_path / "runs", min_free=2 ** 62)  # more space than any disk has
    check_storage(tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_an_integer_sweep_value_read_back_from_parquet_builds_the_model_it_named(tmp_path):
    """decoder_depth is unset on the scratch point, so Parquet gives the column back as floats;
    the report's gallery rebuilds the trial's model from the row and needs 8, not 8.0."""
    study = load_study(REPO / "studies" / "decoder_depth.yaml", "cpu")
    path = tmp_path / "trials.parquet"
    upsert_rows(path, [{"trial_id": "deep", "model.overrides.decoder_depth": 8, "pretrain.method": "videomae"},
                       {"trial_id": "scratch", "model.overrides.decoder_depth": None, "pretrain.method": "scratch"}])
    rows = pd.read_parquet(path).set_index("trial_id", drop=False)
    assert rows["model.overrides.decoder_depth"].dtype == float
    point = declared_point(study, rows.loc["deep"])
    assert point == {"model.overrides.decoder_depth": 8, "pretrain.method": "videomae"}  # as the real rows record it
    assert type(point["model.overrides.decoder_depth"]) is int
    assert len(VideoMAE(study.experiment(point).model.build()).decoder.blocks) == 8
    assert declared_point(study, rows.loc["scratch"]) == {"pretrain.method": "scratch"}


def test_rows_name_the_commit_and_say_when_the_code_differed_from_it(tmp_path):
    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                              capture_output=True, text=True, check=True).stdout.strip()
    assert code_commit(tmp_path) is None  # not a checkout
    for name in ("harness/loop.py", "models/net.py", "reports/study.md"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "start")
    commit = git("rev-parse", "--short", "HEAD")
    assert code_commit(tmp_path / "harness") == commit
    (tmp_path / "reports" / "study.md").write_text("2\n")   # a regenerated report is not code
    (tmp_path / "harness" / "scratch.py").write_text("2\n")  # nor is a file git does not track
    assert code_commit(tmp_path / "harness") == commit
    (tmp_path / "models" / "net.py").write_text("2\n")
    assert code_commit(tmp_path / "harness") == f"{commit}-dirty"


def test_report_and_status_of_a_study_whose_trials_all_failed(tmp_path, capsys):
    """Rows as the driver records failures: the pages say that no trial finished and list why,
    with no 'nan' for the time it took, and `harness status` says so instead of an empty table."""
    from harness.cli import main
    from harness.recorder import record_trial

    study = load_study(REPO / "studies" / "mask_ratio.yaml", "smoke")
    run_dir = tmp_path / "runs" / "mask_ratio"
    for index, point in enumerate(study.sweep.points):
        record_trial(run_dir, study, f"t{index}", {"point": point, "seed": 0},
                     {"status": "failed", "reason": f"harness.sources.DataError: bad video v{index}.mp4"})
    assert main(["report", str(run_dir), "--out", str(tmp_path / "reports")]) == 0
    page = (tmp_path / "reports" / "mask_ratio.md").read_text()
    assert "**trials**: 3 (3 failed)" in page and "time it took" not in page and "nan" not in page
    assert page.count("No trial has finished.") == 2 and "bad video v2.mp4" in page
    assert main(["status", str(run_dir)]) == 0
    assert capsys.readouterr().out.endswith("trials recorded 3 (3 failed)\nno trial has finished yet\n")
    for command in ("status", "report"):  # a mistyped run folder
        mistyped = run_dir.parent / "mask_ratioo"
        assert main([command, str(mistyped)]) == 2
        assert capsys.readouterr().err == (f"harness: {mistyped}: no such run folder "
                                           "(`harness ls RUNS` lists the studies run there)\n")
    (run_dir.parent / "loss").mkdir()  # a study started, nothing recorded or planned yet
    assert main(["status", str(run_dir.parent / "loss")]) == 2
    assert "loss/trials.parquet: no results yet" in capsys.readouterr().err
    assert main(["ls", str(run_dir.parent)]) == 0  # the failed study; "loss" holds nothing of a study
    assert capsys.readouterr().out.split()[:4] == ["mask_ratio", "smoke", "3", "trials"]
    started = run_dir.parent / "masking"  # running, no trial recorded yet: listed with what it plans
    started.mkdir()
    (started / "study.json").write_text(load_study(REPO / "studies" / "masking.yaml", "smoke").model_dump_json())
    for spelled in ([str(run_dir.parent)], ["--runs", str(run_dir.parent)]):  # as harness run spells it too
        assert main(["ls", *spelled]) == 0
        assert capsys.readouterr().out.splitlines()[1].split() == ["masking", "smoke", "0/2", "trials", "no", "trial",
                                                                   "has", "finished", "yet"]
    assert main(["status", str(run_dir.parent)]) == 2  # the runs folder (`report` takes it: every study)
    assert capsys.readouterr().err == (f"harness: {run_dir.parent}: a runs folder, holding the run folders of "
                                       f"mask_ratio, masking: name one (e.g. {run_dir})\n")
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mp4").write_bytes(b"")
    for command in ("status", "report"):  # a folder of videos
        assert main([command, str(tmp_path / "videos")]) == 2
        assert capsys.readouterr().err == (f"harness: {tmp_path / 'videos'}: not a run folder (no trials.parquet or "
                                           "study.json; `harness run` writes them)\n")
    assert main(["ls", str(run_dir.parent), "--runs", str(tmp_path)]) == 2
    assert "two runs folders given" in capsys.readouterr().err
    assert main(["ls", str(tmp_path / "runz")]) == 2
    assert capsys.readouterr().err == f"harness: {tmp_path / 'runz'}: no such runs folder\n"


def test_report_and_status_of_a_swept_list_valued_setting(tmp_path, capsys):
    """synth.speed takes a [min, max] pair; Parquet gives it back as arrays, which pandas cannot
    group: `harness status` and `harness report` stopped with "unhashable type" tracebacks."""
    from harness.cli import main
    from harness.recorder import record_trial

    path = tmp_path / "speed.yaml"
    path.write_text("name: speed\nseeds: [0, 1]\nsweep: {parameters: {synth.speed: [[0.3, 0.6], [0.6, 1.0]]}}\n")
    study = load_study(path)
    run_dir = tmp_path / "runs" / "speed"
    for index, speed in enumerate(([0.3, 0.6], [0.6, 1.0])):
        for seed in (0, 1):
            record_trial(run_dir, study, f"t{index}{seed}", {"point": {"synth.speed": speed}, "seed": seed},
                         {"eval_top1": 0.2 + 0.1 * index + 0.01 * seed, "eval_top5": 0.9, "pretrain_loss": 0.9,
                          "wall_time_s": 60.0, "cpu_seconds": 60.0, "gpu_seconds": 0.0, "eval_protocol": "knn"})
    assert main(["status", str(run_dir)]) == 0
    assert [line.split()[:3] for line in capsys.readouterr().out.splitlines()[2:]] == [
        ["[0.6,", "1.0]", "0.305"], ["[0.3,", "0.6]", "0.205"]]
    assert main(["report", str(run_dir), "--out", str(tmp_path / "reports")]) == 0
    assert "| [0.6, 1.0] | 0.305 | " in (tmp_path / "reports" / "speed.md").read_text()
    row = pd.read_parquet(run_dir / "trials.parquet").iloc[0]  # the gallery rebuilds the trial from its row
    assert declared_point(study, row) == {"synth.speed": [0.3, 0.6]}
    assert study.experiment(declared_point(study, row)).synth.speed == (0.3, 0.6)


def test_status_report_and_ls_rank_by_the_metric_the_study_optimizes(tmp_path, capsys):
    """A study whose sweep minimizes the pre-training loss: its best configuration is the lowest
    loss, not the highest top-1, in `harness status`, `ls` and the report."""
    from harness.cli import main
    from harness.recorder import record_trial

    path = tmp_path / "lossy.yaml"
    path.write_text("name: lossy\nsweep: {method: optuna, num_samples: 3, metric: pretrain_loss, mode: min,\n"
                    "        parameters: {pretrain.lr: {type: loguniform, low: 0.0001, high: 0.01}}}\n")
    study = load_study(path)
    run_dir = tmp_path / "runs" / "lossy"
    for index, (lr, loss, top1) in enumerate(((0.001, 0.9, 0.30), (0.002, 0.7, 0.20), (0.004, 0.8, 0.25))):
        record_trial(run_dir, study, f"t{index}", {"point": {"pretrain.lr": lr}, "seed": 0},
                     {"eval_top1": top1, "eval_top5": 0.9, "pretrain_loss": loss, "wall_time_s": 60.0,
                      "cpu_seconds": 60.0, "gpu_seconds": 0.0, "eval_protocol": "knn"})
    (run_dir / "study.json").write_text(study.model_dump_json())
    assert main(["status", str(run_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:2] == ["pretrain.lr", "pretrain_loss"]  # the ranked column, named
    assert lines[1].split().count("pretrain_loss") == 1  # once: it was shown again as the mean loss
    assert [line.split()[:2] for line in lines[2:]] == [["0.002", "0.7"], ["0.004", "0.8"], ["0.001", "0.9"]]
    assert main(["ls", str(run_dir.parent)]) == 0
    assert "best pretrain_loss 0.7000" in capsys.readouterr().out
    assert main(["report", str(run_dir), "--out", str(tmp_path / "reports")]) == 0
    page = (tmp_path / "reports" / "lossy.md").read_text()
    assert "## Configurations (pretrain_loss, mean over seeds, 95% interval, lowest first)" in page
    table = page.split("## Configurations")[1]
    assert table.index("| 0.002 |") < table.index("| 0.004 |") < table.index("| 0.001 |")


def test_a_baseline_is_compared_only_where_it_ran_as_the_other_side(tmp_path):
    """A scratch point leaves the swept model width unset, but runs the preset's: it is compared
    with VideoMAE at that width only (it was paired with every width). A point without an init is
    not pooled with one that has it (the finding named the init for both). A mask ratio, which a
    scratch trial never reads, still pairs it with every ratio."""
    from harness.findings import findings
    from harness.recorder import record_trial
    from harness.study_file import effective_settings

    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.safetensors").write_bytes(b"")
    path = tmp_path / "width.yaml"
    path.write_text("name: width\nseeds: [0, 1]\nsweep:\n  points:\n"
                    "    - {model.overrides.embed_dim: 96, pretrain.mask.ratio: 0.75}\n"
                    "    - {model.overrides.embed_dim: 192, pretrain.mask.ratio: 0.75}\n"
                    "    - {model.overrides.embed_dim: 192, pretrain.mask.ratio: 0.75, pretrain.init: weights}\n"
                    "    - {pretrain.method: scratch}\n")
    study = load_study(path, check_paths=False)
    run_dir = tmp_path / "runs" / "width"
    scores = {96: 0.40, 192: 0.30, "init": 0.90, "scratch": 0.20}
    for index, point in enumerate(study.sweep.points):
        key = "scratch" if "pretrain.method" in point else "init" if "pretrain.init" in point else \
            point["model.overrides.embed_dim"]
        for seed in (0, 1):
            record_trial(run_dir, study, f"t{index}{seed}", {"point": point, "seed": seed},
                         {"eval_top1": scores[key] + 0.01 * seed, "pretrain_loss": 0.9, "wall_time_s": 1.0})
    rows = pd.read_parquet(run_dir / "trials.parquet")
    filled = effective_settings(rows, study).set_index("trial_id")
    assert filled.loc["t30", "model.overrides.embed_dim"] == 192 and filled.loc["t30", "pretrain.init"] == "none"
    assert pd.isna(filled.loc["t30", "pretrain.mask.ratio"])  # a scratch trial never reads it
    assert filled.loc["t00", "pretrain.init"] == "none"
    found = findings(filled.reset_index(), [c for c in rows.columns if "." in c])
    scratch = found[found["comparison"] == "pretrain.method: videomae vs scratch"]
    # scratch ran at width 192 without an init: compared there only, with VideoMAE as it ran there alone
    assert scratch["context"].tolist() == ["model.overrides.embed_dim=192, pretrain.mask.ratio=0.75, pretrain.init=none"]
    assert scratch["difference"].round(3).tolist() == [0.1]  # 0.30 against 0.20: not pooled with the init's 0.90


def test_damaged_run_files_are_named_in_one_line_and_nothing_is_left_behind(tmp_path, capsys):
    """An emptied trials.parquet or a study.json overwritten with garbage ended status, report and
    run in tracebacks; one damaged run stopped `harness ls` listing the others; a failed report
    left the empty --out folder it had made; a run folder whose study.json was removed was taken
    for this study's ("nothing left to run" under other settings)."""
    from harness.cli import main
    from harness.recorder import record_trial

    study = load_study(REPO / "studies" / "mask_ratio.yaml", "smoke")
    runs = tmp_path / "runs"
    for name in ("mask_ratio", "other"):
        run_dir = runs / name
        for index, point in enumerate(study.sweep.points):
            record_trial(run_dir, study, f"t{index}", {"point": point, "seed": 0},
                         {"eval_top1": 0.2, "pretrain_loss": 0.9, "wall_time_s": 1.0})
        (run_dir / "study.json").write_text(study.model_dump_json())
    damaged = runs / "mask_ratio"
    (damaged / "trials.parquet").write_bytes(b"")
    for command in (["status", str(damaged)], ["report", str(damaged), "--out", str(tmp_path / "new" / "out")]):
        assert main(command) == 2
        assert capsys.readouterr().err.startswith(f"harness: {damaged / 'trials.parquet'}: damaged, not a Parquet table (")
    assert not (tmp_path / "new").exists()  # the --out folder made for the failed report is gone again
    assert main(["ls", str(runs)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].split()[:3] == ["mask_ratio", "trials.parquet:", "damaged,"] and listed[1].startswith("other")
    assert "best eval_top1 0.2000 (mean of 1)" in listed[1]
    (runs / "other" / "study.json").write_text('{"name": "oth')  # cut short
    assert main(["run", str(REPO / "studies" / "mask_ratio.yaml"), "--scale", "smoke", "--runs", str(runs),
                 "--dry-run"]) == 0  # a dry run reads no run folder
    capsys.readouterr()
    assert main(["report", str(runs / "other"), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith(f"harness: {runs / 'other' / 'study.json'}: damaged, not the JSON")
    (runs / "other" / "study.json").unlink()  # removed: the rows' settings are unknown
    other = tmp_path / "other.yaml"
    other.write_text((REPO / "studies" / "mask_ratio.yaml").read_text().replace("name: mask_ratio", "name: other"))
    assert main(["run", str(other), "--scale", "smoke", "--runs", str(runs)]) == 2
    assert "holds a run of this study with other settings (study.json is missing)" in capsys.readouterr().err


def test_time_taken_counts_only_the_time_trials_ran():
    """A study given more seeds a day later: the report's wall clock leaves out the day between."""
    from harness.report import _time_taken

    day = 24 * 3600
    ends, walls = [60, 90, day + 60], [60.0, 60.0, 60.0]  # two trials at once, then one the next day
    trials = pd.DataFrame({"finished_at": [pd.Timestamp("2026-12-05T06:00:00") + pd.Timedelta(seconds=end)
                                           for end in ends], "wall_time_s": walls})
    assert _time_taken(trials) == "2.5 min wall clock (3.0 min of trial time)"
    failed = pd.DataFrame({"finished_at": [pd.Timestamp("2026-12-05")], "wall_time_s": [None]})
    assert _time_taken(failed) == "" and _time_taken(pd.concat([trials, failed])) == _time_taken(trials)


def test_report_does_not_write_over_the_report_of_another_run(tmp_path, capsys):
    """The README's first look (a smoke run), then `harness report` with the default --out, wrote
    over the shipped cpu study's report and its copy of the 10-seed rows. A report of another run
    (other settings, or fewer finished trials) now stops with one line, writing nothing, unless
    --replace; a run that adds seeds to the study extends its report."""
    from harness.cli import main
    from harness.recorder import record_trial

    def run(name: str, scale: str, seeds: list[int], recorded: list[int] | None = None):
        study = load_study(REPO / "studies" / "mask_ratio.yaml", scale).model_copy(update={"seeds": seeds})
        run_dir = tmp_path / name / "mask_ratio"
        run_dir.mkdir(parents=True)
        (run_dir / "study.json").write_text(study.model_dump_json())
        for seed in seeds if recorded is None else recorded:
            for index, point in enumerate(study.sweep.points[:2]):
                record_trial(run_dir, study, f"{name}{index}{seed}", {"point": point, "seed": seed},
                             {"eval_top1": 0.2 + 0.01 * seed, "eval_top5": 0.9, "pretrain_loss": 0.9, "wall_time_s": 60.0,
                              "cpu_seconds": 60.0, "gpu_seconds": 0.0, "eval_protocol": "knn"})
        return str(run_dir)

    out = tmp_path / "reports"
    copied_rows = lambda: len(pd.read_parquet(out / "mask_ratio" / "trials.parquet"))  # noqa: E731
    assert main(["report", run("shipped", "cpu", [0, 1, 2]), "--out", str(out)]) == 0 and copied_rows() == 6
    page = (out / "mask_ratio.md").read_text()
    capsys.readouterr()
    smoke, partial = run("smoke", "smoke", [0]), run("partial", "cpu", [0, 1, 2], recorded=[0])
    assert main(["report", smoke, "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"harness: report {smoke}: {out / 'mask_ratio'} is the report of another run of the study (scale cpu -> smoke, "
        "evaluate.train_clips 500 -> None, pretrain.epochs 10 -> 2, ...); write it elsewhere with --out DIR, "
        "or over it with --replace\n")
    assert main(["report", partial, smoke, "--out", str(out)]) == 2  # every run checked before any is written
    assert f"{out / 'mask_ratio'} holds 6 finished trials, this run 2;" in capsys.readouterr().err
    assert copied_rows() == 6 and (out / "mask_ratio.md").read_text() == page
    assert main(["report", run("more", "cpu", [0, 1, 2, 3]), "--out", str(out)]) == 0 and copied_rows() == 8
    assert main(["report", str(out / "mask_ratio"), "--out", str(out)]) == 0  # rebuilt from its own copy
    assert main(["report", smoke, "--out", str(out), "--replace"]) == 0 and copied_rows() == 2


def test_a_point_leaving_a_numeric_swept_setting_unset_is_reported(tmp_path, capsys):
    """Points with and without `evaluate.train_clips` (all clips): the report filled the unset one
    with "none" in a float column and crashed; `status` showed it."""
    from harness.cli import main
    from harness.recorder import record_trial

    path = tmp_path / "labels.yaml"
    path.write_text("name: labels\nseeds: [0, 1]\nevaluate: {protocol: knn}\n"
                    "sweep: {points: [{evaluate.train_clips: 16}, {}]}\n")
    study = load_study(path)
    run_dir = tmp_path / "runs" / "labels"
    for index, point in enumerate(study.sweep.points):
        for seed in (0, 1):
            record_trial(run_dir, study, f"t{index}{seed}", {"point": point, "seed": seed},
                         {"eval_top1": 0.2 + 0.1 * index + 0.01 * seed, "eval_top5": 0.9, "pretrain_loss": 0.9,
                          "wall_time_s": 60.0, "cpu_seconds": 60.0, "gpu_seconds": 0.0, "eval_protocol": "knn"})
    (run_dir / "study.json").write_text(study.model_dump_json())
    assert main(["report", str(run_dir), "--out", str(tmp_path / "reports")]) == 0, capsys.readouterr().err
    page = (tmp_path / "reports" / "labels.md").read_text()
    assert "| – | 0.305 |" in page and "| 16 | 0.205 |" in page  # unset: every clip


def test_an_optuna_draw_repeated_on_one_seed_counts_as_one_run():
    """TPE drew loss l1 twice on seed 0: the table said n 2, std 0, a 95% interval of 0."""
    trials = pd.DataFrame({"status": "ok", "pretrain.loss": ["l1", "l1", "mse", "mse", "mse"],
                           "seed": [0, 0, 0, 0, 1], "eval_top1": [0.2, 0.2, 0.3, 0.3, 0.5]})
    table = summarize(trials, ["pretrain.loss"]).set_index("pretrain.loss")
    assert table.loc["l1", "n"] == 1 and pd.isna(table.loc["l1", "std"])
    assert table.loc["mse", "n"] == 2 and abs(table.loc["mse", "mean"] - 0.4) < 1e-12


def test_an_optuna_report_plots_each_drawn_parameter_by_itself(tmp_path):
    """Two continuous parameters, each drawn value unique: the report merged them into one axis
    ("pretrain.mask.ratio = pretrain.lr"), drew a line with a band through unrelated draws and
    left the learning rate without a figure."""
    from harness.cli import main
    from harness.recorder import record_trial

    path = tmp_path / "draws.yaml"
    path.write_text("name: draws\nsweep: {method: optuna, num_samples: 4, parameters: {\n"
                    "  pretrain.mask.ratio: {type: float, low: 0.5, high: 0.95},\n"
                    "  pretrain.lr: {type: loguniform, low: 0.0001, high: 0.003}}}\n")
    study = load_study(path)
    run_dir = tmp_path / "runs" / "draws"
    for index, (ratio, lr, top1) in enumerate(((0.534338, 0.00141917, 0.2), (0.9, 0.0002, 0.3),
                                               (0.7, 0.0025, 0.25), (0.8, 0.0005, 0.35))):
        record_trial(run_dir, study, f"t{index}", {"point": {"pretrain.mask.ratio": ratio, "pretrain.lr": lr}, "seed": 0},
                     {"eval_top1": top1, "eval_top5": 0.9, "pretrain_loss": 0.9, "wall_time_s": 60.0,
                      "cpu_seconds": 60.0, "gpu_seconds": 0.0, "eval_protocol": "knn"})
    (run_dir / "study.json").write_text(study.model_dump_json())
    assert main(["report", str(run_dir), "--out", str(tmp_path / "reports")]) == 0
    page = (tmp_path / "reports" / "draws.html").read_text()
    assert "eval_top1 by pretrain.mask.ratio (each trial" in page and "eval_top1 by pretrain.lr (each trial" in page
    assert "pretrain.mask.ratio = pretrain.lr" not in page and "in the order they finished" in page
    assert "ratio=0.5343, lr=0.001419, seed 0" in page  # hover labels rounded, not 0.534338...
