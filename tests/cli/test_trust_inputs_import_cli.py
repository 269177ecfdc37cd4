"""`pipeline cache import` of files whose headers lie: one line, exit 2, nothing allocated or cached."""

from __future__ import annotations

import h5py
import numpy as np

from tests.helpers import cli, one_error_line


def test_npy_header_declaring_10_11_rows_is_one_line(tmp_path):
    with open(tmp_path / "huge.npy", "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (10**11, 8)})
    p = cli("cache", "import", str(tmp_path / "huge.npy"), cache=tmp_path / "c", cwd=tmp_path, timeout=120)
    assert "declares shape" in one_error_line(p)


def test_hloc_row_of_2_31_floats_is_one_line(tmp_path):
    with h5py.File(tmp_path / "feats.h5", "w") as f:
        f.create_dataset("db/im0.jpg/global_descriptor", shape=(2**31,), dtype="f4")
    p = cli("cache", "import", str(tmp_path / "feats.h5"), "--format", "hloc", cache=tmp_path / "c", cwd=tmp_path, timeout=120)
    assert "declares 8.0 GB of data but stores 0 bytes" in one_error_line(p)
