"""`harness export`: a finished trial's pre-trained VideoMAE as files other code reads: a Hugging
Face model folder (`VideoMAEForPreTraining.from_pretrained`, or `VideoMAEForVideoClassification`
to fine-tune its encoder), or a checkpoint in the official VideoMAE code's layout (its fine-tuning
script's `--finetune`). Either is also a `pretrain.init` for another study."""
from __future__ import annotations

import json
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
PROVENANCE_FILE = "harness.json"  # which study, trial and result the weights came from


def export_trial(run_dir: Path, out: Path, trial: str | None = None, fmt: str = "hf") -> tuple[pd.Series, list[Path]]:
    """Write the pre-trained weights of `trial` (default: the best finished trial with a
    pre-training stage, by the study's metric) into `out`; the trial's row and the files written."""
    trials, study = read_trials(run_dir), saved_study(run_dir)
    if study is None:
        raise StudyError(f"{run_dir}: no study.json: not a run folder `harness run` made")
    if out.is_dir() and any(out.iterdir()) and not (out / PROVENANCE_FILE).exists():  # not an earlier export
        raise StudyError(f"export: --out {out}: holds other files; give a new or empty folder")
    row = chosen_trial(trials, trial, run_dir, study.sweep.metric, study.sweep.mode)
    trained = pretrained_model(run_dir, study, row)  # loaded into the study's model before anything is written
    if trained is None:
        raise StudyError(f"{run_dir}: trial {row['trial_id']}: its pre-training checkpoint ({pretrain_run(row)}) "
                         "is not there any more, or its storage cannot be read from here")
    model, experiment, checkpoint = trained
    config, state = model.config, model.state_dict()
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "hf":
        from safetensors.torch import save  # a dependency of timm

        hf_config = {"architectures": ["VideoMAEForPreTraining"], "model_type": "videomae",
                     **transformers_config(config, use_mean_pooling=False,
                                           norm_pix_loss=experiment.pretrain.loss != "mse_raw")}
        (out / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        tensors = {name: value.contiguous() for name, value in to_transformers(state).items()}
        (out / "model.safetensors").write_bytes(save(tensors, metadata={"format": "pt"}))  # transformers asks "pt"
        written = [out / "config.json", out / "model.safetensors"]
    elif fmt == "official":
        torch.save({"model": to_official(state), "epoch": checkpoint.get("epoch")}, out / "checkpoint.pth")
        written = [out / "checkpoint.pth"]
    else:
        raise StudyError(f"export: --format {fmt}: choose from {', '.join(FORMATS)}")
    facts = provenance(study.name, run_dir, row, experiment)
    (out / PROVENANCE_FILE).write_text(json.dumps(facts, indent=2, default=str) + "\n")
    return row, [*written, out / PROVENANCE_FILE]


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
