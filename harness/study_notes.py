"""Notes on a valid study file: what it sets that its trials will not do as written. A run
prints them and goes on (a bad file is refused by study_file.load_study instead)."""
from __future__ import annotations

from pathlib import Path

from .study import DEFAULT_SCALE, Experiment, FinetuneSpec, Study
from .study_file import is_under, points_to_check, read_raw, study_at_scale, unused_settings


def study_notes(path: str | Path, scale: str = DEFAULT_SCALE) -> list[str]:
    """What a (valid) study file sets that its trials will not do as written, worth a line before it
    runs: settings no trial reads (`knn_k` under a linear probe; `evaluate.epochs` under
    fine-tuning, which reads `evaluate.finetune.epochs`), and a warm-up longer than the training,
    which never reaches the peak rate (the reference's schedule refuses one). A top-level setting
    that only the `cpu` scale reads is not noted at another scale that changes the protocol."""
    path = Path(path)
    raw, scales = read_raw(path, scale)
    study = study_at_scale(raw, scales, scale, path, check_paths=False)
    overridden = [str(key) for key in scales.get(scale) or {}] if scale != DEFAULT_SCALE else []
    top_unread = _unread(study_at_scale(raw, scales, DEFAULT_SCALE, path, check_paths=False)) if overridden else {}
    notes = [f"{path}: {name}: set, but no trial reads it: {why}" for name, why in _unread(study).items()
             if not overridden or name in top_unread or is_under(name, overridden)]
    notes += [f"{path}: {note}" for point in points_to_check(study.sweep) for note in _schedule_notes(study.experiment(point))]
    notes += [f"{path}: {note}" for note in _sweep_notes(study)]
    res = study.resources
    if res.loader_processes() >= res.cpus_per_worker:  # auto leaves one CPU to the worker itself
        notes.append(f"{path}: resources.loader_workers: {res.loader_processes()} loader processes beside each worker "
                     f"of {res.cpus_per_worker:g} CPU(s): they and the training share those CPUs "
                     "(auto: cpus_per_worker - 1 on GPUs)")
    return list(dict.fromkeys(notes))


def _sweep_notes(study: Study) -> list[str]:
    """Sweep settings that do nothing, or likely the opposite of what was meant."""
    sweep, notes = study.sweep, []
    if "mode" not in sweep.model_fields_set and "loss" in sweep.metric:
        notes.append(f"sweep.mode: max (the default) ranks the highest {sweep.metric} best; set mode: min")
    if sweep.method == "grid" and "num_samples" in sweep.model_fields_set:
        notes.append("sweep.num_samples: a grid runs each point once per seed; num_samples is for method: optuna")
    epochs = max(study.experiment(point).pretrain.epochs for point in points_to_check(sweep))
    if sweep.early_stopping and sweep.early_stopping.grace_period >= epochs:
        notes.append(f"sweep.early_stopping.grace_period: {sweep.early_stopping.grace_period} is not before the last "
                     f"pre-training epoch ({epochs}): no trial is stopped early")
    return notes


def _schedule_notes(experiment: Experiment) -> list[str]:
    """A stage whose warm-up outlasts its training: the learning rate never reaches its peak."""
    stages = [("pretrain", experiment.pretrain)] if experiment.pretrain.trains else []
    stages += [("evaluate.finetune", experiment.evaluate.finetune)] if experiment.evaluate.protocol == "finetune" else []
    notes = []
    for stage, schedule in stages:
        if schedule.warmup_epochs > schedule.epochs:
            default = type(schedule).model_fields["warmup_epochs"].default
            notes.append(f"{stage}.warmup_epochs: {schedule.warmup_epochs}"
                         f"{' (the default)' if schedule.warmup_epochs == default else ''} warm-up epochs in "
                         f"{schedule.epochs} of training: the learning rate never reaches {stage}.lr")
    return notes


def _unread(study: Study) -> dict[str, str]:
    """The dotted paths the study sets outside its sweep that none of its trials reads, and why."""
    experiments = [study.experiment(point) for point in points_to_check(study.sweep)]
    found = {}
    for name in sorted(set.intersection(*(_set_but_unread(study, experiment) for experiment in experiments))):
        if name.startswith("evaluate."):
            protocols = sorted({experiment.evaluate.protocol for experiment in experiments})
            field = name.split(".")[1]
            hint = (f"; fine-tuning reads evaluate.finetune.{field}"
                    if protocols == ["finetune"] and field in FinetuneSpec.model_fields else "")
            found[name] = f"evaluate.protocol {' / '.join(protocols)} never uses it{hint}"
        else:
            methods = sorted({experiment.pretrain.method for experiment in experiments})
            found[name] = f"no trial pre-trains (pretrain.method {' / '.join(methods)})"
    return found


def _set_but_unread(study: Study, experiment: Experiment) -> set[str]:
    """The dotted paths the study file sets outside its sweep that `experiment` never reads."""
    unread = unused_settings(experiment)
    given = study.model_dump(include={"model", "pretrain", "evaluate"}, exclude_unset=True)
    return {name for name in _leaf_paths(given) if is_under(name, unread)}


def _leaf_paths(tree: dict, prefix: str = "") -> list[str]:
    paths = []
    for key, value in tree.items():
        paths += _leaf_paths(value, f"{prefix}{key}.") if isinstance(value, dict) and value else [f"{prefix}{key}"]
    return paths
