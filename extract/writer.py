"""The shard writer: computed batches in, whole HDF5 shards out, in a thread beside the backbone.

The compute loop puts each batch (host tensors, and on CUDA an event to wait on) into a bounded queue;
:class:`WriterThread` hands them to :class:`ShardSink`, which fills one shard buffer per layer and
writes a shard as soon as every row of it is computed or skipped. Memory therefore depends on the
batch and shard size, never on the dataset size; an error in the writer surfaces in the compute loop.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from cvgl.cache.store import EntryWriter
from cvgl.datasets.layouts import ImageList
from cvgl.extract.keys import Layer

#: Batches queued between the compute loop and the writer thread.
WRITER_QUEUE = 4


@dataclass
class Batch:
    """One computed batch on its way to the writer."""

    shard: int
    planned: list[int]  # image indices the batch was meant to hold
    rows: np.ndarray  # image indices actually computed (bad images left out), int64
    outputs: dict[Layer, torch.Tensor]  # host tensors, [len(rows), *row_shape]
    ready: Any = None  # a CUDA event to wait on before reading ``outputs``


@dataclass
class _ShardBuffer:
    """One shard of one layer being assembled: its rows so far and the images left out."""

    index: int
    start: int
    data: np.ndarray  # [coverage, *row_shape] in the storage dtype
    filled: np.ndarray  # bool [coverage]
    skipped: set[int] = field(default_factory=set)

    @property
    def complete(self) -> bool:
        """Every row of the shard is computed or skipped."""
        return int(self.filled.sum()) + len(self.skipped) == len(self.filled)


class ShardSink:
    """Assembles whole shards from batches and writes them (runs in the writer thread).

    Batches arrive shard by shard, so there is at most one shard buffer per layer; ``max_buffered``
    records the most rows any layer held, which tests use to check that memory stays flat.
    """

    def __init__(self, writers: dict[Layer, EntryWriter], images: ImageList) -> None:
        self.writers = writers
        self.images = images
        self.labels = np.asarray(images.labels, dtype=np.int64)
        self._bufs: dict[Layer, _ShardBuffer | None] = dict.fromkeys(writers)
        self.max_buffered: dict[Layer, int] = dict.fromkeys(writers, 0)
        self.skipped: list[str] = []
        self.written: dict[Layer, list[int]] = {L: [] for L in writers}
        self._done = {L: w.done_indices for L, w in writers.items()}  # complete before this run

    def consume(self, item: Batch) -> None:
        """Add a batch's rows to its shard's buffers; write every shard this completes."""
        if item.ready is not None:
            item.ready.synchronize()
        local = set(item.rows.tolist())
        bad = [i for i in item.planned if i not in local]
        self.skipped.extend(self.images.names[i] for i in bad)
        for L, w in self.writers.items():
            if item.shard in self._done[L]:
                continue
            buf = self._bufs[L]
            if buf is None or buf.index != item.shard:
                if buf is not None:
                    raise RuntimeError(f"shard {buf.index} of layer {L} was left incomplete")
                start, end = w.shard_range(item.shard)
                shape = (end - start, *w.shape)
                buf = _ShardBuffer(item.shard, start, np.empty(shape, w.dtype), np.zeros(end - start, bool))
                self._bufs[L] = buf
            pos = item.rows - buf.start
            if len(pos):
                # The cast to the storage dtype happens here, off the compute thread.
                buf.data[pos] = item.outputs[L].numpy()
                buf.filled[pos] = True
            buf.skipped.update(int(i) - buf.start for i in bad)
            self.max_buffered[L] = max(self.max_buffered[L], int(buf.filled.sum()) + len(buf.skipped))
            if buf.complete:
                keep = buf.filled
                idx = buf.start + np.flatnonzero(keep)
                w.write_shard_rows(
                    buf.index,
                    buf.data if keep.all() else buf.data[keep],
                    self.labels[idx],
                    [self.images.names[i] for i in idx],
                    skipped=[self.images.names[buf.start + j] for j in sorted(buf.skipped)],
                )
                self.written[L].append(buf.index)
                self._bufs[L] = None


class WriterThread:
    """Runs ``consume`` on queued items in a background thread; its errors surface in the caller.

    The queue is bounded: a writer slower than the backbone makes the compute loop wait instead of
    piling batches up in memory.
    """

    def __init__(self, consume: Callable[[Any], None], maxsize: int = WRITER_QUEUE) -> None:
        self._consume = consume
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="cache-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self.error is None:
                try:
                    self._consume(item)
                except BaseException as exc:  # noqa: BLE001 - handed to the compute thread
                    self.error = exc

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def put(self, item: Any) -> None:
        """Queue an item (waits while the queue is full); raises the writer's error if it failed."""
        while True:
            self._check()
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Let the writer finish what is queued (so every complete shard is written), then stop."""
        while self._thread.is_alive():
            try:
                self._queue.put(None, timeout=0.1)
                break
            except queue.Full:
                continue
        self._thread.join()

    def __enter__(self) -> WriterThread:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
        if exc_type is None:
            self._check()


__all__ = ["WRITER_QUEUE", "Batch", "ShardSink", "WriterThread"]
