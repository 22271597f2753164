"""`harness run` at smoke scale through real Ray, then `harness report`, as a user runs them."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from browser import figure_count, needs_chromium, open_page, undrawn_figures
from conftest import REPO, write_study
from video_formats import write_clips

pytestmark = pytest.mark.slow
STUDY = REPO / "studies" / "mask_ratio.yaml"


def harness(*args, cwd):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("e2e")
    before = set(ray_checkpoint_copies())
    done = harness("run", str(STUDY), "--scale", "smoke", cwd=workdir)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return workdir, done.stdout + done.stderr, set(ray_checkpoint_copies()) - before


def ray_checkpoint_copies() -> list[Path]:
    """Where Ray's Checkpoint.to_directory copies a checkpoint (and never removes it)."""
    return list(Path(tempfile.gettempdir()).glob("checkpoint_tmp_*"))


def test_one_row_per_trial_with_every_swept_parameter(smoke_run):
    workdir, stdout, copies = smoke_run
    assert "dashboard: http://127.0.0.1:" in stdout and "pretrain epoch 2/2" in stdout
    # Ray's and Tune's own notices that repeat the harness's lines are left out (--verbose shows them)
    assert "Configuration for experiment" not in stdout and "Started a local Ray instance" not in stdout
    trials = pd.read_parquet(workdir / "runs" / "mask_ratio" / "trials.parquet")
    assert len(trials) == 3 and trials["trial_id"].is_unique
    assert sorted(trials["pretrain.mask.ratio"]) == [0.5, 0.75, 0.9]
    assert (trials["status"] == "ok").all() and (trials["seed"] == 0).all()
    assert trials["pretrain_loss"].between(0, 10).all() and trials["eval_top1"].between(0, 1).all()
    assert trials["pretrain_loss_curve"].map(len).eq(2).all()
    assert (trials["wall_time_s"] > 0).all() and (trials["scale"] == "smoke").all()
    epochs = pd.read_parquet(workdir / "runs" / "mask_ratio" / "epochs.parquet")
    clips = (epochs["clips_per_s"] * epochs["epoch_time_s"]).groupby(epochs["trial_id"]).sum()
    rate = clips / epochs.groupby("trial_id")["epoch_time_s"].sum()  # over every epoch, not the last one's
    assert trials.set_index("trial_id")["pretrain_clips_per_s"].sub(rate).abs().max() < 1e-6
    # Stages read checkpoints where the study keeps them: no pre-trained model copied into /tmp per trial
    assert not copies, f"{len(copies)} checkpoint copies left in {tempfile.gettempdir()}"


def test_rerun_resumes_without_rerunning_finished_trials(smoke_run):
    workdir, *_ = smoke_run
    before = pd.read_parquet(workdir / "runs" / "mask_ratio" / "trials.parquet")
    again = harness("run", str(STUDY), "--scale", "smoke", cwd=workdir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing left to run" in again.stdout and "pretrain epoch" not in again.stdout, again.stdout[-3000:]
    after = pd.read_parquet(workdir / "runs" / "mask_ratio" / "trials.parquet")
    assert sorted(after["trial_id"]) == sorted(before["trial_id"])
    assert sorted(after["finished_at"]) == sorted(before["finished_at"])  # rows untouched


def test_a_changed_study_is_refused_until_restart_sets_the_earlier_run_aside(smoke_run, tmp_path):
    workdir, *_ = smoke_run
    shutil.copytree(workdir / "runs", tmp_path / "runs")  # the fixture's run stays as the other tests read it
    before = pd.read_parquet(tmp_path / "runs" / "mask_ratio" / "trials.parquet")
    # The default (cpu) scale into the smoke run's folder: Tune would resume the smoke trials
    cpu = harness("run", str(STUDY), cwd=tmp_path)
    assert cpu.returncode == 2 and len(cpu.stderr.strip().splitlines()) == 1, cpu.stdout + cpu.stderr
    assert "mask_ratio holds a run of this study with other settings (scale smoke -> cpu," in cpu.stderr
    assert "--restart moves it aside" in cpu.stderr
    # Tune's state is in the run folder: a --storage elsewhere would start every trial again
    moved = harness("run", str(STUDY), "--scale", "smoke", "--storage", str(tmp_path / "shared"), cwd=tmp_path)
    assert moved.returncode == 2 and "keeps its checkpoints and trial state in the run folder" in moved.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["mask_ratio"]
    assert pd.read_parquet(tmp_path / "runs" / "mask_ratio" / "trials.parquet").equals(before)

    changed = tmp_path / "mask_ratio.yaml"
    changed.write_text(STUDY.read_text().replace(
        "sweep.points: [{pretrain.mask.ratio: 0.5}, {pretrain.mask.ratio: 0.75}, {pretrain.mask.ratio: 0.9}]",
        "sweep.points: [{pretrain.mask.ratio: 0.6}]"))
    refused = harness("run", str(changed), "--scale", "smoke", cwd=tmp_path)
    assert refused.returncode == 2 and "(sweep.points)" in refused.stderr, refused.stderr
    restarted = harness("run", str(changed), "--scale", "smoke", "--restart", cwd=tmp_path)
    assert restarted.returncode == 0, restarted.stdout[-3000:] + restarted.stderr[-3000:]
    aside = [p for p in (tmp_path / "runs").iterdir() if p.name != "mask_ratio"]
    assert len(aside) == 1 and re.fullmatch(r"mask_ratio\.\d{8}-\d{6}", aside[0].name)
    assert f"the earlier run of mask_ratio is kept in {aside[0]}" in restarted.stdout
    assert pd.read_parquet(aside[0] / "trials.parquet").equals(before)
    assert pd.read_parquet(tmp_path / "runs" / "mask_ratio" / "trials.parquet")["pretrain.mask.ratio"].tolist() == [0.6]
    both = harness("report", "runs", "--out", str(tmp_path / "out"), cwd=tmp_path)  # a runs folder: all its runs
    assert both.returncode == 0, both.stderr[-3000:]
    assert both.stdout.count("wrote ") == 2
    # Each run gets its own report (the earlier one once overwrote the current one: same study name)
    current, earlier = ((tmp_path / "out" / f"{name}.md").read_text() for name in ("mask_ratio", aside[0].name))
    assert "| 0.6 |" in current and "| 0.6 |" not in earlier and "| 0.5 |" in earlier
    index = (tmp_path / "out" / "index.html").read_text()
    assert "<a href='mask_ratio.html'>" in index and f"<a href='{aside[0].name}.html'>" in index


def test_added_seeds_run_only_their_trials_and_keep_the_finished_ones(smoke_run, tmp_path):
    workdir, *_ = smoke_run
    shutil.copytree(workdir / "runs", tmp_path / "runs")
    before = pd.read_parquet(tmp_path / "runs" / "mask_ratio" / "trials.parquet")
    more = tmp_path / "mask_ratio.yaml"
    more.write_text(STUDY.read_text().replace("    seeds: [0]\n", "    seeds: [0, 1]\n"))
    added = harness("run", str(more), "--scale", "smoke", cwd=tmp_path)
    assert added.returncode == 0, added.stdout[-3000:] + added.stderr[-3000:]
    assert "adding seed 1 to the run in" in added.stdout and "(its 3 finished trials are kept)" in added.stdout
    assert "6 trials (3 left), 2 at a time" in added.stdout
    assert added.stdout.count("] started") == 3 and "seed=0] started" not in added.stdout
    after = pd.read_parquet(tmp_path / "runs" / "mask_ratio" / "trials.parquet")
    assert sorted(after["seed"]) == [0, 0, 0, 1, 1, 1] and after["trial_id"].is_unique
    assert after[after["seed"] == 0].reset_index(drop=True).equals(before)  # the seed-0 rows untouched
    assert sorted(after.loc[after["seed"] == 1, "pretrain.mask.ratio"]) == [0.5, 0.75, 0.9]

    again = harness("run", str(more), "--scale", "smoke", cwd=tmp_path)  # every row is there: nothing runs
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"all 6 trials of mask_ratio are recorded in {tmp_path / 'runs' / 'mask_ratio'}: nothing left to run" \
        in again.stdout and "Ray cluster" not in again.stdout, again.stdout[-3000:]  # nor a Ray started for it
    assert pd.read_parquet(tmp_path / "runs" / "mask_ratio" / "trials.parquet").equals(after)
    report = harness("report", "runs/mask_ratio", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "- **seeds**: 2" in (tmp_path / "out" / "mask_ratio.md").read_text()

    fewer = harness("run", str(STUDY), "--scale", "smoke", cwd=tmp_path)  # rows of seed 1 would be left over
    assert fewer.returncode == 2 and "other settings (seeds): --restart" in fewer.stderr, fewer.stderr


def test_seeds_added_to_a_shipped_reports_rows_run_only_their_trials(smoke_run, tmp_path):
    """A shipped report's folder (study.json and the rows, no Tune state) extended with a seed."""
    workdir, *_ = smoke_run
    (tmp_path / "runs" / "mask_ratio").mkdir(parents=True)
    for name in ("study.json", "trials.parquet", "epochs.parquet"):
        shutil.copy(workdir / "runs" / "mask_ratio" / name, tmp_path / "runs" / "mask_ratio")
    more = tmp_path / "mask_ratio.yaml"
    more.write_text(STUDY.read_text().replace("    seeds: [0]\n", "    seeds: [0, 1]\n"))
    added = harness("run", str(more), "--scale", "smoke", cwd=tmp_path)
    assert added.returncode == 0, added.stdout[-3000:] + added.stderr[-3000:]
    assert added.stdout.count("seed=1] started") == 3 and "seed=0] started" not in added.stdout
    assert sorted(pd.read_parquet(tmp_path / "runs" / "mask_ratio" / "trials.parquet")["seed"]) == [0, 0, 0, 1, 1, 1]


def test_report_draws_the_rows(smoke_run):
    workdir, *_ = smoke_run
    done = harness("report", "runs/mask_ratio", cwd=workdir)
    assert done.returncode == 0, done.stderr
    page = (workdir / "reports" / "mask_ratio.html").read_text()
    assert "plotly" in page.lower() and "<script src=" not in page  # plotly.js embedded, no network
    trials = pd.read_parquet(workdir / "runs" / "mask_ratio" / "trials.parquet").sort_values("pretrain.mask.ratio")
    # The mask-ratio line's points are the rows' eval top-1 (one seed per ratio at smoke scale).
    plotted = [json.loads(m) for m in re.findall(r'"y":(\[[^\]]*\])', page)]
    expected = [round(v, 6) for v in trials["eval_top1"]]
    assert any([round(v, 6) for v in y] == expected for y in plotted)
    table = (workdir / "reports" / "mask_ratio.md").read_text()
    assert table.count("\n| 0.") >= 3
    # Findings come from the rows: one seed per ratio at smoke scale can only be inconclusive.
    assert "a 90% tube ratio beats 75%" in table and "inconclusive (one seed)" in table
    # With one seed there is no spread and no interval: shown as a dash, never as "nan"
    tables = page.split("<h2>Configurations")[1].split("<h2>Reconstructions")[0]  # not the gallery's base64
    assert "[–] |" in table and "nan" not in table.lower() and "nan" not in tables.lower()
    copied = pd.read_parquet(workdir / "reports" / "mask_ratio" / "trials.parquet")
    assert sorted(copied["trial_id"]) == sorted(trials["trial_id"])  # the rows travel with the report
    assert (workdir / "reports" / "mask_ratio_gallery.png").stat().st_size > 1000  # from a real checkpoint
    assert "mask_ratio.html" in (workdir / "reports" / "index.html").read_text()


def test_the_gallery_shows_one_view_of_a_study_that_tests_on_several(smoke_run, tmp_path):
    """A study testing on 2 clips x 3 crops (every paper scale) crashed the report: the gallery
    took a clip's stack of views for one clip."""
    from harness.gallery import gallery_png

    workdir, *_ = smoke_run
    several = tmp_path / "mask_ratio"
    shutil.copytree(workdir / "runs" / "mask_ratio", several)
    study = json.loads((several / "study.json").read_text())
    study["evaluate"].update(test_clips=2, test_crops=3)
    (several / "study.json").write_text(json.dumps(study))
    row = pd.read_parquet(several / "trials.parquet").iloc[0]
    assert gallery_png(several, row, tmp_path / "several.png") == tmp_path / "several.png"
    gallery_png(workdir / "runs" / "mask_ratio", row, tmp_path / "one.png")
    assert (tmp_path / "several.png").read_bytes() == (tmp_path / "one.png").read_bytes()


def test_export_writes_the_best_trials_model_for_transformers_and_the_official_code(smoke_run):
    """`harness export`: the best trial's pre-trained model as a folder transformers loads (the
    same loss as ours on the same clip and mask), or as an official-layout checkpoint; both start
    another study (pretrain.init) with the trial's weights."""
    import torch
    transformers = pytest.importorskip("transformers")

    from harness.gallery import latest_checkpoint
    from harness.report import saved_study
    from harness.storage import study_storage
    from harness.weights import load_init
    from models import VideoMAE, make_mask

    workdir, *_ = smoke_run
    run_dir = workdir / "runs" / "mask_ratio"
    trials = pd.read_parquet(run_dir / "trials.parquet").sort_values("eval_top1", ascending=False, kind="stable")
    best, other = trials["trial_id"].iloc[0], trials["trial_id"].iloc[-1]
    done = harness("export", "runs/mask_ratio", "--out", "best", cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert f"trial {best} (pretrain.mask.ratio=" in done.stdout and "from_pretrained('best')" in done.stdout
    provenance = json.loads((workdir / "best" / "harness.json").read_text())
    assert provenance["trial_id"] == best and provenance["study"] == "mask_ratio"
    assert provenance["eval_top1"] == trials["eval_top1"].iloc[0]
    assert provenance["pretrain"]["mask"]["ratio"] == trials["pretrain.mask.ratio"].iloc[0]  # what the weights saw
    assert provenance["pretrain"]["source"].startswith("synth:") and provenance["model"]["preset"] == "tiny"
    done = harness("export", "runs/mask_ratio", "--trial", other, "--format", "official", "--out", "other", cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (workdir / "other").iterdir()) == ["checkpoint.pth", "harness.json"]

    storage, config = study_storage(run_dir), saved_study(run_dir).experiment({}).model.build()  # ratios share it
    for trial, exported in ((best, workdir / "best"), (other, workdir / "other" / "checkpoint.pth")):
        weights = latest_checkpoint(storage, f"{trial}-pretrain")["model"]
        ours = VideoMAE(config).eval()
        ours.load_state_dict(weights)
        given = VideoMAE(ours.config).eval()
        load_init(given, str(exported))  # what another study's pretrain.init reads
        for name, value in given.state_dict().items():
            if not name.endswith("qkv.bias"):  # the k bias changes no output and is not exported
                torch.testing.assert_close(value, weights[name], rtol=0, atol=0)
        generator = torch.Generator().manual_seed(0)
        video = torch.randn(2, 3, ours.config.num_frames, ours.config.img_size, ours.config.img_size, generator=generator)
        mask = make_mask("tube", 2, ours.config.grid, 0.9, generator)
        with torch.no_grad():
            expected = ours(video, mask).loss.item()
            assert abs(given(video, mask).loss.item() - expected) / expected < 1e-6
            if trial == best:
                theirs = transformers.VideoMAEForPreTraining.from_pretrained(exported).eval()
                loss = theirs(video.transpose(1, 2), bool_masked_pos=mask).loss.item()
                assert abs(loss - expected) / expected < 1e-5

    wrong = harness("export", "runs/mask_ratio", "--trial", "nosuch", "--out", "x", cwd=workdir)
    assert wrong.returncode == 2 and "runs/mask_ratio: no trial nosuch; its trials are " in wrong.stderr
    over = harness("export", "runs/mask_ratio", "--out", "runs/mask_ratio", cwd=workdir)  # not over other files
    assert over.returncode == 2 and "--out runs/mask_ratio: holds other files; give a new or empty folder" in over.stderr
    replaced = harness("export", "runs/mask_ratio", "--trial", other, "--out", "best", cwd=workdir)  # another's export
    assert replaced.returncode == 0 and f"  replaced the export of mask_ratio trial {best} that was there" in replaced.stdout
    (workdir / "cut").mkdir()  # what an export interrupted before its harness.json leaves: the rerun finishes it
    (workdir / "cut" / "config.json").write_text("{}")
    (workdir / "cut" / ".model.safetensors.partial").write_bytes(b"\0" * 10)
    finished = harness("export", "runs/mask_ratio", "--out", "cut", cwd=workdir)
    assert finished.returncode == 0, finished.stderr
    assert sorted(p.name for p in (workdir / "cut").iterdir()) == ["config.json", "harness.json", "model.safetensors"]


@needs_chromium
def test_report_pages_load_in_chromium_with_every_chart_drawn(smoke_run):
    workdir, *_ = smoke_run
    if not (workdir / "reports" / "mask_ratio.html").exists():
        assert harness("report", "runs/mask_ratio", cwd=workdir).returncode == 0
    for page in ("mask_ratio.html", "index.html"):
        console, dom = open_page(workdir / "reports" / page)
        assert console == [], console
        assert undrawn_figures(dom) == []
    assert figure_count(open_page(workdir / "reports" / "mask_ratio.html")[1]) >= 2


def test_training_loop_and_models_do_not_import_ray():
    code = ("import sys, harness.pretrain, harness.evaluate, harness.report, harness.cli, models;"
            "print(any(m == 'ray' or m.startswith('ray.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "False", out.stderr
    for path in (REPO / "models").glob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(import ray|from ray)", text, re.M), path
        assert "open(" not in text and "yaml" not in text, path


def test_status_and_ls_answer_without_importing_torch(tmp_path):
    """`harness status` and `ls` are run from another terminal while a study runs: torch and the
    model (4-5 s to import here) are only for the commands that need them."""
    code = ("import sys; from harness.cli import main; code = main(['ls', sys.argv[1]]);"
            "print(code, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip().splitlines()[-1] == "0 False", out.stdout + out.stderr


def test_a_transfer_study_over_video_folders_in_the_public_datasets_formats(tmp_path):
    """Pre-train on a UCF101-style folder (.avi, class folders, split files) or on SSV2-style
    official list files (.webm), evaluate each encoder on both, against scratch, through
    `harness run` and `harness report`: a domain-shift study over the user's own videos. The study
    file names them relative to its own folder, and runs from another (a trial's Ray worker has
    a working folder of its own: relative paths used to fail every trial)."""
    ucf, ssv2 = tmp_path / "ucf101", tmp_path / "ssv2"
    clips, ucf_splits, ssv2_lists = {}, {"train": [], "test": []}, {"train": [], "val": []}
    for label, (name, direction) in enumerate((("MoveLeft", -1), ("MoveRight", +1))):
        for group in range(8):
            split = "train" if group < 6 else "test"
            relative = f"{name}/v_{name}_g{group:02d}_c01.avi"
            clips[ucf / relative] = direction
            ucf_splits[split].append(relative)
            clips[ssv2 / "videos" / f"{label}{group:02d}.webm"] = direction
            ssv2_lists["train" if split == "train" else "val"].append(f"{label}{group:02d}.webm {label}")
    write_clips(clips)
    for split, lines in ucf_splits.items():
        (ucf / f"{split}.txt").write_text("\n".join(lines) + "\n")
    (ssv2 / "lists").mkdir()
    for split, lines in ssv2_lists.items():
        (ssv2 / "lists" / f"{split}.csv").write_text("\n".join(lines) + "\n")
    on_ucf, on_ssv2 = f"folder:{ucf}", f"list:{ssv2 / 'lists'}?root={ssv2 / 'videos'}"  # as the rows name them
    as_written = {on_ucf: "folder:ucf101", on_ssv2: "list:ssv2/lists?root=./ssv2/videos"}
    study = write_study(tmp_path, "transfer", seeds=[0],
                        pretrain={"epochs": 1, "batch_size": 6, "stride": 2},
                        evaluate={"epochs": 20},
                        sweep={"parameters": {"evaluate.source": list(as_written.values())},
                               "points": [{"pretrain.source": as_written[on_ucf]},
                                          {"pretrain.source": as_written[on_ssv2]}, {"pretrain.method": "scratch"}]})
    (tmp_path / "elsewhere").mkdir()
    done = harness("run", str(study), "--runs", str(tmp_path / "runs"), cwd=tmp_path / "elsewhere")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"  {on_ucf}: 16 clips of 2 classes (train 12, test 4)\n" in done.stdout  # what each source holds
    assert f"  {on_ssv2}: 16 clips of 2 classes (train 12, val 4)\n" in done.stdout
    assert "6 trials, 2 at a time, 1 CPU / 0 GPU each" in done.stdout
    trials = pd.read_parquet(tmp_path / "runs" / "transfer" / "trials.parquet")
    assert len(trials) == 6 and (trials["status"] == "ok").all() and (trials["skipped_videos"] == 0).all()
    assert set(trials["evaluate.source"]) == {on_ucf, on_ssv2} and trials["eval_top1"].between(0, 1).all()
    pretrained = trials[trials["pretrain.method"] == "videomae"]
    assert set(pretrained["pretrain.source"]) == {on_ucf, on_ssv2}
    assert pretrained["pretrain_loss"].between(0, 10).all()
    assert pretrained["pretrain_shared_from"].notna().sum() == 2  # one pre-training per source, reused
    refused = harness("export", "runs/transfer", "--out", "best", cwd=tmp_path)  # best on which dataset?
    assert refused.returncode == 2 and "scored on 2 datasets, whose eval_top1 do not rank" in refused.stderr
    named = re.findall(r"on (\S+): --trial (\S+) \(eval_top1", refused.stderr)  # the best of each, to choose from
    assert sorted(source for source, _ in named) == sorted({on_ucf, on_ssv2})
    assert {trial for _, trial in named} <= set(trials["trial_id"])
    reuser = pretrained[pretrained["pretrain_shared_from"].notna()].iloc[0]
    exported = harness("export", "runs/transfer", "--trial", reuser["trial_id"], "--out", "reuser", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    provenance = json.loads((tmp_path / "reuser" / "harness.json").read_text())
    assert provenance["pretrain_shared_from"] == reuser["pretrain_shared_from"]  # and not its time of reading it
    assert "pretrain_time_s" not in provenance and provenance["pretrain"]["source"] == reuser["pretrain.source"]
    report = harness("report", "runs/transfer", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "reports" / "transfer.md").read_text()
    assert page.count("in-domain pre-training beats out-of-domain pre-training") == 2


def test_a_relative_cache_folder_is_the_one_the_trials_read(tmp_path):
    """VIDEOMAE_HARNESS_CACHE=<relative>: the driver made the data there, then each trial made it
    again in its own Ray working folder (a minute a trial at cpu scale, unsaid)."""
    name = f"cache-{tmp_path.name}"
    done = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(REPO / "studies" / "masking.yaml"),
                           "--scale", "smoke"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "VIDEOMAE_HARNESS_CACHE": name})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert len(list((tmp_path / name / "synth").glob("*/manifest.csv"))) == 1
    session = Path(tempfile.gettempdir(), "ray", "session_latest").resolve()  # the run's own Ray
    assert not list(session.rglob(name)), "a trial made the synthetic data again in its working folder"


def test_a_checkpoint_interval_reaches_the_stages(tmp_path):
    """resources.checkpoint_interval_s of an hour: each stage of a 3-epoch trial writes one
    checkpoint, its last (the record counts them), and the trial finishes as usual."""
    study = write_study(tmp_path, "interval", pretrain={"epochs": 3, "batch_size": 16},
                        resources={"workers_per_trial": 1, "cpus_per_worker": 1, "checkpoint_interval_s": 3600})
    done = harness("run", str(study), "--runs", "runs", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "pretrain epoch 3/3" in done.stdout
    (record,) = (tmp_path / "runs" / "interval" / "train").glob("*-pretrain/latest.json")
    assert json.loads(record.read_text()) == {"index": 1, "checkpoint": "checkpoint_000001"}
    trials = pd.read_parquet(tmp_path / "runs" / "interval" / "trials.parquet")
    assert list(trials["status"]) == ["ok"] and trials["pretrain_loss_curve"].map(len).tolist() == [3]


def test_a_study_evaluates_given_weights_as_they_are_against_scratch(tmp_path):
    """pretrain.method pretrained with pretrain.init (released weights; here another run's
    checkpoint, named relative to the study file): no pre-training stage, the evaluation on those
    weights, a row that names them. Weights of another model stop the run before any trial."""
    from conftest import MICRO
    from harness.pretrain import pretrain
    from harness.session import Session
    from harness.study import Experiment

    pretrain(Experiment.model_validate({k: MICRO[k] for k in ("model", "synth", "pretrain")}), 0, Session(tmp_path / "given"))
    study = write_study(tmp_path, "given", seeds=[0], sweep={"points": [
        {"pretrain.method": "pretrained", "pretrain.init": "given/latest/checkpoint.pt"}, {"pretrain.method": "scratch"}]})
    done = harness("run", str(study), "--runs", "runs", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    weights = str(tmp_path / "given" / "latest" / "checkpoint.pt")
    assert f"  {weights}: loads into the tiny model" in done.stdout and "pretrain epoch" not in done.stdout
    trials = pd.read_parquet(tmp_path / "runs" / "given" / "trials.parquet").set_index("pretrain.method")
    assert trials.loc["pretrained", "pretrain.init"] == weights and trials.loc["pretrained", "status"] == "ok"
    assert trials["pretrain_loss"].isna().all() and trials["eval_top1"].between(0, 1).all()
    deeper = write_study(tmp_path, "deeper", model={"preset": "tiny", "overrides": {"depth": 3}},
                         pretrain={"method": "pretrained", "init": "given/latest/checkpoint.pt"})
    refused = harness("run", str(deeper), "--runs", "runs", cwd=tmp_path)
    assert refused.returncode == 2 and "Ray" not in refused.stdout
    assert refused.stderr.strip() == (f"harness: {deeper}: pretrain.init: {weights}: has no encoder.blocks.2.norm1.weight; "
                                      "the checkpoint has an encoder 192 wide, 2 blocks deep, on 2x8x8 cubes and a decoder "
                                      "96 wide, 2 blocks deep, the study's model an encoder 192 wide, 3 blocks deep, on "
                                      "2x8x8 cubes and a decoder 96 wide, 2 blocks deep: set model: to match")


def test_a_stop_sent_to_the_commands_process_group_stops_the_study_cleanly(tmp_path):
    """`timeout`, `kill -- -PGID` and a terminal's Ctrl+C signal the whole process group. The local
    Ray's GCS and raylet were in it and died at once: the driver waited a minute for them, then
    exited 1 without saving Tune's state. They now run in a group of their own."""
    import signal
    import time

    study = write_study(tmp_path, "grouped", pretrain={"epochs": 200, "batch_size": 16})
    log, code = tmp_path / "out.log", tmp_path / "code"
    command = f"{sys.executable} -m harness.cli run {study} --runs {tmp_path / 'runs'}"
    shell = subprocess.Popen(["bash", "-c", f"trap 'true' TERM; {command} > {log} 2>&1; echo $? > {code}"],
                             cwd=tmp_path, start_new_session=True)  # the shell leads the group, as a job's does
    deadline = time.time() + 300
    while "pretrain epoch 1/200" not in (log.read_text() if log.exists() else "") and time.time() < deadline:
        time.sleep(0.5)
    stopped = time.time()
    os.killpg(shell.pid, signal.SIGTERM)
    shell.wait(timeout=120)
    output = log.read_text()
    assert code.read_text().strip() == "130", output[-3000:]
    assert "interrupted: 1 trial(s) did not finish; run the same command again to resume" in output
    assert time.time() - stopped < 30 and "Failed to connect to GCS" not in output, output[-3000:]
