"""Result rows -> Parquet, one row per trial, appended by atomic replace (temp file + rename)."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
TRIALS_FILE = "trials.parquet"  # one row per finished trial
EPOCHS_FILE = "epochs.parquet"  # one row per pre-training epoch of each trial
STUDY_FILE = "study.json"      # the validated study, written into the run folder by `harness run`


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
    os.replace(partial, path)
    return new


def read_trials(run_dir: str | Path) -> pd.DataFrame:
    """The trials table of a study's run folder."""
    path = Path(run_dir) / TRIALS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no results yet (run the study first)")
    return pd.read_parquet(path)
