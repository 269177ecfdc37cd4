"""``cache import`` and ``cache export``: pick the format of a source (or the one asked for) and hand it
to its reader in :mod:`cvgl.cache.formats` or :mod:`cvgl.cache.importers`; write an entry back out as
plain arrays, GeoAlign's layout or University-1652's ``.mat``, with ``positions.csv`` for an entry
that has positions.

Export formats: ``descriptors.npy``, ``labels.npy``, ``names.txt`` (one name per line, in row order),
GeoAlign's ``{view}_feat``, ``{view}_id``, ``{view}_name``, or one side of ``pytorch_result.mat``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from cvgl.cache.formats import (
    FIELD_IMPORT_FORMATS,
    detect_field_format,
    export_u1652_mat,
    import_field_format,
)
from cvgl.cache.importers import GEOALIGN_VIEWS, import_geoalign, import_h5, import_npy
from cvgl.cache.positions import entry_positions
from cvgl.cache.store import CacheStore, Entry
from cvgl.core.atomic import atomic_path, write_text_atomic
from cvgl.core.errors import UserError
from cvgl.core.outputs import new_file_only, writable_folder
from cvgl.datasets.positions import positions_csv_text
from cvgl.datasets.vpr_positions import (
    POSITIONS_CSV,
    POSITIONS_TABLE,
    lookup,
    read_positions_csv,
    write_positions_csv,
)


def import_any(
    store: CacheStore,
    source: Path,
    *,
    alias: str | None = None,
    labels: Path | None = None,
    names: Path | None = None,
    fmt: str = "auto",
    prefixes: dict[str, str] | None = None,
) -> list[tuple[str, str, int]]:
    """Dispatch on ``fmt`` (or the source's form); returns (alias, key, rows) per imported entry.

    A ``.csv`` source is a positions table for the existing entry ``alias`` (:func:`attach_positions`);
    a folder holding ``positions.csv`` gives its positions to every entry imported from it.
    """
    if not source.exists():
        raise UserError(f"{source} does not exist; give a .npy/.h5 file or a GeoAlign feature folder")
    if fmt in ("auto", "positions") and source.suffix.lower() == ".csv":
        if not alias:
            raise UserError(f"{source} is a positions table; name the entry it belongs to with --alias ENTRY")
        e = attach_positions(store, source, alias)
        return [(alias, e.key, e.count)]
    got = _import_descriptors(
        store, source, alias=alias, labels=labels, names=names, fmt=fmt, prefixes=prefixes
    )
    table = source / POSITIONS_CSV if source.is_dir() else None
    if table is not None and table.is_file():
        for a, _, _ in got:
            attach_positions(store, table, a, partial=True)
    return got


def attach_positions(store: CacheStore, table: Path, ref: str, *, partial: bool = False) -> Entry:
    """Keep the rows of positions table ``table`` that name ``ref``'s images as ``point_positions.csv`` in its
    entry folder (``retrieve.geo.entry_positions_of`` reads it). Unless ``partial``, every row needs one."""
    kind, rows = read_positions_csv(table)
    entry = store.open(ref)
    names = entry.names()
    pos = lookup(rows, kind, names)
    missing = pos.missing()
    if missing.size and not partial:
        raise UserError(
            f"{table} has no position for {missing.size} of {len(names)} rows of {ref}, e.g. {names[int(missing[0])]!r}; "
            "list every image name of the entry (column name)"
        )
    if missing.size == len(names):
        return entry
    keep = np.flatnonzero(~np.isnan(pos.xy).any(axis=1))
    write_positions_csv(
        store.entry_dir(entry.key) / POSITIONS_TABLE, kind, [names[i] for i in keep], pos.xy[keep]
    )
    return entry


def _import_descriptors(
    store: CacheStore,
    source: Path,
    *,
    alias: str | None,
    labels: Path | None,
    names: Path | None,
    fmt: str,
    prefixes: dict[str, str] | None,
) -> list[tuple[str, str, int]]:
    # Other tools' feature files (pytorch_result.mat, hloc HDF5, VPR-methods-evaluation .npy).

    if fmt == "auto":
        fmt = detect_field_format(source) or "auto"
    if fmt in FIELD_IMPORT_FORMATS:
        got = import_field_format(
            store, source, fmt, alias=alias, labels=labels, names=names, prefixes=prefixes
        )
        return [(a, e.key, e.count) for a, e in got]
    if prefixes:
        raise UserError(f"--prefix splits hloc global-feature files; {source} is not one (format {fmt})")
    if fmt == "auto":
        fmt = (
            "geoalign"
            if source.is_dir()
            else {".npy": "npy", ".h5": "h5", ".hdf5": "h5"}.get(source.suffix.lower(), "")
        )
        if not fmt:
            raise UserError(f"cannot tell the format of {source}; pass --format npy|h5|geoalign")
    if fmt == "npy":
        e = import_npy(store, source, labels=labels, names=names, alias=alias)
        return [(e.manifest.alias or e.key, e.key, e.count)]
    if fmt == "h5":
        e = import_h5(store, source, alias=alias)
        return [(e.manifest.alias or e.key, e.key, e.count)]
    if fmt == "geoalign":
        return [(a, e.key, e.count) for a, e in import_geoalign(store, source, alias=alias)]
    raise UserError(f"unknown import format {fmt!r}; use npy, h5, geoalign, mat, hloc or vpr")


def _geoalign_view(entry: Entry, view: str | None) -> str:
    if view:
        if view not in GEOALIGN_VIEWS:
            raise UserError(f"--view {view!r} is not sat or dro")
        return view
    v = str(entry.manifest.extra.get("view", ""))
    if v in GEOALIGN_VIEWS:
        return v
    if "satellite" in v:
        return "sat"
    if "drone" in v:
        return "dro"
    raise UserError(f"cannot tell whether {entry.label} is satellite or drone; pass --view sat|dro")


def _write_atomic(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """``write(fh)`` into ``path`` atomically, so a failed export never leaves a truncated file that
    reads as complete (``np.save`` is given a handle: with a name it would append ``.npy``)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        write(fh)


#: How ``cache export`` is allowed to replace files that exist in ``--out``.
EXPORT_OVERWRITE = "--overwrite"


def export_entry(
    store: CacheStore, ref: str, *, fmt: str, out: Path, view: str | None = None, overwrite: bool = False
) -> list[Path]:
    """Write an entry as plain arrays (``npy``) or GeoAlign's torch-saved layout (``geoalign``); an entry
    with positions (map tiles, located photos) also gets ``positions.csv`` beside them.

    ``out`` is a folder (created if needed). The files written in it must be new unless ``overwrite``
    (the rule for outputs in core/outputs.py); only regular files are ever replaced.
    """
    if fmt not in ("npy", "geoalign", "mat"):
        raise UserError(f"unknown export format {fmt!r}; use npy, geoalign or mat")
    entry = store.open(ref)
    writable_folder(out, what="--out")
    if entry_positions(store, entry) is not None:
        new_file_only(out / "positions.csv", option="--out", overwrite_option=EXPORT_OVERWRITE, overwrite=overwrite)
    try:
        paths = _export(store, entry, fmt=fmt, out=out, view=view, overwrite=overwrite)
        return paths + export_positions_csv(store, entry, out)
    except OSError as e:
        if e.filename is None:
            raise
        raise UserError(
            f"--out {out}: {e.filename} cannot be written ({e.strerror or e}); give a folder you can write to"
        ) from None


def export_positions_csv(store: CacheStore, entry: Entry, out: Path) -> list[Path]:
    """``<out>/positions.csv`` (name, lat, lon, then the footprint's corners lt, rt, rb, lb as lat/lon),
    one row per entry row in row order, for an entry that has positions; nothing otherwise."""
    pos = entry_positions(store, entry)
    if pos is None:
        return []
    path = out / "positions.csv"
    write_text_atomic(path, positions_csv_text(pos))
    return [path]


def _export(store: CacheStore, entry: Entry, *, fmt: str, out: Path, view: str | None, overwrite: bool) -> list[Path]:
    if fmt == "mat":  # one side of University-1652's pytorch_result.mat (cache/formats.py)
        return [export_u1652_mat(entry, out, side=view, overwrite=overwrite)]
    if fmt == "geoalign":
        v = _geoalign_view(entry, view)
        targets = [out / f"{v}_feat", out / f"{v}_id", out / f"{v}_name"]
    else:
        targets = [out / "descriptors.npy", out / "labels.npy", out / "names.txt"]
    for t in targets:  # before anything is read or written
        new_file_only(t, option="--out", overwrite_option=EXPORT_OVERWRITE, overwrite=overwrite)
    desc, labels, names = entry.read()
    if fmt == "npy":
        # names.txt holds one name per line: a name with a line break cannot be written so that it
        # reads back as itself, so refuse before anything is written.
        broken = next((i for i, n in enumerate(names) if "\n" in n or "\r" in n), None)
        if broken is not None:
            raise UserError(
                f"name {broken} of {entry.label} ({names[broken]!r}) holds a line break, which names.txt "
                "(one name per line) cannot hold; export with --format geoalign instead"
            )
    if fmt == "npy":
        paths = [out / "descriptors.npy", out / "labels.npy", out / "names.txt"]
        _write_atomic(paths[0], lambda fh: np.save(fh, desc))
        _write_atomic(paths[1], lambda fh: np.save(fh, labels))
        write_text_atomic(paths[2], "".join(n + "\n" for n in names))
        return paths
    if fmt == "geoalign":
        import torch

        paths = targets
        objs = (torch.from_numpy(desc.reshape(desc.shape[0], -1)), torch.from_numpy(labels), list(names))
        for p, obj in zip(paths, objs):
            # torch names the records inside its zip after the file name up to its last dot: the
            # temporary name "<name>.tmp-<pid>" keeps them "<name>/...", the bytes a direct save writes.
            with atomic_path(p, tmp=p.with_name(f"{p.name}.tmp-{os.getpid()}")) as tmp:
                torch.save(obj, tmp)
        return paths
    raise AssertionError(fmt)
