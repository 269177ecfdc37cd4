"""Bring descriptors into the cache from outside, and take them back out.

Import: plain arrays (``.npy`` descriptors + ``--labels labels.npy`` + ``--names names.txt``; or an
``.h5`` with ``descriptors``/``labels``/``names`` datasets) and GeoAlign's torch-saved feature
folders (``<layer>/{sat,dro}_{feat,id,name}``, possibly under ``feats_test/<model>/``).
Export: ``descriptors.npy``, ``labels.npy``, ``names.txt`` (one name per line, in row order), or
GeoAlign's layout (``{view}_feat``, ``{view}_id``, ``{view}_name``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from cache.store import CacheStore, Entry, check_alias
from configs.errors import UserError

GEOALIGN_VIEWS = ("sat", "dro")


def _content_digest(desc: np.ndarray, labels: np.ndarray, names: list[str]) -> str:
    h = hashlib.sha256()
    h.update(str(desc.dtype).encode() + str(desc.shape).encode())
    h.update(np.ascontiguousarray(desc).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    h.update("\n".join(names).encode())
    return h.hexdigest()


def import_arrays(
    store: CacheStore,
    desc: np.ndarray,
    labels: np.ndarray,
    names: list[str],
    *,
    alias: str | None,
    source: dict,
    view: str | None = None,
) -> Entry:
    """Cache in-memory descriptors; the key is their content, so importing twice is free."""
    if desc.ndim < 2:
        raise UserError(
            f"descriptors from {source.get('path')} have shape {list(desc.shape)}; expected [n, d]"
        )
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
    extra = {"source": source}
    if view:
        extra["view"] = view
    return store.put_arrays(
        spec, desc.astype(dtype), np.asarray(labels, np.int64), names, alias=alias, extra=extra, dtype=dtype
    )


def _read_names(path: Path | None, n: int, default_prefix: str) -> list[str]:
    if path is None:
        return [f"{default_prefix}/{i:07d}" for i in range(n)]
    if not path.is_file():
        raise UserError(f"names file {path} not found; give a text file with one name per line")
    return path.read_text().splitlines()


def import_npy(
    store: CacheStore, path: Path, *, labels: Path | None, names: Path | None, alias: str | None
) -> Entry:
    try:
        desc = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable .npy array ({e})") from None
    if labels is None:
        lab = np.full(desc.shape[0], -1, np.int64)
    else:
        if not labels.is_file():
            raise UserError(f"labels file {labels} not found; give --labels labels.npy with one int per row")
        lab = np.load(labels, allow_pickle=False)
        if not np.issubdtype(lab.dtype, np.integer):
            raise UserError(f"labels in {labels} are {lab.dtype}, expected integers")
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
            desc = f["descriptors"][...]
            lab = f["labels"][...] if "labels" in f else np.full(desc.shape[0], -1, np.int64)
            nm = (
                [s.decode() if isinstance(s, bytes) else str(s) for s in f["names"][...]]
                if "names" in f
                else None
            )
    except (OSError, KeyError) as e:
        raise UserError(f"{path} is not an HDF5 file with a 'descriptors' dataset ({e})") from None
    names = nm if nm is not None else _read_names(None, desc.shape[0], path.stem)
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


def import_geoalign(store: CacheStore, root: Path, *, alias: str | None) -> list[tuple[str, Entry]]:
    """Import every ``{sat,dro}_{feat,id,name}`` triple under ``root`` as ``<alias>.<view>@<layer>``."""
    out = []
    base = alias or root.name
    for d in _geoalign_layer_dirs(root):
        layer = d.name if d != root else "0"
        for v in GEOALIGN_VIEWS:
            feat = d / f"{v}_feat"
            if not feat.exists():
                continue
            for part in ("id", "name"):
                if not (d / f"{v}_{part}").exists():
                    raise UserError(
                        f"{d / f'{v}_{part}'} is missing; GeoAlign folders need {v}_feat, {v}_id and {v}_name"
                    )
            desc = _torch_load(feat)
            ids = _torch_load(d / f"{v}_id")
            names = _torch_load(d / f"{v}_name")
            desc = desc.float().numpy() if hasattr(desc, "numpy") else np.asarray(desc, np.float32)
            ids = ids.numpy() if hasattr(ids, "numpy") else np.asarray(ids)
            names = [str(n) for n in names]
            a = f"{base}.{v}@{layer}"
            entry = import_arrays(
                store,
                desc,
                ids.astype(np.int64),
                names,
                alias=a,
                view=v,
                source={"format": "geoalign", "path": str(d), "view": v, "layer": layer},
            )
            out.append((a, entry))
    return out


def import_any(
    store: CacheStore,
    source: Path,
    *,
    alias: str | None = None,
    labels: Path | None = None,
    names: Path | None = None,
    fmt: str = "auto",
) -> list[tuple[str, str, int]]:
    """Dispatch on ``fmt`` (or the source's form); returns (alias, key, rows) per imported entry."""
    if not source.exists():
        raise UserError(f"{source} does not exist; give a .npy/.h5 file or a GeoAlign feature folder")
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
    raise UserError(f"unknown import format {fmt!r}; use npy, h5 or geoalign")


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


def export_entry(store: CacheStore, ref: str, *, fmt: str, out: Path, view: str | None = None) -> list[Path]:
    """Write an entry as plain arrays (``npy``) or GeoAlign's torch-saved layout (``geoalign``)."""
    entry = store.open(ref)
    desc, labels, names = entry.read()
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "npy":
        paths = [out / "descriptors.npy", out / "labels.npy", out / "names.txt"]
        np.save(paths[0], desc)
        np.save(paths[1], labels)
        paths[2].write_text("".join(n + "\n" for n in names))
        return paths
    if fmt == "geoalign":
        import torch

        v = _geoalign_view(entry, view)
        paths = [out / f"{v}_feat", out / f"{v}_id", out / f"{v}_name"]
        torch.save(torch.from_numpy(desc.reshape(desc.shape[0], -1)), paths[0])
        torch.save(torch.from_numpy(labels), paths[1])
        torch.save(list(names), paths[2])
        return paths
    raise UserError(f"unknown export format {fmt!r}; use npy or geoalign")
