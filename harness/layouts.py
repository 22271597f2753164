"""The public datasets' own annotation layouts, as they unpack from their downloads, -> manifests
(`path`, integer `label`, `split`), so a study reads them without a list made for it.

- `ssv2:DIR`, Something-Something v2: `labels/labels.json` (template -> class number) and
  `labels/train.json`, `labels/validation.json` (records of `id` and `template`, whose
  `[something]` brackets are dropped to name the class, as the VideoMAE and MMAction2 converters
  do); the videos `<id>.webm` (or another video format, as a transcoded copy) in
  `20bn-something-something-v2/` (or `videos/`, or DIR itself).
  `test.json` has no labels and is not read. 20BN's first release's names
  (`something-something-v2-train.json`, ...) are read too.
- `kinetics:DIR`, Kinetics-400/600/700 as the CVDF download (github.com/cvdfoundation/kinetics-dataset)
  unpacks: `annotations/{train,val,test}.csv` (`label,youtube_id,time_start,time_end,split`) and
  the videos `<split>/<youtube_id>_<start:06d>_<end:06d>.mp4` (found in sub-folders too, and by
  their YouTube id if named otherwise and the id names one annotated clip), a copy in
  `replacement/replacement_for_corrupted_k400/` taken first. Classes are numbered in sorted order.

`?root=DIR` reads the videos from DIR instead. The annotations list every clip ever published;
a clip whose video is not there (Kinetics lost a few percent to YouTube deletions) is left out
and counted in `table.attrs["left_out"]`, which the run prints; none found at all is an error.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .sources import COLUMNS, VIDEO_SUFFIXES, DataError

SSV2_VIDEO_FOLDERS = ("20bn-something-something-v2", "videos", ".")
SSV2_SPLITS = {"train": "train", "validation": "val"}
KINETICS_SPLITS = {"train.csv": "train", "val.csv": "val", "test.csv": "test"}
KINETICS_REPLACEMENTS = Path("replacement") / "replacement_for_corrupted_k400"


def ssv2_manifest(root: Path, videos: Path | None = None) -> pd.DataFrame:
    labels_dir = root / "labels" if (root / "labels").is_dir() else root
    class_file = _ssv2_file(labels_dir, "labels")
    if class_file is None:
        raise DataError(f"ssv2:{root}: no labels/labels.json (the template -> class table of the SSV2 download)")
    classes = {template: int(number) for template, number in _json(class_file).items()}
    if videos is None:
        videos = next((root / f for f in SSV2_VIDEO_FOLDERS if (root / f).is_dir() and _video_names(root / f)),
                      root / SSV2_VIDEO_FOLDERS[0])
    by_id = _video_names(videos)
    rows = []
    for role, split_name in SSV2_SPLITS.items():
        records = _ssv2_file(labels_dir, role)
        for number, record in enumerate(_json(records) if records else [], start=1):
            if "id" not in record or "template" not in record:
                raise DataError(f"{records} record {number}: no id or template")
            template = record["template"].replace("[", "").replace("]", "")
            if template not in classes:
                raise DataError(f"{records} record {number}: no class for {template!r} in {class_file}")
            video = by_id.get(str(record["id"]), videos / f"{record['id']}.webm")
            rows.append((str(video), classes[template], split_name))
    if not rows:
        raise DataError(f"ssv2:{root}: neither labels/train.json nor labels/validation.json is there")
    return _present(pd.DataFrame(rows, columns=COLUMNS), f"ssv2:{root}", videos)


def _video_names(folder: Path) -> dict[str, Path]:
    """The videos directly in a folder by name without suffix (SSV2's are `<id>.webm`)."""
    if not folder.is_dir():
        return {}
    return {path.stem: path for path in sorted(folder.iterdir()) if path.suffix.lower() in VIDEO_SUFFIXES}


def _ssv2_file(labels_dir: Path, role: str) -> Path | None:
    """labels/<role>.json as Qualcomm ships it, or 20BN's first release's name for it."""
    names = (f"{role}.json", f"something-something-v2-{role}.json")
    return next((labels_dir / name for name in names if (labels_dir / name).is_file()), None)


def kinetics_manifest(root: Path, videos: Path | None = None) -> pd.DataFrame:
    files = {name: root / "annotations" / name for name in KINETICS_SPLITS if (root / "annotations" / name).is_file()}
    if not files:
        raise DataError(f"kinetics:{root}: no annotations/train.csv, val.csv or test.csv (the CVDF download's layout)")
    tables = []
    for name, path in files.items():
        table = pd.read_csv(path, dtype={"youtube_id": str})
        needed = {"youtube_id", "time_start", "time_end"} - set(table.columns)
        if needed:
            raise DataError(f"{path} lacks column(s) {sorted(needed)}; expected label,youtube_id,time_start,time_end")
        if "label" in table:  # Kinetics-700's test.csv has none; a row missing a field names no clip
            complete = table.dropna(subset=["label", "youtube_id", "time_start", "time_end"])
            tables.append(complete.assign(split=KINETICS_SPLITS[name]))
    if not tables:
        raise DataError(f"kinetics:{root}: no annotations/*.csv has a label column")
    table = pd.concat(tables, ignore_index=True)
    classes = {name: number for number, name in enumerate(sorted(table["label"].astype(str).unique()))}
    folder = videos or root
    replacements = _Clips(root / KINETICS_REPLACEMENTS if videos is None else None)
    by_split = {name: _Clips(folder / name) for name in set(table["split"])}
    clips_of_id = table["youtube_id"].value_counts()
    rows = []
    for label, youtube_id, start, end, split_name in table[["label", "youtube_id", "time_start", "time_end",
                                                             "split"]].itertuples(index=False):
        clip = (youtube_id, int(start), int(end), clips_of_id[youtube_id] == 1)
        path = replacements.find(*clip) or by_split[split_name].find(*clip)
        if path:
            rows.append((str(path), classes[str(label)], split_name))
    if not rows:
        raise DataError(f"kinetics:{root}: none of the {len(table)} annotated clips has a video in "
                        f"{folder}/{{train,val,test}} (e.g. {table['youtube_id'].iloc[0]}_*.mp4); "
                        f"name the videos' folder with ?root=DIR")
    manifest = pd.DataFrame(rows, columns=COLUMNS)
    manifest.attrs["left_out"] = len(table) - len(rows)
    return manifest


class _Clips:
    """The videos under a folder (None: none), found by name, `<youtube_id>_<start:06d>_<end:06d>`,
    or by YouTube id (the name's first 11 characters) when named otherwise and the id is unique,
    as the CVDF's own arranging script matches them."""

    def __init__(self, folder: Path | None):
        self.by_name: dict[str, Path] = {}
        self.by_id: dict[str, list[Path]] = {}
        for path in sorted(folder.rglob("*")) if folder and folder.is_dir() else ():
            if path.suffix.lower() in VIDEO_SUFFIXES:
                self.by_name[path.stem] = path
                self.by_id.setdefault(path.stem[:11], []).append(path)

    def find(self, youtube_id: str, start: int, end: int, by_id: bool = True) -> Path | None:
        """The clip's video; by its id alone only if `by_id` (the id names one annotated clip:
        else one video would stand for two clips, perhaps of two classes)."""
        same_id = self.by_id.get(youtube_id, []) if by_id else []
        return self.by_name.get(f"{youtube_id}_{start:06d}_{end:06d}") or (same_id[0] if len(same_id) == 1 else None)


def _json(path: Path) -> list | dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not JSON ({error})") from None


def _present(table: pd.DataFrame, source: str, videos: Path) -> pd.DataFrame:
    """The rows whose video exists; the count left out in attrs["left_out"]."""
    exists = table["path"].map(lambda p: Path(p).is_file())
    if not exists.any():
        raise DataError(f"{source}: none of the {len(table)} annotated videos is under {videos} "
                        f"(e.g. {table['path'].iloc[0]}); name the videos' folder with ?root=DIR")
    kept = table[exists].reset_index(drop=True)
    kept.attrs["left_out"] = int((~exists).sum())
    return kept
