"""`harness export`: a finished trial's pre-trained VideoMAE as files other code reads: a Hugging
Face model folder (`VideoMAEForPreTraining.from_pretrained`, or `VideoMAEForVideoClassification`
to fine-tune its encoder), or a checkpoint in the official VideoMAE code's layout (its fine-tuning
script's `--finetune`). Either is also a `pretrain.init` for another study."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from models import to_official, to_transformers, transformers_config

from .findings import METRIC
from .gallery import pretrain_run, pretrained_model
from .report import best_row, saved_study
from .results import read_trials
from .study import Experiment, StudyError
from .study_file import is_missing

FORMATS = ("hf", "official")
PROVENANCE_FILE = "harness.json"  # which study, trial and result the weights came from, written last
EXPORT_FILES = ("config.json", "model.safetensors", "checkpoint.pth", PROVENANCE_FILE)


def export_trial(run_dir: Path, out: Path, trial: str | None = None, fmt: str = "hf") -> tuple[pd.Series, list[Path]]:
    """Write the pre-trained weights of `trial` (default: the best finished trial with a
    pre-training stage, by the study's metric) into `out`; the trial's row and the files written."""
    trials, study = read_trials(run_dir), saved_study(run_dir)
    if study is None:
        raise StudyError(f"{run_dir}: no study.json: not a run folder `harness run` made")
    foreign = [p for p in out.iterdir() if p.name not in EXPORT_FILES and not p.name.endswith(".partial")] \
        if out.is_dir() else []
    if foreign and not (out / PROVENANCE_FILE).exists():  # not an earlier export, whole or interrupted
        raise StudyError(f"export: --out {out}: holds other files; give a new or empty folder")
    row = chosen_trial(trials, trial, run_dir, study.sweep.metric, study.sweep.mode)
    trained = pretrained_model(run_dir, study, row)  # loaded into the study's model before anything is written
    if trained is None:
        raise StudyError(f"{run_dir}: trial {row['trial_id']}: its pre-training checkpoint ({pretrain_run(row)}) "
                         "is not there any more, or its storage cannot be read from here")
    model, experiment, checkpoint = trained
    config, state = model.config, model.state_dict()
    if fmt not in FORMATS:
        raise StudyError(f"export: --format {fmt}: choose from {', '.join(FORMATS)}")
    out.mkdir(parents=True, exist_ok=True)
    for name in (PROVENANCE_FILE, *EXPORT_FILES):  # an earlier export's: harness.json first, so none is left
        (out / name).unlink(missing_ok=True)   # beside the files of this one if it is interrupted
    if fmt == "hf":
        from safetensors.torch import save  # a dependency of timm

        hf_config = {"architectures": ["VideoMAEForPreTraining"], "model_type": "videomae",
                     **transformers_config(config, use_mean_pooling=False,
                                           norm_pix_loss=experiment.pretrain.loss != "mse_raw")}
        tensors = {name: value.contiguous() for name, value in to_transformers(state).items()}
        _write(out / "model.safetensors", save(tensors, metadata={"format": "pt"}))  # transformers asks "pt"
        _write(out / "config.json", (json.dumps(hf_config, indent=2) + "\n").encode())
        written = [out / "config.json", out / "model.safetensors"]
    else:
        buffer = io.BytesIO()
        torch.save({"model": to_official(state), "epoch": checkpoint.get("epoch")}, buffer)
        _write(out / "checkpoint.pth", buffer.getvalue())
        written = [out / "checkpoint.pth"]
    facts = provenance(study.name, run_dir, row, experiment)
    _write(out / PROVENANCE_FILE, (json.dumps(facts, indent=2, default=str) + "\n").encode())
    return row, [*written, out / PROVENANCE_FILE]


def _write(path: Path, data: bytes) -> None:
    """Whole or not at all: an interrupted export leaves no cut file that a reader would take."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def chosen_trial(trials: pd.DataFrame, trial: str | None, run_dir: Path, metric: str = METRIC,
                 mode: str = "max") -> pd.Series:
    """The row of trial `trial`, or of the best finished trial that pre-trained, by the study's
    `metric` and `mode`."""
    trained = trials[trials["pretrain_loss"].notna()] if "pretrain_loss" in trials else trials.iloc[:0]
    if trial is None:
        finished = trained[(trained["status"] == "ok") & trained[metric].notna()]
        if finished.empty:
            raise StudyError(f"{run_dir}: no finished trial pre-trained a model (scratch and pretrained "
                             "trials have none of their own)")
        scored_on = sorted(finished["evaluate.source"].unique()) if "evaluate.source" in finished else []
        if len(scored_on) > 1:  # a transfer study: top-1 on one dataset does not rank against another's
            ranked = finished.sort_values(metric, ascending=mode == "min", kind="stable")
            best = ranked.groupby("evaluate.source").head(1)
            each = "; ".join(f"on {source}: --trial {trial_id} ({metric} {score:.4f})" for source, trial_id, score
                             in sorted(zip(best["evaluate.source"], best["trial_id"], best[metric])))
            raise StudyError(f"{run_dir}: its trials are scored on {len(scored_on)} datasets, whose {metric} do not "
                             f"rank against each other: name the trial to export; the best {each}")
        return best_row(finished, metric, mode)
    rows = trials[trials["trial_id"] == trial]
    if rows.empty:
        raise StudyError(f"{run_dir}: no trial {trial}; its trials are {', '.join(trials['trial_id'][:5])}"
                         + (" ..." if len(trials) > 5 else ""))
    if trial not in set(trained["trial_id"]):
        raise StudyError(f"{run_dir}: trial {trial} has no pre-training stage of its own (method "
                         f"{rows.iloc[0].get('pretrain.method', 'scratch or pretrained')})")
    return rows.iloc[0]


def summary(row: pd.Series) -> str:
    """E.g. "trial 1a2b_00000 (pretrain.mask.ratio=0.9, seed 0; eval_top1 0.5120)"."""
    point = ", ".join(f"{name}={row[name]}" for name in row.index if "." in name and not is_missing(row[name]))
    result = f"status {row['status']}" if is_missing(row.get("eval_top1")) else f"eval_top1 {row['eval_top1']:.4f}"
    return f"trial {row['trial_id']} ({point or 'the study as written'}, seed {row['seed']}; {result})"


def provenance(study: str, run_dir: Path, row: pd.Series, experiment: Experiment) -> dict[str, Any]:
    """The study, trial, its sweep point and results, and the model and pre-training the weights
    came from (data, epochs, mask, loss): what a reader of the weights asks first."""
    facts = {"study": study, "run": str(Path(run_dir).absolute()), "trial_id": row["trial_id"]}
    shared = not is_missing(row.get("pretrain_shared_from"))
    for name, value in row.items():
        if name in facts or name.endswith("_curve") or value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
            continue
        if shared and name == "pretrain_time_s":  # the time of reading the shared checkpoint: not pre-training's
            continue
        facts[name] = value.tolist() if hasattr(value, "tolist") else value  # numpy -> json
    facts["model"] = experiment.model.model_dump(mode="json")
    facts["pretrain"] = experiment.pretrain.model_dump(mode="json")
    return facts
