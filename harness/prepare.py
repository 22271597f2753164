"""Before any trial starts: make the synthetic data a study reads, and check every source its
stages read, so that a problem stops `harness run` with one line instead of failing trials."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd

from .sources import SPLITS, DataError, check_files, decode_cache_mb, resolve_source, split, stratified_subset
from .study import Study
from .study_file import DataRead, data_sources, weight_files


def prepare_data(study: Study, where: str = "") -> None:
    """Make every synthetic source the trials will read, once, and check before any trial starts
    that each source has what its stage reads: the files its manifest names (the first missing
    ones are listed), train clips, a val (or test) split to evaluate on, and as many train clips
    as a subset asks for. A problem raises DataError naming `where` (the study file) and the field.
    Pre-training on clips that evaluation scores on is noted, not refused."""
    decode_cache_mb()  # read by every trial: a bad value would fail each of them
    tables: dict[tuple, pd.DataFrame] = {}
    clips_read: list[tuple[DataRead, set[str]]] = []
    notes: list[str] = []
    for read in data_sources(study):
        if read.stage == "pretrain" and not read.experiment.pretrain.trains:
            continue  # a scratch (or pretrained) trial reads no pre-training data
        synth = read.experiment.synth_params() if read.source.startswith("synth:") else None

        def progress(finished: int, total: int, name: str = read.source) -> None:
            if finished == total or finished % max(1, total // 10) == 0:
                print(f"  making {name}: {finished}/{total} clips", flush=True)
        key = (read.source, synth)
        try:
            if key not in tables:
                tables[key] = resolve_source(read.source, synth, progress=progress)
                check_files(tables[key], read.source)
                print(f"  {read.source}: {holding(tables[key])}", flush=True)
        except DataError as error:
            made = (f"; the harness made it: remove {os.path.commonpath(list(tables[key]['path']))} and run again to "
                    "make it anew") if synth and key in tables else ""
            raise DataError(f"{where}{read.field}: {error}{made}") from None
        problem = read_problem(tables[key], read, study.resources.workers_per_trial)
        if problem:
            raise DataError(f"{where}{problem}")
        clips_read.append((read, clips_of(tables[key], read)))
        notes += read_notes(tables[key], read)
    notes += scored_clips_pretrained_on(clips_read, study.sweep.method == "optuna")
    for note in dict.fromkeys(notes):
        print(f"note: {where}{note}", file=sys.stderr, flush=True)


def check_weights(study: Study, where: str = "") -> None:
    """Load each `pretrain.init` into the model of the trials that start from it, before any
    starts: a checkpoint of another preset would fail every one of them, after its retries."""
    reads = weight_files(study)
    if not reads:
        return
    from .pretrain import build_pretrain_model  # torch: imported only for a study that names weights
    from .weights import load_init

    for read in reads:
        try:
            load_init(build_pretrain_model(read.experiment, seed=0), read.path)
        except ValueError as error:
            raise DataError(f"{where}{read.field}: {str(error).removeprefix('pretrain.init: ')}") from None
        print(f"  {read.path}: loads into the {read.experiment.model.preset} model", flush=True)


def holding(table: pd.DataFrame) -> str:
    """What a source holds, e.g. "13,320 clips of 101 classes (train 9,537, test 3,783)"."""
    splits = table["split"].value_counts()
    counts = ", ".join(f"{name} {splits[name]:,}" for name in SPLITS if name in splits)
    left_out = table.attrs.get("left_out")  # annotated clips whose video is not there (harness/layouts.py)
    gone = f"; {left_out:,} annotated clip(s) without a video here left out" if left_out else ""
    labels = table["label"]
    unused = int(labels.max()) + 1 - labels.nunique() if len(labels) else 0
    gaps = (f"; labels run {labels.min()} to {labels.max()}: {unused} of the {labels.max() + 1} numbers from 0 "
            f"{'has' if unused == 1 else 'have'} no clip (the classifier has an output for each)") if unused else ""
    return f"{_count(len(table), 'clip')} of {_count(labels.nunique(), 'class')} ({counts}){gone}{gaps}"


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}" if number == 1 else f"{number:,} {noun}{'es' if noun.endswith('s') else 's'}"


def inspect_source(table: pd.DataFrame, decode_count: int, show: int = 5,
                   progress: Callable[[int, int], None] | None = None) -> tuple[list[str], bool]:
    """Lines on whether a manifest's files can be read, and whether all can: the files missing,
    and a seeded random sample of `decode_count` clips opened and decoded (their sizes, lengths
    and frame rates, and each bad one with its reason)."""
    from .data import BadVideo, probe  # torch and decord: not for the driver's other commands

    lines = []
    classes = table["label"].nunique()
    for name, rows in table.groupby("split", sort=False)["label"]:
        if rows.nunique() < classes:  # e.g. a partial download: scores on it cannot reach every class
            lines.append(f"  {name}: clips of {rows.nunique()} of the {classes} classes")
    for label, name in table.attrs.get("empty_classes", []):
        lines.append(f"  class folder {name} (label {label}) holds no video")
    in_two = table[table.duplicated("path", keep=False)]["path"].drop_duplicates()
    if len(in_two):  # the evaluation of this source would refuse them (read_problem)
        lines.append(f"  {_count(len(in_two), 'clip')} in more than one split, e.g. {in_two.iloc[0]}: "
                     "an evaluation scored on this source would refuse it")
    missing = [path for path in table["path"] if not Path(path).is_file()]
    if missing:
        lines.append(f"  missing: {len(missing):,} of {len(table):,} files, e.g. {', '.join(missing[:show])}")
    present = table[~table["path"].isin(set(missing))]
    sample = present.sample(n=min(decode_count, len(present)), random_state=0)["path"] if decode_count else []
    probes, bad = [], []
    for done, path in enumerate(sample, start=1):
        try:
            with quiet_stderr():
                probes.append(probe(path))
        except BadVideo as error:
            bad.append(f"  bad: {path}: {error}")
        if progress:
            progress(done, len(sample))
    if probes:
        lengths, heights, widths, rates = zip(*probes)
        by_area = sorted(zip(widths, heights), key=lambda size: size[0] * size[1])
        smallest, largest = (f"{width}x{height}" for width, height in (by_area[0], by_area[-1]))
        lines.append(f"  decoded {len(probes)} of {len(sample)} sampled clips: {_range(smallest, largest)} px, "
                     f"{_range(min(lengths), max(lengths))} frames, {_range(f'{min(rates):.3g}', f'{max(rates):.3g}')} fps")
    return lines + bad, not missing and not bad and in_two.empty


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """Leave out what decord and FFmpeg write to the process's stderr themselves on a bad file
    (e.g. "video_reader.cc:83: ERROR opening: ..."): the line printed for it gives the reason."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _range(low: object, high: object) -> str:
    return str(low) if low == high else f"{low} to {high}"


def read_problem(table: pd.DataFrame, read: DataRead, workers: int = 1) -> str | None:
    """What keeps a stage from reading this source's manifest as the study asks (with `workers`
    per trial), or None."""
    train = split(table, "train")
    if train.empty:
        return f"{read.field}: {read.source} has no clips in its train split"
    if read.stage == "evaluate":
        held_out = split(table, "val")
        if held_out.empty:
            return f"{read.field}: {read.source} has no val (or test) split to evaluate on"
        both = sorted(set(train["path"]) & set(held_out["path"]))
        if both:  # the probe would be scored on clips it was trained on
            return (f"{read.field}: {read.source}: {len(both)} clip(s) are in both the train split and the "
                    f"{held_out['split'].iloc[0]} split it is scored on, e.g. {both[0]}")
    asked = read.experiment.pretrain.clips if read.stage == "pretrain" else read.experiment.evaluate.train_clips
    if asked and asked > len(train):
        return f"{read.clips_field}: asks for {asked} clips, {read.source} has {len(train)} in its train split"
    trains = read.stage == "pretrain" or read.experiment.evaluate.protocol == "finetune"
    clips = asked or len(train)
    if trains and clips < workers:  # a worker with no clip would run no step, and fail
        field, where = (read.clips_field, "") if asked else (read.field, f"{read.source} has ")
        return (f"{field}: {where}{clips} train clip(s), fewer than resources.workers_per_trial "
                f"({workers}): a worker would have none to train on")
    return None


def read_notes(table: pd.DataFrame, read: DataRead) -> list[str]:
    """What a stage will do otherwise than its settings say, on this source: a batch larger than
    the clips it learns from (each step takes them all, at the rate set for the batch), fewer
    labelled clips than classes, more kNN neighbours than labelled clips, and a class the train
    or scored split lacks."""
    experiment, notes = read.experiment, []
    train = split(table, "train")
    asked = experiment.pretrain.clips if read.stage == "pretrain" else experiment.evaluate.train_clips
    clips = min(asked or len(train), len(train))
    protocol = experiment.evaluate.protocol
    batch_field = "pretrain.batch_size" if read.stage == "pretrain" else "evaluate.finetune.batch_size"
    batch = experiment.pretrain.batch_size if read.stage == "pretrain" else experiment.evaluate.finetune.batch_size
    if (read.stage == "pretrain" or protocol == "finetune") and batch > clips:
        notes.append(f"{batch_field}: a batch of {batch} is more than the {clips} clip(s) {read.source} gives "
                     f"{'pre-training' if read.stage == 'pretrain' else 'fine-tuning'}: each step takes those, "
                     "at the learning rate set for the batch")
    if read.stage != "evaluate":
        return notes
    classes = table["label"].nunique()
    if clips < classes:
        notes.append(f"{read.clips_field}: {clips} labelled clip(s) of {read.source}'s {classes} classes: "
                     "some classes have none to learn from")
    if protocol == "knn" and experiment.evaluate.knn_k > clips:
        notes.append(f"evaluate.knn_k: {experiment.evaluate.knn_k} neighbours of {clips} labelled clip(s) of "
                     f"{read.source}: every labelled clip votes")
    scored = split(table, "val")
    if read.source.startswith("synth:"):  # labels drawn clip by clip: a smoke-sized split may lack one
        return notes
    for name, rows in (("train", train), (scored["split"].iloc[0] if len(scored) else "val", scored)):
        if 0 < rows["label"].nunique() < classes:  # its scores cannot reach every class
            notes.append(f"{read.field}: {read.source}'s {name} split has clips of {rows['label'].nunique()} "
                         f"of the {classes} classes")
    return notes


def clips_of(table: pd.DataFrame, read: DataRead) -> set[str]:
    """The files a stage learns from (pre-training: its train subset) or scores on (evaluation)."""
    if read.stage == "pretrain":
        return set(stratified_subset(split(table, "train"), read.experiment.pretrain.clips)["path"])
    return set(split(table, "val")["path"])


def scored_clips_pretrained_on(clips_read: list[tuple[DataRead, set[str]]], any_pair: bool) -> list[str]:
    """A line for each pre-training source that holds clips an evaluation of the same trials scores
    on (e.g. a list of every UCF101 video, evaluated on UCF101's test split): the paper pre-trains
    on the train split only. Grid reads pair within a point; an Optuna sweep can draw any pair."""
    notes: dict[tuple[str, str], str] = {}
    for pretrain, learnt in ((r, c) for r, c in clips_read if r.stage == "pretrain"):
        for evaluate, scored in ((r, c) for r, c in clips_read if r.stage == "evaluate"):
            both = learnt & scored
            if both and (any_pair or pretrain.experiment is evaluate.experiment):
                notes.setdefault((pretrain.source, evaluate.source), (
                    f"{pretrain.field}: {pretrain.source} pre-trains on {len(both)} clip(s) that {evaluate.field} "
                    f"{evaluate.source} scores on, e.g. {min(both)}; the paper pre-trains on the train split only"))
    return list(notes.values())
