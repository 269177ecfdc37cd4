"""Imports refuse, in one UserError, what would crash, hang, exhaust memory or import junk."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from cvgl.cache.array_files import load_npy
from cvgl.cache.interop import import_any
from cvgl.cache.store import CacheStore
from cvgl.core.errors import UserError
from cvgl.core.memory import check_fits_in_memory


@pytest.fixture()
def store(tmp_path):
    return CacheStore(tmp_path / "cache")


def _refused(store, path, match, **kw):
    with pytest.raises(UserError, match=match) as e:
        import_any(store, Path(path), **kw)
    assert "\n" not in str(e.value)
    entries = store.root / "entries"
    assert not entries.exists() or not any(entries.iterdir())
    return str(e.value)


def _mat_bytes(q_label=None, q_path=None, compress=True) -> bytes:
    data = {
        "query_f": np.ones((5, 8), np.float32),
        "query_label": np.arange(5) if q_label is None else q_label,
        "gallery_f": np.ones((3, 8), np.float32),
        "gallery_label": np.array([1, 2, 3]),
    }
    if q_path is not None:
        data["query_path"] = q_path
    buf = io.BytesIO()
    scipy.io.savemat(buf, data, do_compression=compress)
    return buf.getvalue()


# -- .mat ------------------------------------------------------------------------------------------


def test_empty_and_truncated_mat_files_are_one_line(store, tmp_path):
    good = _mat_bytes()
    for name, data in (("empty.mat", b""), ("header.mat", good[:100]), ("half.mat", good[: len(good) // 2])):
        (tmp_path / name).write_bytes(data)
        msg = _refused(store, tmp_path / name, "truncated")
        assert name in msg


def test_mat_label_beyond_int64_is_refused_not_wrapped_to_minus_one(store, tmp_path):
    (tmp_path / "u64.mat").write_bytes(_mat_bytes(q_label=np.array([2**64 - 1, 1, 2, 3, 4], np.uint64)))
    _refused(store, tmp_path / "u64.mat", "int64 range")


def test_mat_negative_dims_are_refused(store, tmp_path):
    data = bytearray(_mat_bytes(compress=False))
    # query_f is the first variable: its dims follow the 128-byte header, the matrix tag, the array
    # flags and the dims tag.
    at = data.find(struct.pack("<ii", 5, 8), 128 + 8 + 16 + 8 - 1)
    assert at == 128 + 8 + 16 + 8
    data[at : at + 4] = struct.pack("<i", -5)
    (tmp_path / "neg.mat").write_bytes(bytes(data))
    _refused(store, tmp_path / "neg.mat", r"dims \[-5, 8\]")


def test_mat_names_with_a_line_break_are_refused_at_import(store, tmp_path):
    names = np.array(["query/1/a\nb.jpg", "query/2/c.jpg", "query/3/d.jpg", "query/4/e.jpg", "query/5/f.jpg"])
    (tmp_path / "nl.mat").write_bytes(_mat_bytes(q_path=names))
    _refused(store, tmp_path / "nl.mat", "line break")


# -- hloc ------------------------------------------------------------------------------------------


def _hloc(path: Path, make) -> Path:
    with h5py.File(path, "w") as f:
        for i in range(2):
            make(f, f"db/{i}/im{i}.jpg/global_descriptor")
    return path


@pytest.mark.parametrize(
    ("kind", "make", "match"),
    [
        ("strings", lambda f, n: f.create_dataset(n, data=np.array([b"ab", b"cd"])), "byte strings"),
        ("records", lambda f, n: f.create_dataset(n, data=np.zeros(3, dtype=[("a", "f4"), ("b", "i4")])), "records"),
        ("complex", lambda f, n: f.create_dataset(n, data=np.ones(3, np.complex64)), "complex"),
        ("bool", lambda f, n: f.create_dataset(n, data=np.ones(3, bool)), "booleans"),
        ("zero-length", lambda f, n: f.create_dataset(n, shape=(0,), dtype="f4"), "empty"),
        ("scalar", lambda f, n: f.create_dataset(n, data=np.float32(1.0)), "scalar"),
    ],
)
def test_hloc_descriptors_npy_import_would_refuse_are_refused(store, tmp_path, kind, make, match):
    _refused(store, _hloc(tmp_path / f"{kind}.h5", make), match, fmt="hloc")


def test_hloc_group_name_that_is_not_utf8_is_one_line(store, tmp_path):
    with h5py.File(tmp_path / "names.h5", "w") as f:
        f.create_dataset("ok/global_descriptor", data=np.ones(3, np.float32))
        f.create_group(b"bad\xff\xfe").create_dataset("global_descriptor", data=np.ones(3, np.float32))
    for fmt in ("hloc", "auto"):
        _refused(store, tmp_path / "names.h5", "not UTF-8", fmt=fmt)


def test_hloc_row_of_2_31_floats_is_refused_before_reading(store, tmp_path):
    with h5py.File(tmp_path / "big.h5", "w") as f:
        f.create_dataset("im0/global_descriptor", shape=(2**31,), dtype="f4")  # declared, never written
    _refused(store, tmp_path / "big.h5", "declares 8.0 GB of data but stores 0 bytes", fmt="hloc")


def test_compressed_hloc_larger_than_memory_is_refused_before_reading(store, tmp_path):
    with h5py.File(tmp_path / "z.h5", "w") as f:
        f.create_dataset("im0/global_descriptor", shape=(2**40,), dtype="f4", compression="gzip", chunks=(2**20,))
    _refused(store, tmp_path / "z.h5", "memory available", fmt="hloc")


def test_real_hloc_file_still_imports(store, tmp_path):
    rng = np.random.default_rng(0)
    path = _hloc(tmp_path / "ok.h5", lambda f, n: f.create_dataset(n, data=rng.random(16).astype(np.float32)))
    [(alias, _key, rows)] = import_any(store, path, fmt="hloc")
    assert rows == 2 and store.open(alias).read()[0].shape == (2, 16)


# -- npy -------------------------------------------------------------------------------------------


def _npy_header_only(path: Path, shape) -> Path:
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": shape})
        fh.write(b"\0" * 64)
    return path


def test_npy_header_of_10_11_rows_is_refused_before_allocating(store, tmp_path):
    msg = _refused(store, _npy_header_only(tmp_path / "huge.npy", (10**11, 8)), "declares shape")
    assert "[100000000000, 8]" in msg


def test_npy_labels_and_vpr_files_are_checked_the_same_way(store, tmp_path):
    np.save(tmp_path / "d.npy", np.ones((4, 3), np.float32))
    _npy_header_only(tmp_path / "labels.npy", (10**12,))
    _refused(store, tmp_path / "d.npy", "declares shape", labels=tmp_path / "labels.npy")
    vpr = tmp_path / "vpr"
    vpr.mkdir()
    np.save(vpr / "queries_descriptors.npy", np.ones((2, 3), np.float32))
    _npy_header_only(vpr / "database_descriptors.npy", (10**11, 3))
    _refused(store, vpr, "declares shape")


def test_a_fifo_as_npy_is_refused_unopened(tmp_path):
    import os

    os.mkfifo(tmp_path / "d.npy")
    with pytest.raises(UserError, match="FIFO"):
        load_npy(tmp_path / "d.npy", "descriptors")


def test_memory_check_refuses_only_what_cannot_fit():
    check_fits_in_memory(10**6, "x", available=10**9)
    with pytest.raises(UserError, match="memory available"):
        check_fits_in_memory(10**9, "x", available=10**9)


def test_plain_h5_descriptors_never_written_are_refused_before_reading(store, tmp_path):
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f.create_dataset("descriptors", shape=(2**31, 8), dtype="f4")
    _refused(store, tmp_path / "plain.h5", "never written", fmt="h5")
