"""Batches of a ClipDataset for the training loops: clips loaded between steps in the training
process, or in loader processes beside it (`resources.loader_workers`), which hand them over in
shared memory; several views of one decode become clips of their own (VideoMAE V2's num_sample)."""
from __future__ import annotations

import functools
import os
import shutil
from typing import Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, default_collate, get_worker_info

from .data import ClipDataset, normalize_clips
from .sources import DataError


def collate_views(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack items; multi-view items (V, C, T, H, W) are flattened to V clips with one label each
    (VideoMAE V2's num_sample: several augmented clips per decoded video)."""
    videos, labels = default_collate(batch)
    if videos.dim() == 6:
        views = videos.shape[1]
        return videos.flatten(0, 1), labels.repeat_interleave(views)
    return videos, labels


class ClipLoader:
    """Batches of a ClipDataset, loaded in `workers` processes (0: in this one, between steps).

    The processes are started once and kept, with their own copies of the dataset: each index
    they get carries the epoch `set_epoch` set here (so every epoch has its own windows and crops),
    and each keeps the short clips it decoded, as the training process would. A process skips bad
    files in its copy; each batch brings that copy's `skipped` back, merged into `dataset.skipped`
    here, so the trial counts them and its checkpoint remembers them. `flatten_views`: several
    views of a clip become clips of their own (training, V2's num_sample); else (B, V, ...).
    Clips travel as uint8 (a quarter of the shared memory and of the copy to a GPU) and are
    normalized on `device`, bit for bit as `dataset[index]` is."""

    def __init__(self, dataset: ClipDataset, batch_size: int, sampler: Iterable[int] | None = None, *,
                 workers: int = 0, flatten_views: bool = True, drop_last: bool = False, pin_memory: bool = False,
                 device: torch.device | str = "cpu"):
        self.dataset, self.batch_size, self.workers, self.device = dataset, batch_size, workers, torch.device(device)
        indices = range(len(dataset)) if sampler is None else sampler
        self.loader = DataLoader(_AtEpoch(dataset), batch_size=batch_size, sampler=_EpochIndices(indices, dataset),
                                 drop_last=drop_last, num_workers=workers, persistent_workers=workers > 0,
                                 pin_memory=pin_memory,
                                 collate_fn=functools.partial(_collate_with_skips, flatten_views=flatten_views))

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        try:
            for videos, labels, skipped in self.loader:
                self.dataset.skipped.update(skipped)
                yield normalize_clips(videos.to(self.device, non_blocking=True)), labels
        except DataError as error:  # from a loader process: the message is its whole traceback
            raise DataError(_original_message(str(error))) from None
        except RuntimeError as error:  # torch's: "unable to allocate shared memory(shm) ..." or a bus error
            if "shared memory" not in str(error):
                raise
            raise DataError(self._out_of_shared_memory()) from None

    def _out_of_shared_memory(self) -> str:
        """Loader processes hand batches over in /dev/shm, 64 MB in a Docker container by default."""
        data = self.dataset
        batch_mb = self.batch_size * data.views * 3 * data.num_frames * data.size**2 / 2**20  # uint8
        free_mb = shutil.disk_usage("/dev/shm").free / 2**20 if os.path.isdir("/dev/shm") else 0
        waiting = self.workers * self.loader.prefetch_factor
        return (f"the loader processes ran out of shared memory: /dev/shm has {free_mb:.0f} MB free, a batch "
                f"takes {batch_mb:.0f} MB and up to {waiting} wait there ({self.workers} processes x "
                f"{self.loader.prefetch_factor}); give /dev/shm more room (docker run --shm-size=...) "
                f"or set resources.loader_workers lower (0: load in the training process)")


class _EpochIndices:
    """The sampler's indices, each as (epoch, index): a kept loader process learns the epoch."""

    def __init__(self, indices: Iterable[int], dataset: ClipDataset):
        self.indices, self.dataset = indices, dataset

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.dataset.epoch
        return ((epoch, index) for index in self.indices)


class _AtEpoch(Dataset):
    def __init__(self, dataset: ClipDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, index = item
        self.dataset.set_epoch(epoch)
        return self.dataset.item(index)


def _collate_with_skips(batch: list[tuple[torch.Tensor, int]], flatten_views: bool
                        ) -> tuple[torch.Tensor, torch.Tensor, dict[str, str]]:
    worker = get_worker_info()  # None in the training process, which updates dataset.skipped itself
    videos, labels = collate_views(batch) if flatten_views else default_collate(batch)
    return videos, labels, dict(worker.dataset.dataset.skipped) if worker else {}


def _original_message(message: str) -> str:
    """The one-line message of an exception re-raised from a DataLoader process, whose text is
    "Caught DataError in DataLoader worker process 0.\nOriginal Traceback ...\nmodule.DataError: <message>"."""
    if not message.startswith("Caught "):
        return message
    return message.rstrip().splitlines()[-1].partition(": ")[2]
