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

import errno
import hashlib
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from cvgl.core.atomic import write_bytes_atomic
from cvgl.core.errors import UserError


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
    attrs: Mapping[str, object] | None = None,
) -> None:
    """Write one shard atomically (temporary name → fsync → rename); ``attrs`` adds attributes.

    The HDF5 file is built in memory and written with a plain ``write``: HDF5 cannot close a file
    whose flush failed on a full disk, and the half-closed file crashes the interpreter when it is
    garbage-collected. In memory nothing can fail that way, and a full disk is one clean error
    (:func:`configs.diskspace.no_space_error`) with the temporary file removed.
    """
    n = descriptors.shape[0]
    if labels.shape != (n,) or len(names) != n:
        raise ValueError(f"shard rows disagree: {n} descriptors, {labels.shape} labels, {len(names)} names")
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    data = np.ascontiguousarray(descriptors, dtype=np.dtype(dtype))
    image = io.BytesIO()
    with h5py.File(image, "w") as f:
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
                **dict(attrs or {}),
            }
        )
    # getbuffer() shares the image's memory: a shard is not copied a second time on its way out.
    write_bytes_atomic(path, image.getbuffer(), tmp=tmp)


def read_shard_attrs(path: Path) -> dict:
    """The shard's attributes as plain Python values (no dataset is read)."""
    with h5py.File(path, "r") as f:
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}


@dataclass(frozen=True)
class ShardIdentity:
    """What an entry's manifest says one of its shards is; readers compare the shard's attrs with it.

    ``row_start`` counts stored rows (the manifest's contiguous ranges) while a shard's own
    ``row_start`` attr is its first input row (``index · shard_rows``); the two differ by the inputs
    left out of earlier shards, so at most ``skipped`` (the entry's whole skip count) apart.
    """

    entry: str  # the entry's alias or short key, for messages
    key: str
    index: int
    row_start: int
    rows: int
    skipped: int = 0


def identity_problem(attrs: Mapping, stored_rows: int, expect: ShardIdentity) -> str | None:
    """Why a shard (its attrs and its descriptors' row count) is not the one the manifest lists, or None.

    Attributes only: a copied or misplaced shard is caught without a pass over its data.
    """
    try:
        key = attrs.get("key")
        key = key.decode() if isinstance(key, bytes) else key
        index = int(attrs["shard_index"])
        row_start, row_end = int(attrs["row_start"]), int(attrs["row_end"])
        input_end = int(attrs.get("input_end", row_end))
    except (KeyError, TypeError, ValueError):
        return "its attributes lack the key, shard index or row range"
    if key != expect.key:
        return f"it belongs to entry {str(key)[:12]}, not {expect.key[:12]} (a shard copied from another entry)"
    if index != expect.index:
        return f"it is shard {index}, the manifest lists shard {expect.index} here"
    if row_end - row_start != expect.rows or stored_rows != expect.rows:
        return f"it holds {stored_rows} rows (attrs {row_start}..{row_end}), the manifest says {expect.rows}"
    # Input rows before this shard = stored rows before it + inputs skipped before it.
    if not 0 <= row_start - expect.row_start <= expect.skipped or input_end < row_end:
        return f"its rows start at input row {row_start}, which does not fit stored row {expect.row_start}"
    return None


def _shard_error(path: Path, e: Exception) -> UserError:
    """A read failure as one line: a shard gone mid-read is a removed entry, anything else corruption."""
    if isinstance(e, FileNotFoundError) or getattr(e, "errno", None) == errno.ENOENT or not path.exists():
        return UserError(
            f"cache shard {path} is gone: the entry was removed while reading (e.g. by `pipeline cache rm`); "
            "rerun the command to recompute or reuse it"
        )
    return UserError(
        f"cache shard {path} is corrupt ({e}); run `pipeline cache verify` and `pipeline cache rm` "
        "on that entry, then recompute it"
    )


def _check_identity(path: Path, f: h5py.File, expect: ShardIdentity | None) -> None:
    if expect is None:
        return
    problem = identity_problem(f.attrs, int(f["descriptors"].shape[0]), expect)
    if problem is not None:
        raise UserError(
            f"cache shard {path} is not part of entry {expect.entry}: {problem}; "
            f"run `pipeline cache rm {expect.entry}` and recompute it"
        )


def read_shard(
    path: Path,
    *,
    with_descriptors: bool = True,
    with_names: bool = True,
    expect: ShardIdentity | None = None,
) -> tuple[np.ndarray | None, np.ndarray, list[str] | None]:
    """Read a shard; any checksum or structure failure becomes a UserError naming the file.

    With ``expect`` the shard's identity (key, index, row range, row count) is checked against the
    manifest first, from its attributes.
    """
    try:
        with h5py.File(path, "r") as f:
            _check_identity(path, f, expect)
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
        raise _shard_error(path, e) from None
    return desc, labels, names


def read_shard_rows(path: Path, rows: np.ndarray, *, expect: ShardIdentity | None = None) -> np.ndarray:
    """Descriptors of the given (sorted, shard-local) rows, for random-access training batches.

    Whole-shard checksums cannot be checked on a partial read; ``pipeline cache verify`` covers them.
    The identity (``expect``) is checked from the attributes on every read.
    """
    try:
        with h5py.File(path, "r") as f:
            _check_identity(path, f, expect)
            return f["descriptors"][np.asarray(rows, dtype=np.int64)]
    except (OSError, KeyError, ValueError) as e:
        raise _shard_error(path, e) from None
