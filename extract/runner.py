"""The extraction runner: image lists → backbone (several layers, one pass) → pooling → cache entries.

One entry per (image list, layer). Entries already in the cache are reused without loading the
backbone; an interrupted extraction resumes from the shards it completed.

How the work is laid out, and why:

* **Shards are the unit of work.** Shard ``i`` of an entry covers images ``[i·S, (i+1)·S)``
  (``S = extract.shard_rows``) and batches never cross a shard boundary, so a shard's numbers do not
  depend on which process computed it, in which order, or whether the run was interrupted. At native
  size (no resize rule) a shard's images are batched by size, since a batch stacks one size only.
* **Ranks.** Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) rank ``r`` of ``W`` computes the shards
  ``i ≡ r (mod W)`` and writes them itself; rank 0 holds the entry locks, and once every rank has
  passed a barrier it re-checks every shard file and writes the manifests. ``extract.launcher=torchrun``
  starts such a job from a plain ``pipeline extract`` (:mod:`cvgl.extract.distributed`).
* **Pipelining.** DataLoader worker processes decode images ahead of the backbone (pinned memory and
  non-blocking copies on CUDA); the main thread only runs the network and pooling; a writer thread
  assembles whole shards and writes them to HDF5 while the next batches compute. The queue to the
  writer is bounded and it buffers at most one shard per layer, so memory depends on the batch and
  shard size, never on the dataset size. An error in the writer stops the main loop with that error.
* **Bad images.** A corrupt image stops the run with its path; complete shards stay and a rerun
  resumes. With ``extract.skip_bad=true`` such images are left out of their shard (which still covers
  the same image range, so resume stays exact) and listed in the manifest's ``extra.skipped``.

This module is the run itself. What goes into a key is in :mod:`extract.keys`, the backbones and
the batch-size probe in :mod:`extract.models`, the shard writer in :mod:`extract.writer`, ranks in
:mod:`extract.ranks`, the torchrun launcher in :mod:`extract.distributed`, dataset roots and image
lists in :mod:`extract.roots`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from cvgl.cache.store import CacheStore, EntryWriter
from cvgl.configs.schema import Config
from cvgl.core.errors import UserError
from cvgl.core.keys import content_key
from cvgl.datasets.layouts import ImageList, write_semi_positives
from cvgl.datasets.positions import write_positions
from cvgl.extract.keys import (
    Layer,
    Preprocess,
    backbone_identity,
    check_layers,
    entry_alias,
    entry_spec,
    images_digest,
    view_preprocess,
)
from cvgl.extract.models import ExtractModel, build_model, choose_batch_size, compute_dtype
from cvgl.extract.ranks import Ranks, rank_device, ranks_from_env
from cvgl.extract.roots import image_lists
from cvgl.extract.writer import Batch, ShardSink, WriterThread

ProgressFn = Callable[[str, int, int], None]  # (description, done, total)


@dataclass
class ExtractedEntry:
    """One entry of an extraction: its view, layer, key, alias, row count, and whether it was reused."""

    view: str
    layer: Layer
    key: str
    alias: str
    count: int
    reused: bool


# --------------------------------------------------------------------------------------------------
# Batches


def plan_batches(
    shards: Sequence[int],
    shard_rows: int,
    total: int,
    batch_size: int,
    sizes: Mapping[int, Hashable] | None = None,
) -> list[list[int]]:
    """Image indices of each batch, shard by shard; a batch never crosses a shard boundary, so the
    batches of a shard (hence its floating-point results) are the same in every run.

    ``sizes`` maps each image index of these shards to its network input size. When given, the
    images of a shard are grouped by size (groups in order of first appearance, each in list order)
    and batched group by group, so every batch stacks images of one size. The grouping depends only
    on the shard's own images, so it is the same in every run, on every rank and after a resume;
    rows are still written at their list positions.
    """
    out: list[list[int]] = []
    for i in shards:
        start, end = i * shard_rows, min((i + 1) * shard_rows, total)
        if sizes is None:
            out.extend(list(range(s, min(s + batch_size, end))) for s in range(start, end, batch_size))
            continue
        groups: dict[Hashable, list[int]] = {}
        for k in range(start, end):
            groups.setdefault(sizes[k], []).append(k)
        for members in groups.values():
            out.extend(members[s : s + batch_size] for s in range(0, len(members), batch_size))
    return out


def _input_sizes(dataset: Any, indices: Sequence[int], threads: int = 8) -> dict[int, Any]:
    """``{index: (h, w) or None}`` for images at native size, read from file headers.

    Reading a header is file-system latency, not CPU work, so a few threads hide most of it on
    network storage; ``map`` keeps the result independent of which thread finishes first.
    """
    from concurrent.futures import ThreadPoolExecutor

    if len(indices) < 64:
        return {i: dataset.output_size(i) for i in indices}
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="image-size") as pool:
        return dict(zip(indices, pool.map(dataset.output_size, indices)))


def _check_row_shapes(
    model: ExtractModel, writers: dict[Layer, EntryWriter], images: ImageList, sizes: Mapping[int, Any]
) -> None:
    """Refuse, before anything is computed, images whose rows would not fit their entry's shape
    (conv maps take their shape from the input size; pooled descriptors never do)."""
    from cvgl.datasets.layouts import display_name

    first: dict[Any, int] = {}
    for i, size in sizes.items():
        if size is not None:
            first.setdefault(size, i)
    for size, i in first.items():
        for L, w in writers.items():
            if tuple(model.row_shape(L, size)) != tuple(w.shape):
                raise UserError(
                    f"image {display_name(images.names[i])} is {size[0]}x{size[1]}, so its layer {L} maps "
                    f"do not have the shape {list(w.shape)} of the other images'; set preprocess.resize=N"
                )


def _to_host(
    rows: dict[Layer, torch.Tensor], storage: torch.dtype, cuda: bool
) -> tuple[dict[Layer, torch.Tensor], Any]:
    """A batch's rows for the writer thread, and the CUDA event it must wait on (None on a CPU)."""
    if not cuda:
        return rows, None
    # Cast on the device (half the transfer), copy into pinned memory without waiting;
    # the writer thread waits on the event before it reads.
    out: dict[Layer, torch.Tensor] = {}
    for L, t in rows.items():
        host = torch.empty(t.shape, dtype=storage, pin_memory=True)
        out[L] = host.copy_(t.to(storage), non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    return out, ready


# --------------------------------------------------------------------------------------------------
# The run


def _image_size(prep: Preprocess, images: ImageList) -> tuple[int, int] | None:
    """The network input size of a list: the resize rule, else the first readable image's size."""
    if prep.size is not None:
        return prep.size
    from PIL import Image

    if images.tiles is not None:
        return images.tiles.px, images.tiles.px
    for i in range(min(len(images), 16)):
        try:
            with Image.open(images.path(i)) as im:
                return im.size[1], im.size[0]
        except OSError:
            continue
    return None


def run_extraction(
    cfg: Config, store: CacheStore, *, progress: ProgressFn | None = None
) -> list[ExtractedEntry]:
    """Extract every view of ``cfg.dataset`` at every layer of ``cfg.backbone`` into the cache, in this
    process. Under torchrun every rank calls this with the same config; each returns the same entries.
    ``extract.launcher=torchrun`` is :func:`cvgl.extract.distributed.extract`'s to start.
    """
    layers = check_layers(cfg)
    bs = cfg.extract.batch_size
    if cfg.extract.shard_rows <= 0 or (bs != "auto" and int(bs) <= 0) or cfg.extract.max_batch_size <= 0:
        raise UserError("extract.shard_rows and extract.batch_size must be positive")
    ranks = ranks_from_env(cfg.backbone.device)
    # Rank 0 first: it may generate the synthetic dataset, which the others must then only read.
    lists = image_lists(cfg, store) if ranks.leader else []
    ranks.barrier()
    if not ranks.leader:
        lists = image_lists(cfg, store)
    device = rank_device(cfg, ranks)
    dtype = compute_dtype(cfg, device)
    ident = backbone_identity(cfg, store)
    model: ExtractModel | None = None
    out: list[ExtractedEntry] = []
    report = progress if ranks.leader else None
    for images in lists:
        digest = images_digest(images, strict=cfg.dataset.strict_digest)
        if len(set(ranks.gather(digest))) > 1:
            raise UserError(
                f"the ranks see different files for {images.view} under {images.root}; put the dataset on a "
                "file system every rank reads, and leave it unchanged while extracting"
            )
        specs = {L: entry_spec(cfg, ident, images, L, dtype, digest) for L in layers}
        keys = {L: content_key(s) for L, s in specs.items()}
        aliases = {L: entry_alias(cfg, images.view, L, len(lists)) for L in layers}
        missing = ranks.broadcast([L for L in layers if not store.has(keys[L])])
        if ranks.leader:
            for L in layers:
                if L not in missing:
                    store.set_alias(aliases[L], keys[L])
        computed: dict[Layer, int] = {}
        if missing:
            if model is None:
                model = build_model(cfg, device, dtype)
            computed = _extract_list(
                cfg,
                store,
                model,
                images,
                {L: keys[L] for L in missing},
                {L: specs[L] for L in missing},
                aliases,
                ranks,
                report,
            )
        for L in layers:
            count = computed[L] if L in computed else store.open(keys[L]).count
            out.append(ExtractedEntry(images.view, L, keys[L], aliases[L], count, L not in computed))
    return out


def _extract_list(
    cfg: Config,
    store: CacheStore,
    model: ExtractModel,
    images: ImageList,
    keys: dict[Layer, str],
    specs: dict[Layer, dict],
    aliases: dict[Layer, str],
    ranks: Ranks,
    progress: ProgressFn | None,
) -> dict[Layer, int]:
    """Extract the layers in ``keys`` for one image list; returns {layer: rows} of the entries this
    job completed (rank 0 writes their manifests)."""
    with contextlib.ExitStack() as stack:
        if ranks.leader:
            _lock_entries(stack, store, keys, images.view, progress)
        # Another process may have finished while rank 0 waited for the lock.
        todo = ranks.broadcast([L for L in keys if not store.has(keys[L])])
        if ranks.leader:
            for L in keys:
                if L not in todo:
                    store.set_alias(aliases[L], keys[L])
        if not todo:
            return {}
        prep, _ = view_preprocess(cfg, images.view)
        size = _image_size(prep, images)

        def make_writers(cleanup: bool) -> dict[Layer, EntryWriter]:
            return {
                L: store.writer(
                    keys[L],
                    specs[L],
                    shape=model.row_shape(L, size),
                    dtype=cfg.extract.dtype,
                    shard_rows=cfg.extract.shard_rows,
                    total_rows=len(images),
                    cleanup=cleanup,
                )
                for L in todo
            }

        # Rank 0 clears what an interrupted run left (temporary files, invalid shards) before any
        # rank starts writing; the others must not touch files that are being written.
        writers = make_writers(True) if ranks.leader else {}
        ranks.barrier()
        if not ranks.leader:
            writers = make_writers(False)
        batch_size = choose_batch_size(cfg, model, size, ranks)
        n_shards = next(iter(writers.values())).n_shards
        mine = [
            i
            for i in range(ranks.rank, n_shards, ranks.world)
            if any(i not in w.done_indices for w in writers.values())
        ]
        _compute_shards(cfg, model, images, prep, writers, mine, batch_size, progress)
        ranks.barrier()  # every rank's shards are on disk
        counts = _finish_entries(writers, aliases, images, batch_size, ranks.world) if ranks.leader else {}
        counts = ranks.broadcast(counts)
        ranks.barrier()  # manifests written before anyone reads them
        return counts


def _lock_entries(
    stack: contextlib.ExitStack,
    store: CacheStore,
    keys: dict[Layer, str],
    view: str,
    progress: ProgressFn | None,
) -> None:
    """Hold the lock of every entry in ``keys`` until ``stack`` closes (rank 0 only)."""
    # Sorted order: two processes locking several keys can never deadlock.
    for L in sorted(keys, key=lambda L: keys[L]):
        stack.enter_context(
            store.lock(
                keys[L],
                on_wait=lambda: progress and progress(f"waiting for another extractor of {view}", 0, 0),
            )
        )


def _finish_entries(
    writers: dict[Layer, EntryWriter],
    aliases: dict[Layer, str],
    images: ImageList,
    batch_size: int,
    world: int,
) -> dict[Layer, int]:
    """Write the manifests once every shard is on disk (rank 0 only); returns {layer: rows}."""
    counts: dict[Layer, int] = {}
    for L, w in writers.items():
        m = w.finish(
            alias=aliases[L],
            extra={
                "view": images.view,
                "root": str(images.root),
                "layer": L,
                "batch_size": batch_size,
                "ranks": world,
                **write_semi_positives(images, w.dir),
                **(write_positions(images.positions, w.dir) if images.positions is not None else {}),
                **(images.tiles.manifest_extra() if images.tiles is not None else {}),
            },
            allow_empty=False,
        )
        counts[L] = m.count
    return counts


def _compute_shards(
    cfg: Config,
    model: ExtractModel,
    images: ImageList,
    prep: Preprocess,
    writers: dict[Layer, EntryWriter],
    shards: list[int],
    batch_size: int,
    progress: ProgressFn | None,
) -> ShardSink:
    """Run the backbone over ``shards`` of one list and write them; returns the sink (for its stats)."""
    from cvgl.extract.images import ImageDataset, iter_batches

    desc = f"extract {images.view}"
    dataset = ImageDataset(
        images,
        resize=prep.size,
        mean=prep.mean,
        std=prep.std,
        skip_bad=cfg.extract.skip_bad,
        resample=prep.resample,
        normalization=prep.normalization,
    )
    sizes = None
    if prep.size is None:
        # Native sizes may differ and a batch can only stack one size: group each shard by size.
        rows = cfg.extract.shard_rows
        sizes = _input_sizes(
            dataset, [k for i in shards for k in range(i * rows, min((i + 1) * rows, len(images)))]
        )
        _check_row_shapes(model, writers, images, sizes)
    batches = plan_batches(shards, cfg.extract.shard_rows, len(images), batch_size, sizes)
    total = sum(len(b) for b in batches)
    cuda = model.device.type == "cuda"
    sink = ShardSink(writers, images)
    storage = getattr(torch, cfg.extract.dtype)
    done = 0
    if progress:
        progress(desc, done, total)
    if not batches:  # this rank's shards are all complete already
        return sink
    with WriterThread(sink.consume) as writer:
        loader = iter_batches(
            dataset,
            batch_size=batch_size,
            num_workers=cfg.extract.num_workers,
            pin_memory=cuda,
            batches=batches,
        )
        for planned, (idx, x) in zip(batches, loader):
            outputs, ready = _to_host(model(x), storage, cuda) if x is not None else ({}, None)
            writer.put(Batch(planned[0] // cfg.extract.shard_rows, planned, idx.numpy(), outputs, ready))
            done += len(planned)
            if progress:
                progress(desc, done, total)
    return sink


__all__ = ["ExtractedEntry", "plan_batches", "run_extraction"]
