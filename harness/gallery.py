"""Reconstruction gallery for a report: original, masked and reconstructed frames of a few
validation clips, from a finished trial's pre-training checkpoint, as one PNG."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs
import torch
from PIL import Image

from models import VideoMAE, make_mask, reconstruct

from .evaluate import eval_dataset
from .pretrain import CHECKPOINT_FILE
from .results import STUDY_FILE
from .sources import resolve_source, split
from .storage import Storage, study_storage
from .study import Experiment, Study
from .study_file import declared_point


def latest_checkpoint(storage: Storage, run: str) -> dict | None:
    """The last checkpoint of a pre-training run, read from wherever the study kept them."""
    try:
        found = sorted(info.path for info in storage.filesystem.get_file_info(
            pafs.FileSelector(storage.path("train", run), allow_not_found=True, recursive=True))
            if info.path.endswith(f"/{CHECKPOINT_FILE}"))
        if not found:
            return None
        with storage.filesystem.open_input_stream(found[-1]) as stream:
            return torch.load(io.BytesIO(stream.read()), map_location="cpu", weights_only=True)
    except OSError:  # the storage is unreachable from here (no credentials, offline): no gallery
        return None


def pretrain_run(row: pd.Series) -> str:
    """The pre-training run trial `row`'s model came from (another trial's, if it shared one)."""
    return row["pretrain_run"] if isinstance(row.get("pretrain_run"), str) else f"{row['trial_id']}-pretrain"


def pretrained_model(run_dir: Path, study: Study, row: pd.Series) -> tuple[VideoMAE, Experiment, dict] | None:
    """Trial `row`'s pre-trained model (its last checkpoint loaded into the study's model), its
    experiment and the checkpoint; None when the checkpoint cannot be read from here."""
    checkpoint = latest_checkpoint(study_storage(run_dir), pretrain_run(row))
    if checkpoint is None:
        return None
    experiment = study.experiment(declared_point(study, row))
    model = VideoMAE(experiment.model.build(), loss=experiment.pretrain.loss)
    model.load_state_dict(checkpoint["model"])
    return model, experiment, checkpoint


def gallery_png(run_dir: Path, row: pd.Series, out: Path, clips: int = 2, frames: int = 4) -> Path | None:
    """Write the gallery of trial `row` to `out`; None when its checkpoint or study is gone."""
    study_file = run_dir / STUDY_FILE
    if not study_file.exists():
        return None
    study = Study.model_validate(json.loads(study_file.read_text()))
    trained = pretrained_model(run_dir, study, row)
    if trained is None:
        return None
    model, experiment, _ = trained
    model.eval()
    table = split(resolve_source(experiment.evaluate.source, experiment.synth_params()), "val").head(clips)
    one_view = experiment.model_copy(update={"evaluate": experiment.evaluate.model_copy(
        update={"test_clips": 1, "test_crops": 1})})  # the centre view of each clip, not all the test views
    video = torch.stack([eval_dataset(one_view, table, train=False)[i][0] for i in range(len(table))])
    mask = make_mask(experiment.pretrain.mask.strategy, len(table), model.config.grid,
                     experiment.pretrain.mask.ratio, torch.Generator().manual_seed(0))
    shown = reconstruct(model, video, mask)
    steps = torch.linspace(0, video.shape[2] - 1, frames).round().long()
    rows = [torch.cat(list(shown[kind][i][:, steps].permute(1, 0, 2, 3)), dim=2)  # frames side by side
            for i in range(len(table)) for kind in ("original", "masked", "reconstruction")]
    grid = torch.cat(rows, dim=1)  # (3, rows * H, frames * W)
    scale = max(1, 256 // video.shape[-1])  # small clips are enlarged so a reader can see them
    image = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST).save(out)
    return out


