"""GeoAlign feature folders: release evaluation and `cache import` read them with the same checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cvgl.align.geoalign_release import read_feature_dir, release_descriptors
from cvgl.cache.interop import import_any
from cvgl.cache.store import CacheStore
from cvgl.core.errors import UserError

from tests.unit.test_geoalign_release import BACKBONE, write_release

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_release_evaluation_reads_exactly_what_import_caches(tmp_path):
    root = tmp_path / "GeoAlign"
    write_release(root)
    store = CacheStore(tmp_path / "c")
    import_any(store, root / "feats_test" / BACKBONE, alias="ga", fmt="geoalign")
    for v in ("sat", "dro"):
        desc, ids, names = read_feature_dir(root / "feats_test" / BACKBONE / "28", v)
        c_desc, c_ids, c_names = store.open(f"ga.{v}@28").read()
        np.testing.assert_array_equal(desc.numpy(), c_desc)
        np.testing.assert_array_equal(ids.numpy(), c_ids)
        assert names == c_names


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("dro_feat", torch.ones(20, 24, dtype=torch.bool), "not real numbers"),
        ("dro_feat", torch.ones(20, 4, 6), "not a 2-D feature tensor"),
        ("dro_id", torch.full((20,), 0.5), "integers"),
        ("dro_name", [b"\xff"] * 20, "not UTF-8"),
    ],
    ids=["boolean-features", "3-D-features", "fractional-ids", "non-UTF-8-names"],
)
def test_release_evaluation_refuses_what_import_refuses_in_one_line(tmp_path, name, value, expected):
    root = tmp_path / "GeoAlign"
    write_release(root)
    layer = root / "feats_test" / BACKBONE / "28"
    torch.save(value, layer / name)
    with pytest.raises(UserError, match=expected) as release_err:
        release_descriptors(root, mode="D2S", fusion=False)
    with pytest.raises(UserError, match=expected) as import_err:
        import_any(CacheStore(tmp_path / "c"), layer, alias="x", fmt="geoalign")
    assert name in str(release_err.value) and "\n" not in str(release_err.value)
    assert "\n" not in str(import_err.value)
