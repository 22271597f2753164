"""`harness run | report | data synth`: the command line. Bad input exits 2 with one line."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Callable

from .results import TRIALS_FILE, StorageError
from .sources import DataError
from .study import DEFAULT_SCALE, SCALES, Distribution, StudyError
from .study_file import DataRead, data_sources, load_study, weight_files
from .study_notes import study_notes


def _masks_as_run(study, points: list[dict]) -> list[str]:
    """What each pre-training mask covers of the model's tokens: masks take int(ratio x count)
    patches, so on a small grid the ratio run differs from the one asked (tiny, tube 0.9: 14 of 16)."""
    from models import make_mask

    from .trial import sweep_point

    lines: dict[tuple, str] = {}
    for point in points:
        experiment = study.experiment(sweep_point(point))
        mask, grid = experiment.pretrain.mask, experiment.model.build().grid
        key = (mask.strategy, mask.ratio, grid)
        if experiment.pretrain.trains and key not in lines:
            sample = make_mask(mask.strategy, 1, grid, mask.ratio)
            masked, tokens = int(sample.sum()), sample.numel()
            lines[key] = f"  mask {mask.strategy} {mask.ratio:g}: {masked} of {tokens} tokens ({masked / tokens:.4g})"
    return list(lines.values())


def _run(args: argparse.Namespace) -> int:
    study = load_study(args.study, args.scale, check_paths=not args.dry_run)
    for note in study_notes(args.study, args.scale):
        print(f"note: {note}", file=sys.stderr)
    from .sweep import trial_points

    if args.dry_run:
        print(f"study {study.name} at scale {study.scale}: {study.trial_count()} trials")
        points = trial_points(study)
        for point in points:
            print("  " + json.dumps(point))
        for line in _masks_as_run(study, points):
            print(line)
        if study.sweep.method == "optuna":
            print(f"  drawn by Optuna (TPE, seed {study.sweep.sampler_seed}) to {study.sweep.mode}imize "
                  f"{study.sweep.metric}: {study.sweep.num_samples} draws, each on seed{'s' if len(study.seeds) > 1 else ''} "
                  f"{', '.join(map(str, study.seeds))}, from:")
            for name, values in study.sweep.parameters.items():
                drawn = values.model_dump() if isinstance(values, Distribution) else values
                if isinstance(values, Distribution) and values.type == "int":
                    drawn.update(low=int(values.low), high=int(values.high))
                print(f"    {name}: {drawn}")
        if study.sweep.early_stopping:
            stop = study.sweep.early_stopping
            print(f"  ASHA stops trials early on the pre-training loss: first at epoch {stop.grace_period}, "
                  f"keeping the best 1/{stop.reduction_factor:g} at each rung")
        res, reads = study.resources, data_sources(study)
        print(f"each trial: {res.workers_per_trial} worker(s) x {res.cpus_per_worker:g} CPU, "
              f"{res.gpus_per_worker:g} GPU, {res.loader_processes()} loader process(es) each; "
              f"pre-train {_epochs(reads)} epochs on "
              f"{_sources(reads, 'pretrain')}, evaluate "
              f"({_across_trials(reads, 'evaluate', lambda read: read.experiment.evaluate.protocol, '')}) "
              f"on {_sources(reads, 'evaluate')}")
        for field, weights in dict.fromkeys((read.field, read.path) for read in weight_files(study)):
            print(f"  {field}: starts from {weights}")
            if not Path(weights).exists():
                print(f"note: {field}: {weights} does not exist on this machine; "
                      "a run needs it on every node", file=sys.stderr)
        _note_missing_paths(reads)
        return 0
    from .sweep import run_study

    _outside_job_copy("--runs", args.runs)
    if args.storage and "://" not in args.storage:
        _outside_job_copy("--storage", args.storage)
    run_dir, failed, unfinished = run_study(study, args.runs, address=args.address, restart=args.restart,
                                            verbose=args.verbose, source=args.study, storage=args.storage)
    if (run_dir / TRIALS_FILE).exists():
        print(f"report: harness report {shlex.quote(str(run_dir))}")  # a line to paste, spaces and all
    if unfinished:
        print(f"interrupted: {unfinished} trial(s) did not finish; run the same command again to resume",
              file=sys.stderr)
        return 130
    return 1 if failed else 0


def _across_trials(reads: list[DataRead], stage: str, value: Callable[[DataRead], Any], none: str) -> str:
    """`value` of each trial's read in `stage` (a sweep may vary it; a scratch trial pre-trains
    nothing), the distinct ones in first-use order; `none` when no trial has the stage."""
    values = [str(value(read)) for read in reads if read.stage == stage
              and (stage == "evaluate" or read.experiment.pretrain.trains)]
    return " | ".join(dict.fromkeys(values)) or none


def _sources(reads: list[DataRead], stage: str) -> str:
    return _across_trials(reads, stage, lambda read: read.source, "nothing (no trial pre-trains)")


def _epochs(reads: list[DataRead]) -> str:
    return _across_trials(reads, "pretrain", lambda read: read.experiment.pretrain.epochs, "0")


def _note_missing_paths(reads: list[DataRead]) -> None:
    """A dry run may be planning for a cluster, where the data lives: name what is missing here."""
    from .sources import missing_path

    missing = {(read.field, missing_path(read.source)) for read in reads}
    for field, path in sorted((field, path) for field, path in missing if path):
        print(f"note: {field}: data path {path} does not exist on this machine; "
              "a run needs it on every node", file=sys.stderr)


def _outside_job_copy(option: str, path: str) -> None:
    """Refuse a folder in the copy of its working dir that Ray makes for a job (`ray job submit
    --working-dir .`, which runs the command there): Ray deletes that copy, and a resubmitted job
    gets a new one, so results written there would be lost and a rerun would not resume."""
    where = Path(path).resolve()
    if {"runtime_resources", "working_dir_files"} <= set(where.parts):
        raise StudyError(f"{option} {path}: {where} is in the copy of its working dir that Ray made for this job, "
                         f"which Ray deletes; give {option} an absolute path that outlives the job "
                         f"(shared storage), e.g. {option} /shared/{Path(path).name}")


CREATED: list[Path] = []  # output folders this command made: removed again if it fails with them empty


def _output_folder(option: str, path: str) -> Path:
    """Make an output folder before any work, so that a path that cannot be one is a line naming the option."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise StudyError(f"{option} {folder}: is a file, not a folder")
    made = next((p for p in reversed([folder, *folder.parents]) if not p.exists()), None)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StudyError(f"{option} {folder}: cannot create this folder ({error.strerror})") from None
    if made:  # innermost first
        CREATED.extend(p for p in [folder, *folder.parents] if p == made or made in p.parents)
    return folder


def _remove_empty_outputs() -> None:
    """The output folders this command made and left empty (it failed first), innermost first."""
    for folder in CREATED:
        try:
            folder.rmdir()
        except OSError:  # not empty, or gone
            pass


def _report(args: argparse.Namespace) -> int:
    from .report import replaced_run, write_report

    folders = []
    for given in map(Path, args.runs):  # a runs folder stands for every study run in it
        inside = sorted(p for p in given.glob("*") if (p / TRIALS_FILE).is_file())
        folders += inside if inside and not (given / TRIALS_FILE).exists() else [given]
    _outside_job_copy("--out", args.out)
    out = _output_folder("--out", args.out)
    for run_dir in [] if args.replace else folders:  # all checked before any is written
        if reason := replaced_run(run_dir, out):
            raise StudyError(f"report {run_dir}: {reason}; write it elsewhere with --out DIR, or over it with --replace")
    for run_dir in folders:
        html = write_report(run_dir, out)
        print(f"wrote {html} and {html.with_suffix('.md')}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from .report import status_table

    print(status_table(Path(args.run)))
    return 0


def _ls(args: argparse.Namespace) -> int:
    from .report import runs_table

    if args.runs and args.runs_option and Path(args.runs) != Path(args.runs_option):
        print(f"harness: two runs folders given ({args.runs}, {args.runs_option}); give one", file=sys.stderr)
        return 2
    print(runs_table(Path(args.runs or args.runs_option or "runs")))
    return 0


def _progress(done: int, total: int) -> None:
    """One line redrawn on a terminal; in a log, a line at every tenth of the way."""
    if sys.stdout.isatty():
        print(f"\r{done}/{total} clips", end="\n" if done == total else "", flush=True)
    elif done == total or done * 10 // total != (done - 1) * 10 // total:
        print(f"{done}/{total} clips", flush=True)


def _synth(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from .study import SynthSpec
    from .study_file import first_error
    from .synth import DECORD_UNREADABLE_WIDTHS, DOMAINS, PARAMS_FILE, SynthParams, generate, unreadable_widths

    if args.domain not in DOMAINS:
        raise StudyError(f"data synth: unknown domain {args.domain!r}; choose from {list(DOMAINS)}")
    options = {"train_clips": "--clips", "val_clips": "--val-clips", "seed": "--seed", "background": "--background",
               "distractors": "--distractors", "noise": "--noise", "speed": "--speed", "camera": "--camera"}
    try:  # the same bounds as a study file's `synth:` settings
        spec = SynthSpec(**{field: getattr(args, option[2:].replace("-", "_")) for field, option in options.items()})
    except ValidationError as error:
        field, message = first_error(error).split(": ", 1)
        raise StudyError(f"data synth: {options[field]}: {message}") from None
    for option, value, least in (("--frames", args.frames, 1), ("--size", args.size, 8)):
        if value < least:
            raise StudyError(f"data synth: {option}: must be at least {least}, not {value}")
    if args.size in DECORD_UNREADABLE_WIDTHS:
        raise StudyError(f"data synth: --size: decord cannot decode frames {args.size} pixels wide "
                         f"({unreadable_widths()}); choose another size")
    out = _output_folder("data synth: --out", args.out)
    if any(out.iterdir()) and not (out / PARAMS_FILE).exists():  # not a domain made here
        raise StudyError(f"data synth: --out {out}: holds other files; give a new or empty folder")
    params = SynthParams(domain=args.domain, frames=args.frames, size=args.size, **spec.model_dump())
    manifest = generate(params, out, progress=_progress)
    print(f"wrote {manifest}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from .prepare import holding, inspect_source
    from .sources import COLUMNS, absolute_source, resolve_source

    if args.decode < 0:
        raise StudyError(f"data check: --decode: must be 0 or more, not {args.decode}")
    if args.manifest and Path(args.manifest).suffix.lower() not in (".csv", ".parquet"):
        raise StudyError(f"data check: --manifest {args.manifest}: must be a .csv or .parquet file")
    source = absolute_source(args.source, Path.cwd())
    try:
        table = resolve_source(source, progress=_progress)
    except DataError as error:  # the source named once, first
        message = str(error).removeprefix(f"{source}: ")
        named = message == str(error) and source.split("?")[0] in message
        raise DataError(f"data check{'' if named else ' ' + source}: {message}") from None
    print(f"{source}: {holding(table)}", flush=True)
    lines, readable = inspect_source(table, args.decode, progress=_progress if args.decode >= 100 else None)
    for line in lines:
        print(line, flush=True)
    if args.manifest:
        if args.manifest.lower().endswith(".csv"):
            table[COLUMNS].to_csv(args.manifest, index=False)
        else:
            table[COLUMNS].to_parquet(args.manifest, index=False)
        print(f"wrote {args.manifest}: read it with manifest:{Path(args.manifest).absolute()}")
    return 0 if readable else 1


def _export(args: argparse.Namespace) -> int:
    from .export import export_trial, summary

    _outside_job_copy("--out", args.out)
    out = _output_folder("export: --out", args.out)
    earlier = _exported(out)
    row, written = export_trial(Path(args.run), out, args.trial, args.format)
    print(f"{summary(row)}: wrote {', '.join(str(path) for path in written)}")
    if earlier and earlier != (row["study"], row["trial_id"]):  # a study may start from that folder (pretrain.init)
        print(f"  replaced the export of {earlier[0]} trial {earlier[1]} that was there", flush=True)
    if args.format == "hf":
        print(f"load it with transformers.VideoMAEForPreTraining.from_pretrained({str(out)!r}), "
              f"or start a study from it with pretrain.init: {out}")
    return 0


def _exported(out: Path) -> tuple[str, str] | None:
    """The study and trial whose export `out` holds (its harness.json), if any."""
    try:
        facts = json.loads((out / "harness.json").read_text())
        return facts["study"], facts["trial_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="harness", description="VideoMAE ablation harness on Ray.")
    commands = main.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a study file's trials (resumes an interrupted study)")
    run.add_argument("study", help="study YAML file, e.g. studies/mask_ratio.yaml")
    run.add_argument("--scale", choices=SCALES, default=DEFAULT_SCALE, help="named scale (default: cpu)")
    run.add_argument("--runs", default="runs", help="folder for results (default: ./runs)")
    run.add_argument("--storage", default=None,
                     help="where Ray keeps checkpoints and trial state, for multi-node runs: a shared path or a "
                          "pyarrow URI (s3://bucket/path, gs://...); default: the run folder")
    run.add_argument("--address", default=None, help="Ray cluster to join (default: RAY_ADDRESS or a local Ray)")
    run.add_argument("--restart", action="store_true",
                     help="move this study's earlier run aside (to <runs>/<study>.<date>-<time>) and start over")
    run.add_argument("--dry-run", action="store_true", help="print the trials and resources; run nothing")
    run.add_argument("--verbose", action="store_true", help="show the Ray workers' own log lines and Ray's own notices")
    run.set_defaults(handler=_run)

    report = commands.add_parser("report", help="write reports/<study>.html and .md from a run folder")
    report.add_argument("runs", nargs="+",
                        help="run folders, e.g. runs/mask_ratio, or a runs folder for all of its studies")
    report.add_argument("--out", default="reports", help="output folder (default: ./reports)")
    report.add_argument("--replace", action="store_true",
                        help="write over a report in --out made from another run of the study "
                             "(other settings, or more finished trials), rows and all")
    report.set_defaults(handler=_report)

    status = commands.add_parser("status", help="one study's finished trials, best first")
    status.add_argument("run", help="a run folder, e.g. runs/mask_ratio")
    status.set_defaults(handler=_status)

    listing = commands.add_parser("ls", help="the studies under a runs folder")
    listing.add_argument("runs", nargs="?", default=None, help="runs folder (default: ./runs)")
    listing.add_argument("--runs", dest="runs_option", default=None, metavar="RUNS",
                         help="the same, spelled as for harness run")
    listing.set_defaults(handler=_ls)

    export = commands.add_parser("export", help="a trial's pre-trained model as a Hugging Face folder or an official "
                                                "VideoMAE checkpoint")
    export.add_argument("run", help="a run folder, e.g. runs/mask_ratio")
    export.add_argument("--out", required=True, help="output folder")
    export.add_argument("--trial", default=None, metavar="ID",
                        help="trial_id from trials.parquet (default: the best finished trial that pre-trained)")
    export.add_argument("--format", choices=("hf", "official"), default="hf",
                        help="hf: config.json + model.safetensors for transformers' VideoMAEForPreTraining "
                             "(default); official: checkpoint.pth in the official VideoMAE code's layout")
    export.set_defaults(handler=_export)

    data = commands.add_parser("data", help="data tools").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="write a synthetic domain as mp4 files plus manifest.csv")
    synth.add_argument("domain", help="motion | appearance | scenes")
    synth.add_argument("--clips", type=int, default=512, help="train clips (default 512)")
    synth.add_argument("--val-clips", type=int, default=256, help="val clips (default 256)")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--frames", type=int, default=16, help="frames per clip (default 16)")
    synth.add_argument("--size", type=int, default=32, help="frame side in pixels (default 32)")
    synth.add_argument("--seed", type=int, default=0, help="the same seed and options give the same clips (default 0)")
    synth.add_argument("--background", choices=("black", "texture", "image"), default="black",
                       help="behind the objects: black, smooth colour noise, or a real video frame (default black)")
    synth.add_argument("--distractors", type=int, default=0, help="unlabelled moving objects per clip (default 0)")
    synth.add_argument("--noise", type=float, default=0.0,
                       help="std of per-pixel Gaussian noise, in 0-1 pixel units (default 0)")
    synth.add_argument("--speed", type=float, nargs=2, default=(0.6, 1.0), metavar=("MIN", "MAX"),
                       help="range of the labelled motion's extent (default 0.6 1.0)")
    synth.add_argument("--camera", type=float, default=0.5, help="background pan, px/frame (default 0.5)")
    synth.set_defaults(handler=_synth)
    check = data.add_parser("check", help="read a data source as a study would: its clips, classes and splits, "
                                          "missing files, and a sample of clips decoded")
    check.add_argument("source", help="e.g. kinetics:/data/k400, ssv2:/data/ssv2, folder:/data/ucf101, list:FILE")
    check.add_argument("--decode", type=int, default=20, metavar="N",
                       help="clips to open and decode, a seeded random sample (default 20; 0: none)")
    check.add_argument("--manifest", default=None, metavar="FILE",
                       help="also write its manifest (path, label, split) to a .csv or .parquet file")
    check.set_defaults(handler=_check)
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code = args.handler(args)
        sys.stdout.flush()  # here, so that a pipe closed early is caught below, not reported at exit
        return code
    except (StudyError, DataError, StorageError, FileNotFoundError) as error:
        _remove_empty_outputs()
        print(f"harness: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _remove_empty_outputs()
        again = "resume" if args.command == "run" else "finish"
        print(f"interrupted: run the same command again to {again}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # piped into `head` or a pager that closed: stop quietly, as `ls | head` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's own flush would fail again
        return 141
    except OSError as error:  # the machine's, not the input's: a full disk, a lost mount
        where = f"{error.filename}: " if error.filename else ""
        print(f"harness: {where}{error.strerror or error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
