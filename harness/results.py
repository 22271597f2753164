"""Result rows -> Parquet, one row per trial, appended by atomic replace (temp file + rename)."""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
TRIALS_FILE = "trials.parquet"  # one row per finished trial
EPOCHS_FILE = "epochs.parquet"  # one row per pre-training epoch of each trial
STUDY_FILE = "study.json"      # the validated study, written into the run folder by `harness run`
EXPERIMENTS_FILE = "experiments.json"  # the run folder's Tune experiments and the seeds each runs


FAULT_ENV = "VIDEOMAE_HARNESS_FAULT"  # fault injection for the interruption tests only
MIN_FREE_BYTES = 200 * 2 ** 20  # below this a study would fail mid-way writing checkpoints


class StorageError(OSError):
    """Results cannot be written where asked: the message is one line naming the place."""


def check_storage(runs_root: str | Path, min_free: int = MIN_FREE_BYTES) -> None:
    """Fail before any trial starts if `runs_root` cannot be written or its disk is (nearly)
    full. Writes nothing under `runs_root`: it probes the nearest folder that exists."""
    target = Path(runs_root).absolute()
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir():
        raise StorageError(f"--runs {target}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise StorageError(f"--runs {target}: cannot write in {existing}: {error.strerror}") from None
    free = shutil.disk_usage(existing).free
    if free < min_free:
        raise StorageError(f"--runs {target}: only {free / 2 ** 20:.0f} MiB free on its disk "
                           f"(a study needs at least {min_free / 2 ** 20:.0f} MiB for checkpoints and results)")


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold a run folder for one `harness run` at a time: a second one ran every trial again,
    writing the same Tune state and checkpoints as the first. The lock is the kernel's, on a file
    named after the folder in the temp folder (nothing is written under --runs before the
    checks pass), so a driver killed with kill -9 leaves none behind."""
    folder = Path(tempfile.gettempdir()) / f"videomae-harness-locks-{os.getuid()}"
    folder.mkdir(exist_ok=True)
    path = folder / f"{hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]}.lock"
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            raise StorageError(f"{run_dir}: another harness run (pid {holder}) is running this study; "
                               "wait for it to end, or give --runs another folder") from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        yield


def upsert_rows(path: str | Path, rows: list[dict], key: str = "trial_id") -> pd.DataFrame:
    """Write `rows` into the Parquet file at `path`, replacing earlier rows with the same key.

    A reader sees the old file or the new one, never a partial write."""
    path = Path(path)
    new = pd.DataFrame(rows)
    if path.exists():
        old = pd.read_parquet(path)
        new = pd.concat([old[~old[key].isin(new[key])], new], ignore_index=True)
    table = pa.Table.from_pandas(new, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           b"videomae_harness_schema": str(SCHEMA_VERSION).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    pq.write_table(table, partial)
    if os.environ.get(FAULT_ENV) == f"kill-while-replacing:{path.name}" and path.exists():
        os.kill(os.getpid(), signal.SIGKILL)  # tests: the driver dies between the write and the rename
    os.replace(partial, path)
    return new


def final_rows(run_dir: Path) -> pd.DataFrame:
    """The trial id and seed of each trial whose row is final: finished (ok, diverged or stopped).
    A failed row is replaced if a resumed run of that trial finishes."""
    path = run_dir / TRIALS_FILE
    if not path.exists():
        return pd.DataFrame({"trial_id": [], "seed": []})
    rows = pd.read_parquet(path, columns=["trial_id", "seed", "status"])
    return rows.loc[rows["status"] != "failed", ["trial_id", "seed"]]


def recorded_trials(run_dir: Path) -> set[str]:
    return set(final_rows(run_dir)["trial_id"])


def recorded_count(run_dir: Path, seeds: list[int]) -> int:
    """How many trials of these seeds have a final row."""
    return int(final_rows(run_dir)["seed"].isin(seeds).sum())


RESUME_IGNORES = ("description", "resources")  # may change between runs of a study: no result depends on them


def settings_changed(run_dir: str | Path, settings: dict) -> list[str]:
    """The settings (dotted paths, with the values when short; `scale` first) in which `settings`
    differ from the study that the run folder was made from; [] for a new folder. A path only
    one side has (a field a later version added) is not compared."""
    path = Path(run_dir) / STUDY_FILE
    if not path.exists():  # with results beside it, whatever made them is unknown: not resumed as this study
        return [f"{STUDY_FILE} is missing"] if (Path(run_dir) / TRIALS_FILE).exists() else []
    before = read_json(path)
    keys = sorted(set(before) & set(settings) - set(RESUME_IGNORES), key=lambda key: (key != "scale", key))
    return [change for key in keys for change in _differences(before[key], settings[key], key)]


def added_seeds(run_dir: str | Path, settings: dict) -> list[int]:
    """The seeds `settings` adds to the grid study the run folder was made from, when nothing
    else changed: its finished trials are kept and only the new seeds' trials run (more seeds to
    narrow an interval). [] for a new folder, fewer seeds, or any other change."""
    path = Path(run_dir) / STUDY_FILE
    if not path.exists() or settings["sweep"]["method"] != "grid":
        return []
    before = read_json(path).get("seeds", [])
    if not set(before) < set(settings["seeds"]) or settings_changed(run_dir, {**settings, "seeds": before}):
        return []
    return [seed for seed in settings["seeds"] if seed not in before]


def tune_experiments(run_dir: str | Path) -> list[dict]:
    """The Tune experiments in a run folder, in order, as {"name", "seeds"}: "tune" with the
    seeds the study was first run with, then one for each time seeds were added. [] if none."""
    path, study = Path(run_dir) / EXPERIMENTS_FILE, Path(run_dir) / STUDY_FILE
    if path.exists():
        return read_json(path)
    return [{"name": "tune", "seeds": read_json(study)["seeds"]}] if study.exists() else []


def read_json(path: Path) -> Any:
    """A JSON file the harness wrote into a run folder; StorageError naming it if it is damaged."""
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        raise StorageError(f"{path}: damaged, not the JSON the harness wrote ({str(error).splitlines()[0][:80]}); "
                           "restore it, or start the study over with --restart (the run folder is set aside)") from None


def write_atomically(path: Path, text: str) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(text)
    os.replace(partial, path)


def _differences(old: object, new: object, path: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [change for key in sorted(set(old) & set(new))
                for change in _differences(old[key], new[key], f"{path}.{key}")]
    if old == new:
        return []
    short = all(isinstance(v, (str, int, float, bool, type(None))) and len(str(v)) <= 24 for v in (old, new))
    return [f"{path} {old} -> {new}" if short else path]


def set_aside(run_dir: str | Path) -> Path | None:
    """Move a study's earlier run folder to <name>.<date-time> (where `harness report` still
    reads it), so that a restart begins empty; returns where it went, None if there was none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return None
    target = run_dir.with_name(f"{run_dir.name}.{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.rename(target)
    return target


def not_a_run(folder: Path) -> str:
    """Why `folder`, holding no trials, is no study's run folder ("" if it may be one not yet
    recorded: empty, or with the study.json a run writes first)."""
    entries = list(folder.iterdir())
    if (folder / STUDY_FILE).exists() or not entries:
        return ""
    runs = sorted(p.name for p in entries if (p / TRIALS_FILE).exists() or (p / STUDY_FILE).exists())
    if runs:
        return (f"a runs folder, holding the run folders of {', '.join(runs[:4])}{' ...' if len(runs) > 4 else ''}: "
                f"name one (e.g. {folder / runs[0]})")
    return f"not a run folder (no {TRIALS_FILE} or {STUDY_FILE}; `harness run` writes them)"


def read_trials(run_dir: str | Path) -> pd.DataFrame:
    """The trials table of a study's run folder."""
    path = Path(run_dir) / TRIALS_FILE
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder (`harness ls RUNS` lists the studies run there)")
    if not path.exists():
        why = not_a_run(Path(run_dir))
        raise FileNotFoundError(f"{run_dir}: {why}" if why else f"{path}: no results yet (run the study first)")
    try:
        return pd.read_parquet(path)
    except pa.ArrowInvalid as error:  # emptied or overwritten: not a file the harness wrote
        raise StorageError(f"{path}: damaged, not a Parquet table ({str(error).splitlines()[0][:80]}); restore "
                           "it, or move it away and run the study again: finished trials are written again "
                           "from Ray Tune's state without training") from None


def remove_partial_writes(run_dir: str | Path) -> None:
    """Drop temp files left by a process killed mid-write (the files they were for are intact)."""
    for partial in Path(run_dir).glob(".*.partial"):
        partial.unlink(missing_ok=True)


CODE_PATHS = (":/harness", ":/models", ":/pyproject.toml")  # what a trial ran, in the repository


def code_commit(directory: str | Path = Path(__file__).parent) -> str | None:
    """The short commit of the checkout `directory` is in, with "-dirty" when the harness's code
    differs from it (uncommitted changes to tracked files); None outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=directory,
                              timeout=5, check=True).stdout.strip()
    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS)
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if changed else commit
