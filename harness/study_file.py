"""Study files: YAML (safe_load only) -> one validated Study, with every error one line naming
the file and the field, and the checks that need the whole sweep.

A study's top-level values are its `cpu` scale; `scales.<name>` holds dotted-path overrides
(e.g. `pretrain.epochs: 2`) applied before validation when `--scale <name>` is chosen.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import yaml
from pydantic import ValidationError

from .sources import absolute_source, check_source
from .study import (DEFAULT_SCALE, SCALES, Distribution, Experiment, PretrainSpec, Study,
                    StudyError, SweepSpec, get_path, set_path)


def first_error(error: ValidationError, prefix: str = "") -> str:
    errors = error.errors()
    # A union (a list of values or a range) reports one error per branch: keep the branch that
    # matches the input's shape, and drop the branch tags from the location.
    matching = [e for e in errors if e["type"] not in ("list_type", "model_type", "dict_type")]
    detail = (matching or errors)[0]
    where = ".".join(str(part) for part in detail["loc"]
                     if not (isinstance(part, str) and ("[" in part or part[:1].isupper())))
    message = detail["msg"].removeprefix("Value error, ")
    if detail["type"] == "extra_forbidden":
        message = "unknown key"
    if not where:  # a check across sections, whose message names its field
        return f"{prefix}{message}"
    return f"{prefix}{where}: {message}"


class _StudyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping, where YAML keeps the last
    one silently: a second `pretrain:` section would drop every setting of the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)):
                continue  # not a plain key: left to SafeLoader's own checks
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice in one mapping (first at line {first_line[key]})",
                    key_node.start_mark)
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def load_study(path: str | Path, scale: str = DEFAULT_SCALE, check_paths: bool = True) -> Study:
    """Read and validate a study file; raise StudyError with one line naming file and field.
    `check_paths=False` leaves out whether the data paths exist here (a dry run for a cluster)."""
    path = Path(path)
    raw, scales = read_raw(path, scale)
    study = study_at_scale(raw, scales, scale, path, check_paths)
    for other in sorted({DEFAULT_SCALE, *scales} - {scale}):  # a mistake in a scale not run now is one still
        study_at_scale(raw, scales, other, path, check_paths=False)
    return study


def read_raw(path: Path, scale: str) -> tuple[dict, dict]:
    """The study file's top level and its `scales:` overrides, checked to be mappings."""
    try:
        raw = yaml.load(path.read_text(), Loader=_StudyLoader)  # safe_load, refusing repeated keys
    except OSError as error:
        looked = "" if path.is_absolute() else f" (read from {Path.cwd()})"  # a Ray Job runs in a folder of its own
        raise StudyError(f"{path}: cannot read: {error.strerror}{looked}") from None
    except UnicodeDecodeError as error:
        raise StudyError(f"{path}: not a text file in UTF-8 (byte {error.start}): a study file is YAML text") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise StudyError(f"{path}: malformed YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise StudyError(f"{path}: a study file must be a mapping of keys to values")
    raw = copy.deepcopy(raw)
    scales = raw.pop("scales", {}) or {}
    if not isinstance(scales, dict) or set(scales) - set(SCALES):
        raise StudyError(f"{path}: scales: must map some of {list(SCALES)} to overrides")
    if scale not in SCALES:
        raise StudyError(f"{path}: --scale: unknown scale {scale!r}; choose from {list(SCALES)}")
    if scale != DEFAULT_SCALE and scale not in scales:
        raise StudyError(f"{path}: scales.{scale}: this study does not define the {scale!r} scale")
    return raw, scales


def study_at_scale(raw: dict, scales: dict, scale: str, path: Path, check_paths: bool) -> Study:
    """The study file's values with `scale`'s overrides, validated and checked; a mistake in an
    override is named where it is written (scales.<scale>.<key>)."""
    raw, overrides = copy.deepcopy(raw), scales.get(scale) or {}
    if not isinstance(overrides, dict):
        raise StudyError(f"{path}: scales.{scale}: must map dotted paths to values")
    for key, value in overrides.items():
        try:
            set_path(raw, str(key), value)
        except KeyError:
            raise StudyError(f"{path}: scales.{scale}.{key}: not a settable field") from None
    raw["scale"] = scale
    _absolute_paths(raw, path.absolute().parent)
    try:
        study = Study.model_validate(raw)
    except ValidationError as error:
        message = first_error(error)
        field = message.split(": ", 1)[0]
        overridden = is_under(field, [str(key) for key in overrides])
        raise StudyError(f"{path}: {f'scales.{scale}.' if overridden else ''}{message}") from None
    _check_sweep(study, path)
    _check_batches(study, path)
    repeated = repeated_points(study)
    if repeated:
        raise StudyError(f"{path}: sweep: {repeated[0]}; each seed's result would count twice (a scratch or "
                         "pretrained baseline goes in points: of its own)")
    for read in weight_files(study):
        if check_paths and not Path(read.path).exists():
            raise StudyError(f"{path}: {read.field}: {read.path} does not exist")
    for read in data_sources(study):
        problem = check_source(read.source, check_paths)
        if problem:
            raise StudyError(f"{path}: {read.field}: {problem}")
    return study


# What a trial never reads, by evaluation protocol; and of pre-training, without a pre-training
# stage, all but the method, the weights and what evaluation takes from it (stride, crop scales).
UNUSED_BY_PROTOCOL = {"linear": ("knn_k", "finetune"), "knn": ("epochs", "lr", "weight_decay", "finetune"),
                      "finetune": ("knn_k", "epochs", "lr", "weight_decay", "features")}
READ_WITHOUT_PRETRAINING = ("method", "init", "stride", "scales")


DECODER_FIELDS = ("decoder_embed_dim", "decoder_depth", "decoder_num_heads")  # pre-training's alone


def unused_settings(experiment: Experiment) -> list[str]:
    """The dotted paths a trial of `experiment` never reads."""
    unused = [f"evaluate.{name}" for name in UNUSED_BY_PROTOCOL[experiment.evaluate.protocol]]
    if not experiment.pretrain.trains:
        unused += [f"pretrain.{name}" for name in PretrainSpec.model_fields if name not in READ_WITHOUT_PRETRAINING]
        unused += [f"model.overrides.{name}" for name in DECODER_FIELDS]
    return unused


def is_under(name: str, paths: list[str]) -> bool:
    """Whether dotted path `name` is one of `paths` or lies under one."""
    return any(name == path or name.startswith(f"{path}.") for path in paths)


def is_missing(value: Any) -> bool:
    """None or NaN: a Parquet cell the trial left empty."""
    return value is None or (isinstance(value, float) and value != value)


def declared_point(study: Study, row: pd.Series) -> dict[str, Any]:
    """Trial `row`'s sweep point, typed as the study declared it: Parquet keeps an integer column
    with gaps (decoder_depth, unset on the scratch point) as floats, and a model wants 8, not 8.0."""
    point = {name: getattr(row[name], "tolist", lambda: row[name])()  # numpy scalars and arrays -> python
             for name in study.sweep.swept_names() if name in row and not is_missing(row[name])}
    for name, value in point.items():
        spec = study.sweep.parameters.get(name)
        declared = [p[name] for p in study.sweep.points if name in p] + (spec if isinstance(spec, list) else [])
        integer = spec.type == "int" if isinstance(spec, Distribution) else any(
            isinstance(v, int) and not isinstance(v, bool) for v in declared)
        if integer and isinstance(value, float) and value.is_integer():
            point[name] = int(value)
    return point


def effective_settings(trials: pd.DataFrame, study: Study) -> pd.DataFrame:
    """The rows with each swept setting that a trial's point left unset, but the trial read, filled
    with the value it ran with (the preset's width; no init: "none"), so that a comparison pairs a
    baseline only where it ran as the other side did. What a trial never reads (the mask ratio of
    a scratch trial) stays empty, and pairs with every value."""
    filled = trials.copy()
    names = [name for name in study.sweep.swept_names() if name in trials]
    for index, row in trials.iterrows():
        unset = [name for name in names if is_missing(row[name])]
        if not unset:
            continue
        experiment = study.experiment(declared_point(study, row))
        unread, settings = unused_settings(experiment), experiment.model_dump(mode="json")
        for name in (name for name in unset if not is_under(name, unread)):
            value = (getattr(experiment.model.build(), name.rsplit(".", 1)[-1], None)
                     if name.startswith("model.overrides.") else get_path(settings, name))
            if value is None and pd.api.types.is_numeric_dtype(filled[name]):
                filled[name] = filled[name].astype(object)  # "none" beside numbers: every clip, say
            filled.at[index, name] = "none" if value is None else value
    return filled


def repeated_points(study: Study) -> list[str]:
    """Grid points that differ only in settings their trials never read (e.g. a mask ratio swept
    over pretrained weights): each runs the same trials, and every seed's result would count twice."""
    seen: dict[str, dict] = {}
    notes = []
    for point in study.sweep.grid_points() if study.sweep.method == "grid" else []:
        experiment = study.experiment(point)
        settings = experiment.model_dump()
        for name in unused_settings(experiment):
            set_path(settings, name, None)
        key = json.dumps(settings, sort_keys=True, default=str)
        if key not in seen:
            seen[key] = point
            continue
        first = seen[key]
        varied = sorted(name for name in {**first, **point} if first.get(name) != point.get(name))
        notes.append(f"grid points {json.dumps(first)} and {json.dumps(point)} run the same trials: their "
                     f"method or protocol never reads {', '.join(varied)}")
    return notes


def _absolute_paths(raw: dict, base: Path) -> None:
    """Data paths and `pretrain.init` in the study file, wherever they are named, made absolute
    from the file's folder."""
    def fix(value: Any, name: str) -> Any:
        if not isinstance(value, str):
            return value
        return absolute_source(value, base) if name == "source" else os.path.normpath(base / Path(value).expanduser())
    for stage, name in (("pretrain", "source"), ("evaluate", "source"), ("pretrain", "init")):
        if isinstance(raw.get(stage), dict) and name in raw[stage]:
            raw[stage][name] = fix(raw[stage][name], name)
    sweep = raw.get("sweep") if isinstance(raw.get("sweep"), dict) else {}
    parameters = sweep.get("parameters") if isinstance(sweep.get("parameters"), dict) else {}
    points = sweep.get("points") if isinstance(sweep.get("points"), list) else []
    for mapping in [parameters, *[point for point in points if isinstance(point, dict)]]:
        for path, value in mapping.items():
            name = path.rpartition(".")[2] if isinstance(path, str) else ""
            if path in ("pretrain.source", "evaluate.source", "pretrain.init"):
                mapping[path] = [fix(v, name) for v in value] if isinstance(value, list) else fix(value, name)


def _check_sweep(study: Study, path: Path) -> None:
    for name, values in study.sweep.parameters.items():
        if isinstance(values, Distribution):  # its ends, and for a float range a fraction (an int field refuses it)
            values = [int(values.low), int(values.high)] if values.type == "int" else \
                [values.low, values.high, values.low + 0.37 * (values.high - values.low)]
        if not values:
            raise StudyError(f"{path}: sweep.parameters.{name}: needs at least one value")
        for value in values:
            _check_point(study, path, f"sweep.parameters.{name}", {name: value})
    for index, point in enumerate(study.sweep.points):
        _check_point(study, path, f"sweep.points[{index}]", point)


def _check_batches(study: Study, path: Path) -> None:
    """A global batch must split evenly over a trial's workers: 32 over 3 would train on 30 a step
    while the rows say 32."""
    workers, sweep = study.resources.workers_per_trial, study.sweep
    for point in points_to_check(sweep):
        experiment = study.experiment(point)
        batches = {"pretrain.batch_size": experiment.pretrain.batch_size,
                   "evaluate.finetune.batch_size": experiment.evaluate.finetune.batch_size}
        unread = unused_settings(experiment)  # a default of a stage the trial does not run is no matter
        for name, batch in ((name, batch) for name, batch in batches.items() if not is_under(name, unread)):
            if batch % workers:
                raise StudyError(f"{path}: {_where(sweep, name, point)}: a batch of {batch} does not split "
                                 f"evenly over resources.workers_per_trial ({workers})")


def points_to_check(sweep: SweepSpec) -> list[dict[str, Any]]:
    """A grid's points; of an Optuna sweep, the base and each listed value alone (its ranges are
    drawn at run time)."""
    return sweep.grid_points() if sweep.method == "grid" else [{}] + [
        {name: value} for name, values in sweep.parameters.items() if isinstance(values, list) for value in values]


def _check_point(study: Study, path: Path, field: str, point: dict[str, Any]) -> None:
    try:
        study.experiment(point)
    except (ValidationError, KeyError) as error:
        detail = first_error(error) if isinstance(error, ValidationError) else f"{error.args[0]}: not a field"
        value = f" value {next(iter(point.values()))!r}" if len(point) == 1 else ""
        raise StudyError(f"{path}: {field}:{value}: {detail}") from None


class DataRead(NamedTuple):
    """A stage of some trial reading a data source, and the fields a problem with it names."""
    stage: str             # pretrain | evaluate
    source: str
    experiment: Experiment  # its synth settings make the source; its clip counts ask for a subset
    field: str             # where the study file names the source
    clips_field: str       # where it asks for a subset of the train split


SUBSET_FIELD = {"pretrain": "pretrain.clips", "evaluate": "evaluate.train_clips"}  # a stage's train subset


def _where(sweep: SweepSpec, name: str, point: dict[str, Any]) -> str:
    """How an error points at a dotted field: where the study file set it for this point."""
    if name in sweep.parameters:
        return f"sweep.parameters.{name}"
    return f"sweep.points: {name}" if name in point else name


class WeightsRead(NamedTuple):
    """Trials starting from a `pretrain.init` file, with the model it must load into."""
    field: str             # where the study file names it
    path: str
    experiment: Experiment


def weight_files(study: Study) -> list[WeightsRead]:
    """Each `pretrain.init` the study's trials start from, once per model it loads into."""
    sweep, found = study.sweep, {}
    points = sweep.grid_points() if sweep.method == "grid" else [{}] + [
        {"pretrain.init": value} for value in sweep.parameters.get("pretrain.init", []) if isinstance(value, str)]
    for point in points:
        experiment = study.experiment(point)
        if experiment.pretrain.init:
            key = (experiment.pretrain.init, experiment.model.model_dump_json())
            found.setdefault(key, WeightsRead(_where(sweep, "pretrain.init", point), experiment.pretrain.init, experiment))
    return list(found.values())


def data_sources(study: Study) -> list[DataRead]:
    """Every data source the study can use (swept ones and each grid point's included), with the
    stage and the experiment that read it."""
    found, sweep = [], study.sweep
    points = sweep.grid_points() if sweep.method == "grid" else [{}]
    for point in points:
        experiment = study.experiment(point)
        for stage, clips in SUBSET_FIELD.items():
            found.append(DataRead(stage, getattr(experiment, stage).source, experiment,
                                  _where(sweep, f"{stage}.source", point), _where(sweep, clips, point)))
    for name, values in sweep.parameters.items():
        if sweep.method == "optuna" and name in ("pretrain.source", "evaluate.source") and isinstance(values, list):
            stage = name.split(".")[0]
            found += [DataRead(stage, value, study.experiment({name: value}), f"sweep.parameters.{name}",
                               _where(sweep, SUBSET_FIELD[stage], {})) for value in values]
    return found
