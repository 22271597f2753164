"""Data sources named in study files -> manifests (path, label, split).

`synth:<domain>` (generated and cached on first use), `folder:/root` (one sub-folder per class,
optionally under train/ and val/), `list:/file` (official `path label` list files, space- or
comma-separated, paths relative to the list's folder).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from .synth import DOMAINS, SynthParams, ensure_synth

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".webm", ".mov"}


def check_source(source: str) -> str | None:
    """A one-line problem with a source string, or None if it can be used."""
    scheme, _, rest = source.partition(":")
    if scheme == "synth":
        return None if rest in DOMAINS else f"unknown synthetic domain {rest!r}; choose from {list(DOMAINS)}"
    if scheme in ("folder", "list"):
        if not rest:
            return f"{scheme}: needs a path, e.g. {scheme}:/data/ucf101"
        if not Path(rest).exists():
            return f"data path {rest} does not exist"
        return None
    return f"unknown data source {source!r}; use synth:<domain>, folder:<dir> or list:<file>"


def resolve_source(source: str, synth: SynthParams | None = None,
                   progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """The manifest of a source: absolute `path`, integer `label`, `split` (train | val)."""
    scheme, _, rest = source.partition(":")
    problem = check_source(source)
    if problem:
        raise ValueError(problem)
    if scheme == "synth":
        params = synth or SynthParams()
        manifest = ensure_synth(SynthParams(**{**params.__dict__, "domain": rest}), progress=progress)
        table = pd.read_csv(manifest)
        table["path"] = [str(manifest.parent / p) for p in table["path"]]
        return table
    if scheme == "folder":
        return _folder_manifest(Path(rest))
    return _list_manifest(Path(rest))


def _folder_manifest(root: Path) -> pd.DataFrame:
    split_roots = {split: root / split for split in ("train", "val") if (root / split).is_dir()}
    split_roots = split_roots or {"train": root}
    classes = sorted({d.name for r in split_roots.values() for d in r.iterdir() if d.is_dir()})
    rows = [(str(f), classes.index(d.name), split)
            for split, split_root in split_roots.items()
            for d in sorted(split_root.iterdir()) if d.is_dir()
            for f in sorted(d.rglob("*")) if f.suffix.lower() in VIDEO_SUFFIXES]
    return pd.DataFrame(rows, columns=["path", "label", "split"])


def _list_manifest(list_file: Path) -> pd.DataFrame:
    rows = []
    for line in list_file.read_text().splitlines():
        parts = line.replace(",", " ").split()
        if len(parts) >= 2:
            rows.append((str(list_file.parent / parts[0]), int(parts[-1]), "train"))
    return pd.DataFrame(rows, columns=["path", "label", "split"])


def stratified_subset(table: pd.DataFrame, count: int | None, seed: int = 0) -> pd.DataFrame:
    """`count` rows taken round-robin over classes after a seeded shuffle (nested in count)."""
    if count is None or count >= len(table):
        return table.reset_index(drop=True)
    shuffled = table.sample(frac=1.0, random_state=seed)
    order = shuffled.groupby("label").cumcount()
    return shuffled.assign(_rank=order).sort_values(["_rank", "label"], kind="stable") \
        .head(count).drop(columns="_rank").reset_index(drop=True)


def split(table: pd.DataFrame, name: str) -> pd.DataFrame:
    return table[table["split"] == name].reset_index(drop=True)
