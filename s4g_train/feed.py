"""Input pipelines that keep the device busy: training batches (:class:`TrainFeed`) and embedding batches
(:func:`view_batches`), each on the CPU path or on the device path.

**CPU path** (a CPU device, or ``data.device_preprocess: false``): the loader's workers decode, augment and
normalise; the step receives float32 batches. This is the training path every CPU result was produced with.

**Device path** (CUDA by default, ``data.device_preprocess``): the workers stop at the uint8 stage images
(4× fewer bytes through worker IPC, pinning and the bus than float32), the DataLoader pins them, the copy
to the GPU is issued ``non_blocking`` on a side stream one batch ahead (it overlaps the current step), and
the GPU normalises (and, without photometric augmentation, flips / rotates / rolls) them —
:mod:`s4g_train.device_aug`, equal to the CPU path value for value (tests/test_gpu_path.py). The batch
composition and every random draw are the dataset's, unchanged.

Workers are persistent across epochs (``data.persistent_workers``): one DataLoader whose batch sampler is
re-pointed at each epoch's batches, so an epoch does not pay for forking ``num_workers`` processes again.
Augmentation randomness is a function of ``(seed, epoch, index)`` only, so this changes no value.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from s4g_train.data import EpochBatchSampler, PairedTrainDataset, ViewDataset
from s4g_train.device_aug import DeviceNormaliser, geometric_batch

log = logging.getLogger(__name__)

__all__ = ["TrainFeed", "view_batches"]

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _prefetched(loader: Any, device: torch.device, n_tensors: int) -> Iterator[tuple[Any, ...]]:
    """Items of ``loader`` with their first ``n_tensors`` entries moved to ``device``, the copy of item i+1
    issued (non_blocking, side stream) before item i is handed out, so that it overlaps item i's work."""
    it = iter(loader)
    side = torch.cuda.Stream(device) if device.type == "cuda" else None

    def fetch() -> tuple[Any, ...] | None:
        try:
            item = next(it)
        except StopIteration:
            return None
        item = tuple(item)
        if side is None:
            return tuple(t.to(device) for t in item[:n_tensors]) + item[n_tensors:]
        with torch.cuda.stream(side):
            moved = tuple(t.to(device, non_blocking=True) for t in item[:n_tensors])
        return moved + item[n_tensors:]

    nxt = fetch()
    while nxt is not None:
        cur = nxt
        if side is not None:
            main = torch.cuda.current_stream(device)
            main.wait_stream(side)
            for t in cur[:n_tensors]:
                t.record_stream(main)  # allocated on the side stream, used on the main one
        nxt = fetch()
        yield cur


class TrainFeed:
    """The training batches of each epoch, ready for :class:`s4g_train.step.TrainStep` on ``device``.

    ``feed.epoch(batches, epoch, start)`` iterates ``(ground, aerial, ids)`` for the given (local) batches
    from position ``start`` — the CPU path yields the loader's float32 batches, the device path device
    tensors (channels-last when ``channels_last``).
    """

    def __init__(self, dataset: PairedTrainDataset, *, device: torch.device, num_workers: int = 0,
                 persistent_workers: bool = True, prefetch_factor: int = 2, on_device: bool = False,
                 channels_last: bool = False) -> None:
        self.dataset, self.device, self.on_device = dataset, torch.device(device), bool(on_device)
        self.num_workers, self.prefetch_factor = int(num_workers), int(prefetch_factor)
        self.persistent = bool(persistent_workers) and self.num_workers > 0
        self.channels_last = bool(channels_last)
        self.mode = "float"
        self.norm: dict[str, DeviceNormaliser] = {}
        if self.on_device:
            c = dataset.contract
            self.mode = "raw" if dataset.device_geometric_ok else "stage"
            self.norm = {v: DeviceNormaliser(c[v], self.device) for v in c.VIEWS if not c[v].polar}
        dataset.set_output(self.mode)
        self._sampler = EpochBatchSampler([], 0)
        self._generator = torch.Generator()
        self._loader: DataLoader | None = None
        log.info("training input: %s path%s, %d loader worker(s)%s", "device" if self.on_device else "CPU",
                 {"raw": " (normalise + flip/rot90/roll on the device)", "stage": " (normalise on the device)",
                  "float": ""}[self.mode], self.num_workers, " (persistent)" if self.persistent else "")

    def _make_loader(self) -> DataLoader:
        kw: dict[str, Any] = {}
        if self.num_workers > 0:
            kw = {"persistent_workers": self.persistent, "prefetch_factor": self.prefetch_factor}
        return DataLoader(self.dataset, batch_sampler=self._sampler, num_workers=self.num_workers,
                          generator=self._generator, pin_memory=self.device.type == "cuda", **kw)

    def epoch(self, batches: Sequence[np.ndarray], epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of ``epoch`` from ``start`` on; ``len()`` of the result is the number of batches left."""
        self._sampler.batches, self._sampler.epoch, self._sampler.start = batches, int(epoch), int(start)
        self._generator.manual_seed(int(epoch))  # the DataLoader's own seed stream (worker seeds) per epoch
        if self._loader is None or not self.persistent:
            self._loader = self._make_loader()
        return _Sized(self._batches(), len(self._sampler))

    def _batches(self) -> Iterator[Batch]:
        assert self._loader is not None
        if not self.on_device:
            yield from self._loader
            return
        for g, a, flip, r, ids in _prefetched(self._loader, self.device, 2):
            yield self.finish(g, a, flip, r, ids)

    def finish(self, g: torch.Tensor, a: torch.Tensor, flip: Any, r: Any, ids: torch.Tensor) -> Batch:
        """Device part of one batch (already on the device): geometric augmentation when the loader left it to
        us, then normalisation of the non-polar views."""
        if self.mode == "raw":
            g, a = geometric_batch(g, a, flip, r)
        g = self.norm["ground"](g, self.channels_last) if "ground" in self.norm else self._layout(g)
        a = self.norm["aerial"](a, self.channels_last) if "aerial" in self.norm else self._layout(a)
        return g, a, ids

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def close(self) -> None:
        """Stop persistent workers (they also stop with the process)."""
        it = getattr(self._loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self._loader = None


class _Sized:
    """An iterator with a length (tqdm shows the epoch's progress)."""

    def __init__(self, it: Iterator[Batch], n: int) -> None:
        self._it, self._n = it, n

    def __iter__(self) -> Iterator[Batch]:
        return self._it

    def __len__(self) -> int:
        return self._n


def view_batches(dataset: ViewDataset, *, batch_size: int, device: torch.device, num_workers: int = 0,
                 on_device: bool = False, channels_last: bool = True) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """``(x, ids)`` batches of a :class:`ViewDataset` in order, ``x`` the float32 network input on ``device``.

    CPU path: the loader normalises. Device path: uint8 to the device and normalised there; straight from a
    RAM-cached store without a loader (pinned double buffer), else through the loader's workers.
    """
    if not on_device or dataset.spec.polar:
        pin = device.type == "cuda"
        loader = DataLoader(dataset.with_uint8(False), batch_size=batch_size, shuffle=False,
                            num_workers=num_workers, generator=torch.Generator().manual_seed(0), pin_memory=pin)
        for x, ids in _prefetched(loader, device, 1) if pin else loader:
            yield (x.contiguous(memory_format=torch.channels_last) if channels_last else x), np.asarray(ids)
        return
    norm = DeviceNormaliser(dataset.spec, device)
    if dataset.store.cached and not dataset.shifted:
        for u8, ids in _cached_batches(dataset, batch_size, device):
            yield norm(u8, channels_last), ids
        return
    loader = DataLoader(dataset.with_uint8(True), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(0), pin_memory=device.type == "cuda")
    for u8, ids in _prefetched(loader, device, 1):
        yield norm(u8, channels_last), np.asarray(ids)


def _cached_batches(dataset: ViewDataset, batch_size: int,
                    device: torch.device) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """uint8 batches of a RAM-cached store on ``device``: copied into one of two pinned buffers (reused once
    the copy out of it has finished) and sent non_blocking — no worker processes, no per-batch sync."""
    store, n = dataset.store, len(dataset)
    if device.type != "cuda":
        for s in range(0, n, batch_size):
            e = min(n, s + batch_size)
            yield torch.from_numpy(np.ascontiguousarray(store.batch(s, e))), np.arange(s, e)
        return
    shape = (min(batch_size, n), *store.size, 3)
    bufs = [torch.empty(shape, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
    done: list[torch.cuda.Event | None] = [None, None]
    for j, s in enumerate(range(0, n, batch_size)):
        k, e = j % 2, min(n, s + batch_size)
        if done[k] is not None:
            done[k].synchronize()  # the previous copy out of this buffer has finished
        host = bufs[k][: e - s]
        host.numpy()[...] = store.batch(s, e)
        x = host.to(device, non_blocking=True)
        done[k] = torch.cuda.Event()
        done[k].record(torch.cuda.current_stream(device))
        yield x, np.arange(s, e)
