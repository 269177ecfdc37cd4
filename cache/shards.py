"""HDF5 shards: one file holds a contiguous row range of an entry.

Layout of ``shard-00000.h5`` (readable with plain h5py):
    descriptors  [n, *shape]  float16|float32, chunked by rows, fletcher32 checksummed
    labels       [n]          int64 (-1 = junk / unknown), fletcher32 checksummed
    names        [n]          utf-8 strings, paths relative to the dataset root
    attrs        key, shard_index, row_start, row_end, names_sha256
A shard is written to a temporary name, fsynced, then renamed: a file with the final name is
always complete.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import h5py
import numpy as np

from configs.errors import UserError

CHUNK_BYTES = 1 << 20  # ~1 MiB chunks: large enough for streaming speed, small for checksumming


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.h5"


def names_digest(names: list[str]) -> str:
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


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
    row_bytes = max(1, int(np.prod(data.shape[1:])) * data.dtype.itemsize)
    chunk_rows = int(max(1, min(n, CHUNK_BYTES // row_bytes))) if n else 1
    with h5py.File(tmp, "w") as f:
        if n:
            f.create_dataset("descriptors", data=data, chunks=(chunk_rows, *data.shape[1:]), fletcher32=True)
            f.create_dataset(
                "labels", data=labels.astype(np.int64), chunks=(min(n, 1 << 16),), fletcher32=True
            )
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
