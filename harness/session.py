"""What the training loops need from whoever runs them. This default runs in-process, alone;
the trial layer swaps in a Ray Train session (harness/worker.py)."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist

from .data import ClipDataset
from .loader import ClipLoader


class Session:
    rank: int = 0
    world_size: int = 1
    loader_workers: int = 0  # processes that load clips beside the training one (resources.loader_workers)
    checkpoint_interval_s: float = 0.0  # resources.checkpoint_interval_s: 0, every epoch

    def __init__(self, checkpoint_root: str | Path | None = None):
        self.checkpoint_root = Path(checkpoint_root) if checkpoint_root else None
        self.reports: list[dict[str, Any]] = []
        self._checkpointed_at = time.monotonic()

    def checkpoint_due(self, last: bool) -> bool:
        """Whether this epoch's report carries a checkpoint: a stage's last epoch always, others once
        `checkpoint_interval_s` has passed since the last one (or the stage began). Only rank 0's
        answer counts: it alone writes the checkpoint."""
        now = time.monotonic()
        if last or now - self._checkpointed_at >= self.checkpoint_interval_s:
            self._checkpointed_at = now
            return True
        return False

    @property
    def device(self) -> torch.device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def loader(self, dataset: ClipDataset, batch_size: int, sampler: Any = None, **options: Any) -> ClipLoader:
        """Batches of `dataset` from this worker's loader processes, on this worker's device."""
        return ClipLoader(dataset, batch_size, sampler, workers=self.loader_workers,
                          pin_memory=self.device.type == "cuda", device=self.device, **options)

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | Path | None = None) -> None:
        self.reports.append(dict(metrics))
        latest = self.checkpoint_root / "latest" if self.checkpoint_root else None
        if checkpoint_dir and latest and Path(checkpoint_dir).resolve() != latest.resolve():
            shutil.rmtree(latest, ignore_errors=True)
            shutil.copytree(checkpoint_dir, latest)

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        """The newest checkpoint as a local folder while the block runs; None before the first."""
        latest = self.checkpoint_root / "latest" if self.checkpoint_root else None
        yield latest if latest and latest.exists() else None

    def resumed_state(self, file_name: str) -> dict | None:
        """The state saved in the newest checkpoint's `file_name`, to go on from; None to start the
        stage over: before the first checkpoint, or when it is gone or cut short since (deleted, a
        full disk), which is said on stderr instead of failing the trial on every rerun."""
        try:
            with self.latest_checkpoint() as folder:
                return torch.load(folder / file_name, map_location="cpu", weights_only=True) if folder else None
        except (OSError, RuntimeError, EOFError, ValueError) as error:  # torch's unreadable file, a missing one
            print(f"warning: the stage's last checkpoint cannot be read ({str(error).splitlines()[0][:160]}): "
                  "the stage starts over", file=sys.stderr, flush=True)
            return None


SCRATCH = f"videomae-harness-checkpoints-{os.getuid()}"  # under the temp dir: a folder per process


@contextlib.contextmanager
def checkpoint_folder() -> Iterator[Path]:
    """An empty local folder to write a checkpoint into before reporting it, removed after the
    block. A process killed inside the block (a stopped study, a lost worker) cannot remove
    it, so each call first removes the folders of processes on this machine that have ended:
    a killed trial does not leave a model's weights in the temp dir for good."""
    root = Path(tempfile.gettempdir()) / SCRATCH
    root.mkdir(exist_ok=True)
    for folder in root.iterdir():
        if folder.name.isdigit() and not _alive(int(folder.name)):
            shutil.rmtree(folder, ignore_errors=True)
    mine = root / str(os.getpid())
    mine.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=mine) as folder:
        yield Path(folder)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        pass
    return True


def all_reduce_mean(value: float, device: torch.device) -> float:
    """Mean of a scalar over the workers of a distributed run (identity when alone)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.item() / dist.get_world_size()


def all_gather(items: list) -> list:
    """Every worker's list, concatenated in rank order (identity when alone)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return items
    gathered: list[list] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for the next step: allocations up to 32 MiB from the
    heap, which is never trimmed. By default a large tensor's pages go back to the system when it
    is freed and fault in again when the next step allocates it: 3-22 thousand page faults per
    training step here, and tiny at batch 32 in bf16 ran 1.10-1.18x faster without them
    (benchmarks/malloc.py). Process-wide; the peak is unchanged. False where libc is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        # mallopt(M_TRIM_THRESHOLD = -1, ...), mallopt(M_MMAP_THRESHOLD = -3, ...); both, or a
        # fixed trim threshold alone leaves the mmap threshold at 128 KiB, which is far worse.
        return bool(libc.mallopt(-1, 2**31 - 1) and libc.mallopt(-3, 32 << 20))
    except (OSError, AttributeError):
        return False


def machine() -> str:
    """What this process runs on, for result rows: CPU model and count, GPUs."""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} CPUs"
    if torch.cuda.is_available():
        text += f", {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return text
