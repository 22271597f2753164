"""Where Ray keeps a study's checkpoints and trial state: the run folder by default, or any
pyarrow filesystem URI given as `--storage` (s3://, gs://, hdfs://, or a path on a shared mount),
which every node of a multi-node cluster must reach. The rows and reports stay in the run folder
on the driver's machine."""
from __future__ import annotations

import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from .results import StorageError, read_json

STORAGE_FILE = "storage.json"  # in the run folder: where its checkpoints are, when not beside it


@dataclass(frozen=True)
class Storage:
    filesystem: pafs.FileSystem
    root: str  # a folder inside `filesystem`, without a trailing slash

    @classmethod
    def at(cls, location: str, *parts: str) -> Storage:
        """`location` is a local path or a URI (its query sets options, e.g. ?endpoint_override=)."""
        if "://" not in location:
            return cls(pafs.LocalFileSystem(), "/".join([os.path.abspath(location), *parts]))
        try:
            filesystem, root = pafs.FileSystem.from_uri(location)
        except (pafs.ArrowInvalid, OSError) as error:  # ArrowInvalid is a ValueError
            raise StorageError(f"--storage {location}: {error}") from None
        return cls(filesystem, "/".join([root.rstrip("/"), *parts]))

    @property
    def local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def describe(self) -> str:
        return self.root if self.local else f"{self.filesystem.type_name}://{self.root}"

    def read_json(self, *parts: str) -> Any | None:
        """The JSON file at `parts`, or None if there is none."""
        try:
            with self.filesystem.open_input_stream(self.path(*parts)) as stream:
                return json.loads(stream.read())
        except FileNotFoundError:
            return None

    def write_json(self, value: Any, *parts: str) -> None:
        """Whole or not at all: locally a temporary file renamed over the target; an object
        store's upload becomes visible only once complete."""
        target = self.path(*parts)
        self.filesystem.create_dir(target.rsplit("/", 1)[0], recursive=True)
        written = f"{target}.{uuid.uuid4().hex[:8]}.partial" if self.local else target
        with self.filesystem.open_output_stream(written) as stream:
            stream.write(json.dumps(value).encode())
        if written != target:
            self.filesystem.move(written, target)

    def check_writable(self) -> None:
        """Fail before any trial starts if the storage cannot be written (one line)."""
        probe = self.path(f".harness-probe-{uuid.uuid4().hex[:8]}")
        try:
            self.filesystem.create_dir(self.root, recursive=True)
            with self.filesystem.open_output_stream(probe) as stream:
                stream.write(b"probe")
            self.filesystem.delete_file(probe)
        except OSError as error:
            raise StorageError(f"--storage {self.describe()}: cannot write there: {error}") from None


def remember_storage(run_dir: Path, location: str | None, folder: str | None = None) -> None:
    """Note `--storage` and the run's folder in it in the run folder (user:password@ left out),
    for reruns and reports' galleries."""
    record = run_dir / STORAGE_FILE
    if location is None:
        record.unlink(missing_ok=True)
    else:
        record.write_text(json.dumps({"location": _without_credentials(location), "folder": folder}))


def resumed_storage(run_dir: Path, location: str | None) -> tuple[str | None, str | None]:
    """The `--storage` a rerun of the study in `run_dir` uses, and its run's folder there (None:
    a new run, which gets a folder of its own): the one its run started with, as Tune's state is
    there (omitted: that one). Asking for another would start every trial again beside the
    recorded ones, so it is refused (StorageError)."""
    record = run_dir / STORAGE_FILE
    before = read_json(record) if record.exists() else None
    if before is None and not (run_dir / "tune").exists():
        return (normal_location(location) if location else None), None  # nothing to resume
    if location is None:
        return (before["location"], before.get("folder") or run_dir.name) if before else (None, None)
    if before is None:
        raise StorageError(f"--storage {location}: {run_dir} keeps its checkpoints and trial state in the run "
                           f"folder; leave out --storage to resume it, or add --restart")
    if _without_credentials(normal_location(location)) != before["location"]:
        raise StorageError(f"--storage {location}: {run_dir} keeps its checkpoints and trial state in "
                           f"{before['location']}; give that to resume it, or add --restart")
    return normal_location(location), before.get("folder") or run_dir.name  # older runs: named as the study


def new_storage_folder(study: str) -> str:
    """The folder of a new run of `study` in a --storage, its own: another run folder of the same
    study, or a --restart, given the same storage must not resume (or share pre-training with) it."""
    return f"{study}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


def normal_location(location: str) -> str:
    """One spelling per storage: a local path absolute (a rerun or report from another folder
    reads the same one), file:// as a path, no trailing slash."""
    if location.startswith("file://"):
        location = location.removeprefix("file://")
    if "://" not in location:
        return os.path.abspath(os.path.expanduser(location))
    place, mark, query = location.partition("?")
    return place.rstrip("/") + mark + query


def _without_credentials(location: str) -> str:
    return re.sub(r"://[^/@]*@", "://", location)


def study_storage(run_dir: Path) -> Storage:
    """Where the study in `run_dir` keeps its checkpoints: the run folder, or its --storage."""
    record = run_dir / STORAGE_FILE
    if record.exists():
        stored = read_json(record)
        return Storage.at(stored["location"], stored.get("folder") or run_dir.name)
    return Storage.at(str(run_dir))
