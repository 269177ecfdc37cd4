"""positions.h5 beside an entry's shards: written with the manifest, read by name, verified, inherited."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from cvgl.cache.positions import entry_positions
from cvgl.cache.store import CacheStore
from cvgl.core.errors import UserError
from cvgl.datasets.positions import Positions, positions_csv_text, read_positions, write_positions


def _positions(names):
    n = len(names)
    p = Positions.empty_like(names, "01")
    p.lat[:] = np.linspace(30.0, 30.1, n)
    p.lon[:] = np.linspace(117.0, 117.2, n)
    p.time[:] = np.arange(n) * 2.0
    p.footprint[:] = np.arange(n * 8, dtype=np.float64).reshape(n, 4, 2)
    return p


def test_positions_round_trip_by_name_and_plain_h5py(tmp_path):
    store = CacheStore(tmp_path / "c")
    names = ["a.jpg", "b.jpg", "c.jpg"]
    w = store.writer("ab" * 32, {"kind": "t"}, shape=(4,), dtype="float32", total_rows=3)
    w.add(np.ones((3, 4), np.float32), np.arange(3), names)
    pos = _positions(names)
    w.finish(alias="x", extra=write_positions(pos, w.dir))
    entry = store.open("x")
    got = entry_positions(store, entry)
    np.testing.assert_array_equal(got.lat, pos.lat)
    np.testing.assert_array_equal(got.footprint, pos.footprint)
    assert got.sequence == ["01"] * 3 and got.names == names
    with h5py.File(store.entry_dir(entry.key) / "positions.h5") as f:
        assert [s.decode() for s in f["names"][...]] == names
        assert f["footprint"].shape == (3, 4, 2) and f["lat"].dtype == np.float64
    info = entry.manifest.extra["positions"]
    back = read_positions(store.entry_dir(entry.key), info, ["c.jpg", "a.jpg"])
    assert back.names == ["c.jpg", "a.jpg"] and back.lat[0] == pos.lat[2]
    text = positions_csv_text(back).splitlines()
    assert text[0].startswith("name,lat,lon,lt_lat") and text[1].split(",")[0] == "c.jpg"
    assert store.verify()[entry.key] == []

    # An entry computed from it (aligned) reads its parent's positions.
    child = store.put_arrays({"kind": "aligned"}, np.ones((3, 2), np.float32), np.arange(3), names,
                             alias="y", parents=[entry.key])  # fmt: skip
    assert entry_positions(store, child).names == names

    # Altered: verify names it; reading it is one line.
    path = store.entry_dir(entry.key) / "positions.h5"
    path.write_bytes(path.read_bytes()[:-7] + b"garbage")
    assert any("positions.h5" in p for p in store.verify()[entry.key])
    with pytest.raises(UserError, match="positions file .* unreadable or corrupt"):
        entry_positions(store, store.open("x"))
    with pytest.raises(UserError, match="does not cover"):
        read_positions(tmp_path, write_positions(pos, tmp_path)["positions"], ["z.jpg"])


def test_entries_without_positions_have_none(tmp_path):
    store = CacheStore(tmp_path / "c")
    e = store.put_arrays({"kind": "plain"}, np.ones((2, 2), np.float32), np.arange(2), ["a", "b"], alias="p")
    assert entry_positions(store, e) is None
