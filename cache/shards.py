"""HDF5 shards: one file holds a contiguous row range of an entry.

Layout of ``shard-00000.h5`` (readable with plain h5py):
    descriptors  [n, *shape]  float16|float32, contiguous (a shard is the unit of I/O: read whole,
                              contiguous storage reads at plain-file speed, chunked storage 2-3× slower)
    labels       [n]          int64 (-1 = junk / unknown, -2 = distractor: matches no query)
    names        [n]          utf-8 strings, paths relative to the dataset root
    attrs        key, shard_index, row_start, row_end, descriptors_sum64, labels_sum64, names_sha256
A shard is written to a temporary name, fsynced, then renamed: a file with the final name is
always complete.

Every read checks the shard's contents against checksums stored in its attributes: a 64-bit
word-sum for the numeric arrays (one pass at memory speed; HDF5's fletcher32 filter costs 2-3× the
read itself) and sha256 for the names. ``pipeline cache verify`` additionally checks the sha256 of
the whole file recorded in the manifest.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import h5py
import numpy as np

from configs.errors import UserError


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.h5"


def names_digest(names: list[str]) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def sum64(arr: np.ndarray) -> int:
    """Wrap-around sum of the array's bytes read as little-endian uint64 words (tail zero-padded)."""
    b = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
    head = b[: b.size - b.size % 8].view("<u8")
    tail = np.zeros(8, np.uint8)
    tail[: b.size % 8] = b[b.size - b.size % 8 :]
    with np.errstate(over="ignore"):
        return int(head.sum(dtype=np.uint64) + tail.view("<u8")[0])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_shard(
    path: Path,
    descriptors: np.ndarray,
    labels: np.ndarray,
    names: list[str],
    *,
    key: str,
    index: int,
    row_start: int,
    dtype: str,
) -> None:
    """Write one shard atomically (temporary name → fsync → rename)."""
    n = descriptors.shape[0]
    if labels.shape != (n,) or len(names) != n:
        raise ValueError(f"shard rows disagree: {n} descriptors, {labels.shape} labels, {len(names)} names")
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    data = np.ascontiguousarray(descriptors, dtype=np.dtype(dtype))
    with h5py.File(tmp, "w") as f:
        if n:
            f.create_dataset("descriptors", data=data)
            f.create_dataset("labels", data=labels.astype(np.int64))
        else:
            f.create_dataset("descriptors", shape=data.shape, dtype=data.dtype)
            f.create_dataset("labels", shape=(0,), dtype=np.int64)
        f.create_dataset("names", data=np.array(names, dtype=object), dtype=h5py.string_dtype("utf-8"))
        f.attrs.update(
            {
                "key": key,
                "shard_index": index,
                "row_start": row_start,
                "row_end": row_start + n,
                "names_sha256": names_digest(list(names)),
                "descriptors_sum64": str(sum64(data)),
                "labels_sum64": str(sum64(labels.astype(np.int64))),
            }
        )
        f.flush()
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def read_shard_attrs(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}


def read_shard(
    path: Path, *, with_descriptors: bool = True, with_names: bool = True
) -> tuple[np.ndarray | None, np.ndarray, list[str] | None]:
    """Read a shard; any checksum or structure failure becomes a UserError naming the file."""
    try:
        with h5py.File(path, "r") as f:
            desc = f["descriptors"][...] if with_descriptors else None
            labels = f["labels"][...]
            if desc is not None and str(sum64(desc)) != f.attrs["descriptors_sum64"]:
                raise OSError("descriptor checksum mismatch")
            if str(sum64(labels)) != f.attrs["labels_sum64"]:
                raise OSError("label checksum mismatch")
            names = None
            if with_names:
                names = [s.decode() if isinstance(s, bytes) else s for s in f["names"][...]]
                if names_digest(names) != f.attrs["names_sha256"]:
                    raise OSError("names checksum mismatch")
    except (OSError, KeyError, ValueError) as e:
        raise UserError(
            f"cache shard {path} is corrupt ({e}); run `pipeline cache verify` and `pipeline cache rm` "
            "on that entry, then recompute it"
        ) from None
    return desc, labels, names


def read_shard_rows(path: Path, rows: np.ndarray) -> np.ndarray:
    """Descriptors of the given (sorted, shard-local) rows, for random-access training batches.

    Whole-shard checksums cannot be checked on a partial read; ``pipeline cache verify`` covers them.
    """
    try:
        with h5py.File(path, "r") as f:
            return f["descriptors"][np.asarray(rows, dtype=np.int64)]
    except (OSError, KeyError, ValueError) as e:
        raise UserError(
            f"cache shard {path} is corrupt ({e}); run `pipeline cache verify` and `pipeline cache rm` "
            "on that entry, then recompute it"
        ) from None
