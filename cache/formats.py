"""The feature files other CVGL/VPR tools write, read into the cache and written back out.

Formats (as the tools write them):

* ``mat`` -- University-1652's ``pytorch_result.mat`` (``test.py`` saves it with ``scipy.io.savemat``,
  ``evaluate_gpu.py`` reads it): ``query_f`` [n_q, d] and ``gallery_f`` [n_g, d] float descriptors,
  ``query_label`` / ``gallery_label`` (saved as 1 x n rows) and, in later versions of the script,
  ``query_path`` / ``gallery_path`` (char matrices, one path per row, space padded). Import gives two
  entries, ``<alias>.query`` and ``<alias>.gallery``; export writes one side of the file per entry and
  keeps the other side of an existing file, so exporting a query entry and then a gallery entry into
  the same folder gives a complete file that ``evaluate_gpu.py`` reads.
* ``hloc`` -- hloc's global-descriptor HDF5 (``extract_features.py`` with a global model such as
  NetVLAD): one group per image name (names with ``/`` become nested groups), each holding a
  ``global_descriptor`` dataset [d]. Rows are the image names in sorted order. One file usually holds
  database and query images told apart by name prefix (hloc's ``db_prefix`` / ``query_prefix``):
  ``prefixes`` ``{"db/": "gallery", "query/": "query"}`` split it into ``<alias>.gallery`` and
  ``<alias>.query`` (names kept whole).
* ``vpr`` -- VPR-methods-evaluation's ``--save_descriptors`` output: two float32 arrays in the log
  folder, ``database_descriptors.npy`` [n_db, d] and ``queries_descriptors.npy`` [n_q, d] (current
  ``main.py``; an older version pickled one ``global_features.pickle`` array with the database rows
  first, which is not read: pickles can run code). The tool saves no names: rows follow its image
  order, and ``--names`` may give them, database first then queries, one per line. Without
  ``--names`` the names come from the run itself: ``info.log`` records ``database_folder`` and
  ``queries_folder`` (the ``Arguments: Namespace(…)`` line), and each folder is listed as
  ``test_dataset.read_images_paths`` lists it (``<folder>_images_paths.txt`` when present, else a sorted
  recursive glob of .jpg/.jpeg/.png files), names relative to the folder, which becomes the entry's
  image root. Those names carry the images' positions (``@utm_east@utm_north@…``), which
  ``protocol=vpr`` reads. Import gives ``<alias>.database`` and ``<alias>.queries``.

Labels of hloc and VPR rows: ``--labels`` (an int ``.npy``, one per row in the same order) when given,
else the image's parent folder when every name has an integer one (University-1652's ``<id>/<image>``
layout), else -1 (unknown).
"""

from __future__ import annotations

import glob
import math
import os
import re
import warnings
from pathlib import Path, PurePosixPath

import numpy as np
from cvgl.cache.array_files import check_h5_descriptor, load_npy
from cvgl.cache.importers import import_arrays
from cvgl.cache.store import CacheStore, Entry
from cvgl.core.atomic import atomic_path
from cvgl.core.errors import UserError
from cvgl.core.memory import check_fits_in_memory
from cvgl.core.path_errors import read_text_file, require_regular_file

FIELD_IMPORT_FORMATS = ("mat", "hloc", "vpr")
FIELD_EXPORT_FORMATS = ("mat",)
MAT_SIDES = ("query", "gallery")
MAT_FILE = "pytorch_result.mat"
VPR_FILES = {"database": "database_descriptors.npy", "queries": "queries_descriptors.npy"}
VPR_LOG = "info.log"
VPR_FOLDER_ARGS = {"database": "database_folder", "queries": "queries_folder"}
_VPR_IMAGE_EXTS = (".jpg", ".jpeg", ".png")
HLOC_DATASET = "global_descriptor"
_INT_FOLDER = re.compile(r"-?[0-9]+")


def detect_field_format(source: Path) -> str | None:
    """The field format ``source`` is in, or None when it is one of the plain formats (npy, h5, geoalign)."""
    if source.is_dir():
        return "vpr" if all((source / f).is_file() for f in VPR_FILES.values()) else None
    if source.name in VPR_FILES.values():
        return "vpr"
    suffix = source.suffix.lower()
    if suffix == ".mat":
        return "mat"
    if suffix in (".h5", ".hdf5"):
        import h5py

        try:
            with h5py.File(source, "r") as f:
                # Our own array files hold a root 'descriptors' dataset; hloc's hold only groups.
                if "descriptors" in f:
                    return None
                return "hloc" if _hloc_names(f, limit=1) else None
        except OSError:
            return None  # the plain reader names the problem
    return None


def import_field_format(
    store: CacheStore,
    source: Path,
    fmt: str,
    *,
    alias: str | None,
    labels: Path | None,
    names: Path | None,
    prefixes: dict[str, str] | None = None,
) -> list[tuple[str, Entry]]:
    """Import ``source`` in field format ``fmt``; returns (alias, entry) per imported entry.

    ``prefixes`` (hloc only): ``{name prefix: role}``, one entry ``<alias>.<role>`` per prefix."""
    if prefixes and fmt != "hloc":
        raise UserError(f"--prefix splits hloc global-feature files; {source} is in format {fmt}")
    if fmt == "mat":
        if labels is not None or names is not None:
            raise UserError(
                f"--labels/--names do not apply to {source}: pytorch_result.mat carries its own labels and paths"
            )
        return import_u1652_mat(store, source, alias=alias)
    if fmt == "hloc":
        if prefixes:
            return import_hloc_split(store, source, prefixes, alias=alias, labels=labels)
        return [import_hloc(store, source, alias=alias, labels=labels)]
    if fmt == "vpr":
        return import_vpr(store, source, alias=alias, labels=labels, names=names)
    raise UserError(f"unknown import format {fmt!r}; use {', '.join(FIELD_IMPORT_FORMATS)}")


# --------------------------------------------------------------------------------------------------
# University-1652's pytorch_result.mat


# Bytes per element of each MATLAB class, as whosmat names them (a char is read as a 4-byte str).
_MAT_BYTES = {
    "double": 8, "single": 4, "int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "int32": 4, "uint32": 4,
    "int64": 8, "uint64": 8, "logical": 1, "char": 4,
}
# A .mat v5 file starts with a 128-byte header; anything shorter is empty or truncated.
_MAT_HEADER = 128


def _loadmat(path: Path) -> dict:
    """The variables of a MATLAB v5 file, after its headers are checked: no variable is read before
    its declared dims are known to be non-negative and to fit in the memory available."""
    import scipy.io

    st = require_regular_file(path, "the .mat file", "give University-1652's pytorch_result.mat")
    if st.st_size < _MAT_HEADER:
        raise UserError(
            f"{path} is empty or truncated ({st.st_size} bytes, less than a .mat header); "
            "give University-1652's pytorch_result.mat"
        )
    try:
        variables = scipy.io.whosmat(str(path))
        total = 0
        for name, dims, cls in variables:
            if any(int(d) < 0 for d in dims):
                raise UserError(f"{name} in {path} declares dims {list(dims)}; the file is corrupt, save it again")
            total += math.prod(int(d) for d in dims) * _MAT_BYTES.get(cls, 8)
        check_fits_in_memory(total, str(path))
        data = scipy.io.loadmat(str(path))
    except UserError:
        raise
    except NotImplementedError:
        raise UserError(
            f"{path} is a MATLAB v7.3 (HDF5) file, which scipy cannot read; re-save it with "
            "scipy.io.savemat or MATLAB's save -v7"
        ) from None
    except Exception as e:  # scipy's parser raises many types (MatReadError, IndexError, …) on bad bytes
        raise UserError(
            f"{path} is not a readable .mat file, or is truncated ({type(e).__name__}: {str(e)[:120]}); "
            "give University-1652's pytorch_result.mat"
        ) from None
    for name, dims, _cls in variables:
        got = getattr(data.get(name), "shape", None)
        if got is not None and tuple(got) != tuple(dims):
            raise UserError(f"{name} in {path} declares dims {list(dims)} but holds {list(got)}; the file is corrupt")
    return data


def _mat_labels(value: np.ndarray, path: Path, key: str) -> np.ndarray:
    lab = np.asarray(value).reshape(-1)
    if lab.dtype.kind == "f" and np.isfinite(lab).all() and (lab == np.round(lab)).all():
        # MATLAB saves integers as doubles by default; beyond ±2**63 a double is no int64 label.
        if lab.size and float(np.abs(lab).max()) >= 2.0**63:
            raise UserError(f"{key} in {path} holds labels beyond the int64 range; use labels below 2**63")
        lab = lab.astype(np.int64)
    if lab.dtype.kind not in "iu":
        raise UserError(f"{key} in {path} holds {lab.dtype} values, expected integer labels")
    if lab.dtype.kind == "u" and lab.size and int(lab.max()) > np.iinfo(np.int64).max:
        raise UserError(
            f"{key} in {path} holds {int(lab.max())}, beyond the int64 range of labels; use labels below 2**63 "
            "(-1 = junk)"
        )
    return lab.astype(np.int64)


def _mat_paths(value: np.ndarray) -> list[str]:
    """Rows of a char matrix (space padded by savemat) or a cell array, as strings."""
    arr = np.asarray(value)
    if arr.dtype.kind == "U":
        return [str(s).rstrip() for s in arr.reshape(-1)]
    out = []
    for cell in arr.reshape(-1):  # a cell array: each cell a 1-element char array
        out.append(str(np.asarray(cell).reshape(-1)[0]).rstrip() if np.asarray(cell).size else "")
    return out


def _view_of(names: list[str], fallback: str) -> str:
    """University-1652 paths end in <view>/<id>/<image>: the view folder when all rows share it."""
    views = {PurePosixPath(n.replace("\\", "/")).parent.parent.name for n in names}
    v = views.pop() if len(views) == 1 else ""
    return v if v and v not in (".", "..") else fallback


def import_u1652_mat(store: CacheStore, path: Path, *, alias: str | None) -> list[tuple[str, Entry]]:
    """Import ``pytorch_result.mat`` as ``<alias>.query`` and ``<alias>.gallery`` (alias default: the stem)."""
    m = _loadmat(path)
    required = [f"{s}_{k}" for s in MAT_SIDES for k in ("f", "label")]
    missing = [k for k in required if k not in m]
    if missing:
        present = sorted(k for k in m if not k.startswith("__"))
        raise UserError(
            f"{path} lacks {', '.join(missing)} (it holds {', '.join(present) or 'no variables'}); "
            "give University-1652's pytorch_result.mat with query_f, query_label, gallery_f, gallery_label"
        )
    base = alias or path.stem
    out = []
    for side in MAT_SIDES:
        desc = np.asarray(m[f"{side}_f"])
        if desc.dtype.kind not in "fiu":
            raise UserError(f"{side}_f in {path} holds {desc.dtype} values, expected float descriptors")
        desc = desc.astype(np.float32, copy=False)
        lab = _mat_labels(m[f"{side}_label"], path, f"{side}_label")
        if f"{side}_path" in m:
            names = _mat_paths(m[f"{side}_path"])
            view = _view_of(names, side)
        else:
            names = [f"{side}/{i:07d}" for i in range(desc.shape[0])]
            view = side
        a = f"{base}.{side}"
        entry = import_arrays(
            store,
            desc,
            lab,
            names,
            alias=a,
            view=view,
            source={"format": "mat", "path": str(path), "side": side},
        )
        out.append((a, entry))
    return out


def _mat_side(entry: Entry, side: str | None) -> str:
    if side:
        if side not in MAT_SIDES:
            raise UserError(f"--view {side!r} is not query or gallery (the side of pytorch_result.mat to write)")
        return side
    v = str(entry.manifest.extra.get("view") or entry.label)
    for s in MAT_SIDES:
        if s in v:
            return s
    raise UserError(f"cannot tell whether {entry.label} is the query or the gallery side; pass --view query|gallery")


def export_u1652_mat(entry: Entry, out: Path, *, side: str | None = None, overwrite: bool = False) -> Path:
    """Write ``entry`` as one side (``query_*`` or ``gallery_*``) of ``<out>/pytorch_result.mat``.

    The other side of an existing file is kept, so a query export and a gallery export into one folder
    give the complete file University-1652's ``evaluate_gpu.py`` reads. A file that already holds this
    side is replaced only with ``overwrite`` (``--overwrite``); anything at that name but a regular file
    is refused. Written to a temporary name and renamed: a reader never sees a half-written file.
    """
    import scipy.io

    s = _mat_side(entry, side)
    target = out / MAT_FILE
    data: dict[str, np.ndarray] = {}
    if os.path.lexists(target):
        if not target.is_file():
            raise UserError(f"--out: {target} exists and is not a regular file; move it away or choose another folder")
        old = _loadmat(target)
        if any(k.startswith(f"{s}_") for k in old) and not overwrite:
            raise UserError(
                f"--out: {target} already holds a {s} side; choose another folder, or add --overwrite to replace that side"
            )
        other = [k for k in old if not k.startswith("__") and not k.startswith(f"{s}_")]
        data.update({k: old[k] for k in other})
    desc, labels, names = entry.read()
    data[f"{s}_f"] = np.ascontiguousarray(desc.reshape(desc.shape[0], -1), dtype=np.float32)
    data[f"{s}_label"] = np.asarray(labels, np.int64)
    # savemat pads a list of strings into a char matrix; the reader strips the padding again.
    data[f"{s}_path"] = np.array(names, dtype=str) if names else np.array([], dtype=str)
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        scipy.io.savemat(f, data, do_compression=False)
    return target


# --------------------------------------------------------------------------------------------------
# hloc and VPR-methods-evaluation


def _read_labels(path: Path | None, names: list[str], source: Path) -> np.ndarray:
    """``--labels`` when given, else integer parent folders, else -1 (unknown)."""
    if path is not None:
        if not path.is_file():
            raise UserError(f"labels file {path} not found; give --labels labels.npy with one int per row")
        lab = load_npy(path, "labels")
        if not np.issubdtype(lab.dtype, np.integer):
            raise UserError(f"labels in {path} are {lab.dtype}, expected integers")
        lab = lab.reshape(-1).astype(np.int64)
        if lab.shape[0] != len(names):
            raise UserError(f"{path} holds {lab.shape[0]} labels but {source} has {len(names)} rows; give one per row")
        return lab
    folders = [PurePosixPath(n).parent.name for n in names]
    if folders and all(_INT_FOLDER.fullmatch(f) for f in folders):
        return np.array([int(f) for f in folders], np.int64)
    return np.full(len(names), -1, np.int64)


def _hloc_names(f, limit: int | None = None) -> list[str]:
    """Image names of an hloc file: the group path of every ``global_descriptor`` dataset.

    A group name that is not UTF-8 (h5py hands it over as bytes) is a one-line :class:`UserError`.
    """
    import h5py

    found: list[str] = []

    def visit(name: str | bytes, obj) -> bool | None:
        if isinstance(name, bytes):
            raise UserError(
                f"{f.filename} holds a group name that is not UTF-8 ({name[:60]!r}); hloc names are image "
                "paths, store them as UTF-8"
            )
        if isinstance(obj, h5py.Dataset) and name.rsplit("/", 1)[-1] == HLOC_DATASET:
            found.append(name.rsplit("/", 1)[0] if "/" in name else "")
            if limit is not None and len(found) >= limit:
                return True  # stops the walk
        return None

    f.visititems(visit)
    return found


def _read_hloc(path: Path) -> tuple[list[str], np.ndarray]:
    """(sorted names, float32 [n, d] descriptors) of an hloc global-feature file.

    Every dataset is checked from its metadata (real-valued, a non-empty vector, stored as declared,
    one dimension for all) and the whole is checked against the memory available before any row is read.
    """
    import h5py
    require_regular_file(path, "the hloc file", "give hloc's global-feature .h5 file")
    try:
        with h5py.File(path, "r") as f:
            names = sorted(_hloc_names(f))
            if not names:
                raise UserError(
                    f"{path} holds no '{HLOC_DATASET}' datasets; give hloc's global-feature file "
                    "(extract_features.py with a global model such as netvlad)"
                )
            datasets = [f[f"{n}/{HLOC_DATASET}"] for n in names]
            dims = sorted({check_h5_descriptor(ds, f"{path}:{n}/{HLOC_DATASET}") for n, ds in zip(names, datasets)})
            if len(dims) != 1:
                raise UserError(
                    f"{path} holds global descriptors of dimensions {dims[:8]}; every image needs the same dimension"
                )
            check_fits_in_memory(len(names) * dims[0] * 4, f"{path} ({len(names):,} descriptors of {dims[0]:,} values)")
            desc = np.empty((len(names), dims[0]), np.float32)
            for i, ds in enumerate(datasets):
                desc[i] = np.asarray(ds[...]).reshape(-1)
    except OSError as e:
        raise UserError(f"{path} is not a readable HDF5 file ({e})") from None
    return names, desc


def import_hloc(store: CacheStore, path: Path, *, alias: str | None, labels: Path | None) -> tuple[str, Entry]:
    """Import hloc's global-descriptor HDF5 (``<name>/global_descriptor`` per image) as one entry."""
    from cvgl.cache.importers import import_arrays

    names, desc = _read_hloc(path)
    a = alias or path.stem
    entry = import_arrays(
        store,
        desc,
        _read_labels(labels, names, path),
        names,
        alias=a,
        source={"format": "hloc", "path": str(path)},
    )
    return a, entry


def parse_prefixes(items: list[str] | None) -> dict[str, str]:
    """``--prefix PREFIX=ROLE`` items (the last ``=`` splits, so a prefix may hold ``=``) as a mapping."""
    out: dict[str, str] = {}
    for item in items or []:
        prefix, sep, role = item.rpartition("=")
        role = role.strip()
        if not sep or not prefix or not role:
            raise UserError(f"--prefix {item!r} is not PREFIX=ROLE; e.g. --prefix db/=gallery --prefix query/=query")
        if role in out.values():
            raise UserError(f"--prefix gives role {role!r} twice; give each role one prefix")
        out[prefix] = role
    return out


def import_hloc_split(
    store: CacheStore, path: Path, prefixes: dict[str, str], *, alias: str | None, labels: Path | None
) -> list[tuple[str, Entry]]:
    """One entry ``<alias>.<role>`` per name prefix of an hloc file (hloc's ``db_prefix``/``query_prefix``)."""
    from cvgl.cache.importers import import_arrays

    names, desc = _read_hloc(path)
    all_labels = _read_labels(labels, names, path)
    base = alias or path.stem
    out = []
    for prefix, role in prefixes.items():
        rows = np.array([i for i, n in enumerate(names) if n.startswith(prefix)], dtype=np.int64)
        if rows.size == 0:
            raise UserError(
                f"no image name in {path} starts with {prefix!r} (e.g. {names[0]!r}); give the prefix hloc's "
                "db_prefix/query_prefix would use"
            )
        a = f"{base}.{role}"
        entry = import_arrays(
            store,
            desc[rows],
            all_labels[rows],
            [names[i] for i in rows],
            alias=a,
            view=role,
            source={"format": "hloc", "path": str(path), "prefix": prefix},
        )
        out.append((a, entry))
    return out


def _vpr_folder(source: Path) -> Path:
    folder = source if source.is_dir() else source.parent
    missing = [f for f in VPR_FILES.values() if not (folder / f).is_file()]
    if missing:
        raise UserError(
            f"{folder} lacks {', '.join(missing)}; give VPR-methods-evaluation's log folder "
            "(main.py --save_descriptors writes database_descriptors.npy and queries_descriptors.npy)"
        )
    return folder


def import_vpr(
    store: CacheStore, source: Path, *, alias: str | None, labels: Path | None, names: Path | None
) -> list[tuple[str, Entry]]:
    """Import VPR-methods-evaluation's descriptors as ``<alias>.database`` and ``<alias>.queries``."""
    folder = _vpr_folder(source)
    arrays = {}
    for side, file in VPR_FILES.items():
        arrays[side] = load_npy(folder / file, "descriptors")
        if arrays[side].ndim != 2:
            raise UserError(f"{folder / file} has shape {list(arrays[side].shape)}; expected [n, d]")
    n_db, n_q = arrays["database"].shape[0], arrays["queries"].shape[0]
    if arrays["database"].shape[1] != arrays["queries"].shape[1]:
        raise UserError(
            f"database descriptors in {folder} have dimension {arrays['database'].shape[1]} but queries "
            f"{arrays['queries'].shape[1]}; export both from the same run"
        )
    if names is not None:
        if not names.is_file():
            raise UserError(f"names file {names} not found; give a text file with one name per line")
        text = read_text_file(names, "names file", "save it as UTF-8 text, one name per line")
        all_names = [ln for ln in text.splitlines() if ln.strip()]
        if len(all_names) != n_db + n_q:
            raise UserError(
                f"{names} has {len(all_names)} names but {folder} holds {n_db} database + {n_q} query rows; "
                "list the database images first, then the queries, one per line"
            )
    roots: dict[str, str | None] = {"database": None, "queries": None}
    if names is None:
        listed = vpr_logged_names(folder, {"database": n_db, "queries": n_q})
        if listed is not None:
            all_names = listed["database"][1] + listed["queries"][1]
            roots = {side: listed[side][0] for side in listed}
    if names is None and roots["database"] is None:
        all_names = [f"database/{i:07d}" for i in range(n_db)] + [f"queries/{i:07d}" for i in range(n_q)]
    all_labels = _read_labels(labels, all_names, folder)
    base = alias or folder.name
    out = []
    spans = {"database": slice(0, n_db), "queries": slice(n_db, n_db + n_q)}
    for side, span in spans.items():
        a = f"{base}.{side}"
        entry = import_arrays(
            store,
            arrays[side],
            all_labels[span],
            all_names[span],
            alias=a,
            view=side,
            source={"format": "vpr", "path": str(folder / VPR_FILES[side]), "side": side},
            root=roots[side],
        )
        out.append((a, entry))
    return out


def _vpr_images(folder: str) -> list[str]:
    """The image paths of one folder in ``test_dataset.read_images_paths``'s order."""
    listing = folder + "_images_paths.txt"
    if os.path.exists(listing):
        with open(listing, encoding="utf-8") as f:
            return [folder + "/" + p for p in f.read().splitlines()]
    paths = sorted(glob.glob(f"{folder}/**/*", recursive=True))
    return [p for p in paths if os.path.isfile(p) and os.path.splitext(p)[1].lower() in _VPR_IMAGE_EXTS]


def vpr_logged_names(folder: Path, counts: dict[str, int]) -> dict[str, tuple[str, list[str]]] | None:
    """``{side: (image folder, names relative to it)}`` from the run's ``info.log``, or None (with a
    warning saying why) when the log or its image folders are gone or disagree with the arrays."""
    log = folder / VPR_LOG
    if not log.is_file():
        return None
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    out: dict[str, tuple[str, list[str]]] = {}
    for side, arg in VPR_FOLDER_ARGS.items():
        m = re.search(rf"\b{arg}=(['\"])(.*?)\1", text)
        if m is None:
            return None
        where = m.group(2)
        if not os.path.isdir(where):
            warnings.warn(
                f"{log} names {arg} {where}, which is not a folder here; rows are imported without names "
                "(and without positions): give --names, one image path per row",
                stacklevel=2,
            )
            return None
        paths = _vpr_images(where)
        if len(paths) != counts[side]:
            warnings.warn(
                f"{where} holds {len(paths)} images but {folder} has {counts[side]} {side} rows; rows are "
                "imported without names: give --names, one image path per row",
                stacklevel=2,
            )
            return None
        names = [PurePosixPath(Path(p).relative_to(where).as_posix()).as_posix() for p in paths]
        out[side] = (str(Path(where).resolve()), names)
    return out
