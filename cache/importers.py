"""Descriptors from outside into the cache: checked arrays (:func:`import_arrays`, which every importer
ends in), plain ``.npy`` / ``.h5`` files, and GeoAlign's torch-saved feature folders
(``<layer>/{sat,dro}_{feat,id,name}``, possibly under ``feats_test/<model>/``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from cvgl.cache.array_files import KIND_WORDS, REAL_KINDS, check_h5_stored, declared_bytes, load_npy
from cvgl.cache.store import CacheStore, Entry, check_alias
from cvgl.core.errors import UserError
from cvgl.core.memory import check_fits_in_memory
from cvgl.datasets.layouts import display_name, name_problem

GEOALIGN_VIEWS = ("sat", "dro")


def _content_digest(desc: np.ndarray, labels: np.ndarray, names: list[str]) -> str:
    h = hashlib.sha256()
    h.update(str(desc.dtype).encode() + str(desc.shape).encode())
    h.update(np.ascontiguousarray(desc).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    h.update("\n".join(names).encode())
    return h.hexdigest()


def _check_descriptors(desc: np.ndarray, where: Any) -> None:
    """Refuse (UserError) descriptors that are not a real-valued ``[n, d, …]`` array."""
    if desc.dtype.kind not in REAL_KINDS:
        what = KIND_WORDS.get(desc.dtype.kind, "not real numbers")
        raise UserError(
            f"descriptors in {where} have dtype {desc.dtype} ({what}); "
            "import a real-valued float array [n, d]"
        )
    if desc.ndim < 2:
        raise UserError(f"descriptors from {where} have shape {list(desc.shape)}; expected [n, d]")


def _check_labels(labels: np.ndarray, where: Any) -> None:
    """Refuse (UserError) labels that are not a 1-D array of integers that fit int64."""
    if labels.ndim != 1:
        raise UserError(
            f"labels from {where} have shape {list(labels.shape)}; give a 1-D array [n] of one integer "
            "per row (e.g. labels.reshape(-1))"
        )
    if labels.dtype.kind not in "iu":
        raise UserError(f"labels from {where} have dtype {labels.dtype}; labels must be integers (-1 = junk)")
    if labels.dtype.kind == "u" and labels.size and int(labels.max()) > np.iinfo(np.int64).max:
        raise UserError(f"labels from {where} exceed the int64 range; use labels below 2**63")


def _decode_names(raw: Iterable[Any], where: Any) -> list[str]:
    """Names as str: bytes must be UTF-8 and str must encode as UTF-8 (HDF5 stores names as UTF-8)."""
    out = []
    for i, n in enumerate(raw):
        if isinstance(n, (bytes, np.bytes_)):
            try:
                n = bytes(n).decode("utf-8")
            except UnicodeDecodeError:
                raise UserError(
                    f"name {i} in {where} is not UTF-8 ({bytes(n)[:40]!r}); store the names as UTF-8 text"
                ) from None
        else:
            n = str(n)
            try:
                n.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates, e.g. from a file name that was not UTF-8
                raise UserError(
                    f"name {i} in {where} is not valid UTF-8 text ({n[:40]!r}); store the names as UTF-8 text"
                ) from None
        if "\n" in n or "\r" in n:
            # Extraction refuses such names too: every line-oriented listing would split them.
            raise UserError(
                f"name {i} in {where} ({display_name(n)[:80]}) {name_problem(n)}; names are one line each, "
                "remove the line breaks"
            )
        out.append(n)
    return out


def import_arrays(
    store: CacheStore,
    desc: np.ndarray,
    labels: np.ndarray,
    names: list[str],
    *,
    alias: str | None,
    source: dict,
    view: str | None = None,
    root: str | None = None,
) -> Entry:
    """Cache in-memory descriptors; the key is their content, so importing twice is free.

    Refused (UserError, nothing cached): descriptors that are not real numbers (complex, strings,
    objects, …) or not ``[n, d]``, labels that are not 1-D integers, names that are not UTF-8, counts
    that differ, NaN or inf values.
    """
    desc, labels = np.asarray(desc), np.asarray(labels)
    _check_descriptors(desc, source.get("path"))
    _check_labels(labels, source.get("path"))
    names = _decode_names(names, source.get("path"))
    if desc.shape[0] == 0:
        raise UserError(f"descriptors from {source.get('path')} are empty; nothing to import")
    if len(labels) != desc.shape[0] or len(names) != desc.shape[0]:
        raise UserError(
            f"{desc.shape[0]} descriptors but {len(labels)} labels and {len(names)} names in {source.get('path')}; "
            "give one label and one name per row"
        )
    if not np.isfinite(desc).all():
        raise UserError(
            f"descriptors in {source.get('path')} contain NaN or infinite values; fix them before importing"
        )
    if alias:
        check_alias(alias)
    dtype = "float16" if desc.dtype == np.float16 else "float32"
    spec = {"kind": "imported", "content": _content_digest(desc, labels, names), "dtype": dtype}
    extra: dict = {"source": source}
    if view:
        extra["view"] = view
    if root:
        extra["root"] = root  # the folder the names are relative to (report thumbnails)
    return store.put_arrays(
        spec, desc.astype(dtype), np.asarray(labels, np.int64), names, alias=alias, extra=extra, dtype=dtype
    )


def _read_names(path: Path | None, n: int, default_prefix: str) -> list[str]:
    if path is None:
        return [f"{default_prefix}/{i:07d}" for i in range(n)]
    if not path.is_file():
        raise UserError(f"names file {path} not found; give a text file with one name per line")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"names file {path} is not UTF-8 text (byte {e.start}: {e.object[e.start : e.start + 1]!r}); "
            "save it as UTF-8, one name per line"
        ) from None
    except OSError as e:
        raise UserError(f"names file {path} cannot be read ({e.strerror}); check the file") from None
    # Only "\n" ends a name (what export writes): str.splitlines would also split on \x0b, \x0c, \x1c-\x1e,
    # \x85, U+2028 and U+2029, all legal in file names, and names would not round-trip. The newline
    # after the last name is optional; a "\r" before "\n" (a file saved on Windows) is not part of a
    # name, as names holding "\r" are refused at extraction and export.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def import_npy(
    store: CacheStore, path: Path, *, labels: Path | None, names: Path | None, alias: str | None
) -> Entry:
    desc = load_npy(path, "descriptors")
    _check_descriptors(desc, path)
    if labels is None:
        lab = np.full(desc.shape[0], -1, np.int64)
    else:
        if not labels.is_file():
            raise UserError(f"labels file {labels} not found; give --labels labels.npy with one int per row")
        lab = load_npy(labels, "labels")
        _check_labels(lab, labels)
    return import_arrays(
        store,
        desc,
        lab,
        _read_names(names, desc.shape[0], path.stem),
        alias=alias or path.stem,
        source={"format": "npy", "path": str(path)},
    )


def import_h5(store: CacheStore, path: Path, *, alias: str | None) -> Entry:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            ds = f["descriptors"]
            check_h5_stored(ds, f"{path}:descriptors")
            check_fits_in_memory(declared_bytes(tuple(ds.shape or ()), np.dtype(ds.dtype)), f"{path}:descriptors")
            desc = np.asarray(ds[...])
            _check_descriptors(desc, f"{path}:descriptors")
            lab = f["labels"][...] if "labels" in f else np.full(desc.shape[0], -1, np.int64)
            raw = np.asarray(f["names"][...]) if "names" in f else None
    except (OSError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not an HDF5 file with a 'descriptors' dataset ({e})") from None
    _check_labels(np.asarray(lab), f"{path}:labels")
    if raw is None:
        names = _read_names(None, desc.shape[0], path.stem)
    elif raw.ndim != 1:
        raise UserError(
            f"names in {path} have shape {list(raw.shape)}; store a 1-D dataset of one name per row"
        )
    else:
        names = _decode_names(raw, f"{path}:names")
    return import_arrays(
        store, desc, lab, names, alias=alias or path.stem, source={"format": "h5", "path": str(path)}
    )


def _torch_load(path: Path):
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a bad or non-tensor file
        raise UserError(
            f"{path} is not a tensor file saved by torch.save ({type(e).__name__}); check the GeoAlign feature folder"
        ) from None


def _geoalign_layer_dirs(root: Path) -> list[Path]:
    """Folders holding {sat,dro}_feat: the root itself, its children, or feats_test/<model>/<layer>."""
    if any((root / f"{v}_feat").exists() for v in GEOALIGN_VIEWS):
        return [root]
    dirs = sorted({p.parent for p in root.rglob("*_feat") if p.name in {f"{v}_feat" for v in GEOALIGN_VIEWS}})
    if not dirs:
        raise UserError(
            f"no GeoAlign features (sat_feat / dro_feat) under {root}; expected <layer>/{{sat,dro}}_{{feat,id,name}}"
        )
    return dirs


def read_geoalign_view(folder: Path, view: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One view of a GeoAlign feature folder, checked: ``(descriptors, ids, names)``.

    ``folder`` holds GeoAlign's torch-saved ``{view}_feat`` (``[n, d]`` real numbers, returned as
    float32), ``{view}_id`` (``[n]`` integers, or whole-number floats; returned as int64) and
    ``{view}_name`` (a list of ``n`` names, UTF-8). Every file is loaded with ``weights_only=True``.
    Anything else (a missing file, complex or boolean features, a wrong shape, counts that differ,
    NaN or inf, names that are not UTF-8) is a one-line :class:`UserError` naming the file. This is
    the one reader of the layout: ``cache import`` and GeoAlign release evaluation both use it.
    """
    d = Path(folder)
    for part in ("feat", "id", "name"):
        if not (d / f"{view}_{part}").is_file():
            raise UserError(
                f"{d / f'{view}_{part}'} is missing; GeoAlign folders need {view}_feat, {view}_id and {view}_name"
            )
    feat = d / f"{view}_feat"
    desc = _torch_load(feat)
    ids = _torch_load(d / f"{view}_id")
    names = _torch_load(d / f"{view}_name")
    if hasattr(desc, "is_complex") and (desc.is_complex() or str(desc.dtype) == "torch.bool"):
        raise UserError(
            f"descriptors in {feat} are {str(desc.dtype).removeprefix('torch.')}, not real numbers; "
            "save a float tensor [n, d]"
        )
    # bfloat16 has no numpy dtype: every tensor goes through float32.
    desc = desc.detach().float().numpy() if hasattr(desc, "numpy") else np.asarray(desc)
    _check_descriptors(desc, feat)
    if desc.ndim != 2:
        raise UserError(
            f"{feat} has shape {list(desc.shape)}, not a 2-D feature tensor [n, d]; re-extract with GeoAlign's "
            "extract_and_save"
        )
    # Real numbers become float32, as always (an imported entry's key hashes them).
    desc = desc.astype(np.float32, copy=False)
    if not np.isfinite(desc).all():
        raise UserError(f"{feat} contains NaN or infinite values; re-extract the features")
    ids = ids.numpy() if hasattr(ids, "numpy") else np.asarray(ids)
    if ids.dtype.kind == "f" and np.array_equal(ids, np.round(ids)):
        ids = ids.astype(np.int64)  # whole-number float ids were always accepted
    _check_labels(ids, d / f"{view}_id")
    if ids.shape[0] != desc.shape[0]:
        raise UserError(
            f"{d / f'{view}_id'} has {ids.shape[0]} ids for {desc.shape[0]} features; the folder is inconsistent, "
            "re-extract it"
        )
    if not isinstance(names, list | tuple) or len(names) != desc.shape[0]:
        raise UserError(
            f"{d / f'{view}_name'} is not a list of {desc.shape[0]} names; the folder is inconsistent, re-extract it"
        )
    return desc, ids.astype(np.int64, copy=False), _decode_names(names, d / f"{view}_name")


def import_geoalign(store: CacheStore, root: Path, *, alias: str | None) -> list[tuple[str, Entry]]:
    """Import every ``{sat,dro}_{feat,id,name}`` triple under ``root`` as ``<alias>.<view>@<layer>``."""
    out = []
    base = alias or root.name
    for d in _geoalign_layer_dirs(root):
        layer = d.name if d != root else "0"
        for v in GEOALIGN_VIEWS:
            if not (d / f"{v}_feat").exists():
                continue
            desc, ids, names = read_geoalign_view(d, v)
            a = f"{base}.{v}@{layer}"
            entry = import_arrays(
                store,
                desc,
                ids,
                names,
                alias=a,
                view=v,
                source={"format": "geoalign", "path": str(d), "view": v, "layer": layer},
            )
            out.append((a, entry))
    return out
