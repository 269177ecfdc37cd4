"""Arrays read from users' files, checked from their headers before any data is read.

A ``.npy`` header and an HDF5 dataset's extent declare a shape; nothing is allocated before the
declared size is checked against the bytes the file really holds and against the memory available
(:func:`cvgl.core.memory.check_fits_in_memory`). A header of (10¹¹, 8) in a 100-byte file, or an
HDF5 dataset of 2³¹ floats that was never written, is one line instead of ``MemoryError``. The dtype is
checked from the header too: only real numbers (float, signed and unsigned integers) are descriptors.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from cvgl.core.errors import UserError
from cvgl.core.memory import check_fits_in_memory, human_bytes
from cvgl.core.path_errors import require_regular_file

# dtype kinds that are real numbers: float, signed and unsigned integers. Everything else (complex,
# bool, strings, bytes, Python objects, records, dates) would be cast silently or fail deep inside.
REAL_KINDS = frozenset("fiu")
KIND_WORDS = {
    "c": "complex numbers (casting would drop the imaginary part)",
    "U": "text strings",
    "S": "byte strings",
    "O": "Python objects",
    "b": "booleans",
    "V": "records",
    "M": "dates",
    "m": "time spans",
}


def declared_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Bytes an array of ``shape`` and ``dtype`` holds, in Python integers (no overflow)."""
    return math.prod(int(d) for d in shape) * int(dtype.itemsize)


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, offset of the data) from a ``.npy`` header; nothing past the header is read."""
    fmt = np.lib.format
    with open(path, "rb") as fh:
        version = fmt.read_magic(fh)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _fortran, dtype = read(fh)
        return tuple(int(d) for d in shape), np.dtype(dtype), fh.tell()


def load_npy(path: Path, what: str) -> np.ndarray:
    """A ``.npy`` array (``what``: descriptors, labels), never unpickled, checked from its header first.

    Refused in one line: a path that is not a regular file, a header that does not parse, an object
    dtype (loadable only by unpickling), a file shorter than its header declares, and a declared size
    the memory available cannot hold.
    """
    st = require_regular_file(path, f"the {what} file", "give a .npy file")
    try:
        shape, dtype, offset = npy_header(path)
    except (OSError, ValueError, SyntaxError, TypeError) as e:
        raise UserError(f"{path} is not a readable .npy array ({type(e).__name__}: {e}); give a .npy file") from None
    if dtype.hasobject:
        raise UserError(
            f"{what} in {path} have dtype object (Python objects, loadable only by unpickling); "
            "save a numeric array"
        )
    need = declared_bytes(shape, dtype)
    if st.st_size - offset < need:
        raise UserError(
            f"{path} is truncated or its header is corrupt: it declares shape {list(shape)} of {dtype} "
            f"({human_bytes(need)}) but holds {human_bytes(max(st.st_size - offset, 0))} of data; save the array again"
        )
    check_fits_in_memory(need, f"{path} (shape {list(shape)} of {dtype})")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable .npy array ({e})") from None


def check_h5_descriptor(ds: Any, where: str) -> int:
    """Check one HDF5 descriptor dataset from its metadata; returns its number of values.

    Refused in one line: a dtype that is not real numbers (strings, records, complex, booleans), a
    scalar or empty dataset, and an uncompressed dataset that stores fewer bytes than it declares
    (never written, or truncated: reading it would return fill values).
    """
    try:
        dtype = np.dtype(ds.dtype)
    except TypeError:
        raise UserError(f"{where} has an HDF5 type numpy cannot read; store real-valued floats") from None
    if dtype.kind not in REAL_KINDS:
        what = KIND_WORDS.get(dtype.kind, "not real numbers")
        raise UserError(f"{where} holds {dtype} ({what}); store real-valued float descriptors")
    if ds.shape is None or len(ds.shape) == 0:
        raise UserError(f"{where} is a scalar, not a descriptor vector; store a 1-D array [d]")
    size = math.prod(int(d) for d in ds.shape)
    if size == 0:
        raise UserError(f"{where} is empty (shape {list(ds.shape)}); store a 1-D array [d] with d > 0")
    check_h5_stored(ds, where, size * dtype.itemsize)
    return size


def check_h5_stored(ds: Any, where: str, need: int | None = None) -> None:
    """An uncompressed HDF5 dataset must store the bytes its extent declares (``need``, default its
    size), else it was never written or the file is truncated: reading it would return fill values."""
    if need is None:
        need = declared_bytes(tuple(ds.shape or ()), np.dtype(ds.dtype))
    if ds.id.get_create_plist().get_nfilters() == 0:  # compressed data may rightly store less
        stored = ds.id.get_storage_size()
        if stored < need:
            raise UserError(
                f"{where} declares {human_bytes(need)} of data but stores {human_bytes(stored)}: it was never "
                "written or the file is truncated; write the array again"
            )
