"""Aligned cache keys are a promise: entries aligned by an earlier version are reused by this one.

The inputs are fixed: descriptors built by integer arithmetic (no random generator, no libm), imported
with what ``pipeline cache import`` runs (an import's key is a digest of its content), and conv maps cached under
a fixed spec. Each method then runs through ``pipeline align`` in a real process with tiny epochs.
An aligned key is a digest of its spec (the run digest, the view, the parents), never of the trained
values, so these keys and run digests are the same on every machine. If a change alters what goes into
an alignment's key, the values below change and this test fails: every user's aligned entries would be
retrained.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import cli

ROOT = Path(__file__).resolve().parents[2]
LAYERS = (1, 2)
DIM = 16
# float32 and CPU: align.dtype=auto would put bfloat16 into the key on CPUs that have it.
COMMON = [
    "name=pin",
    "backbone.layers=[1,2]",
    "align.device=cpu",
    "align.dtype=float32",
    "align.isms.out_dim=8",
    "align.isms.epochs=1",
    "align.isms.batch_size=16",
]


def _descriptors(n: int, salt: int) -> np.ndarray:
    """Fixed [n, DIM] float32 values, exact on every machine (integers divided by a power of two)."""
    i = np.arange(n, dtype=np.int64)[:, None]
    j = np.arange(DIM, dtype=np.int64)[None, :]
    return (((i * 31 + j * 17 + salt * 7) % 61 - 30) / 8).astype(np.float32)


def _import(tmp: Path, store, alias: str, desc: np.ndarray, labels: np.ndarray, images: str) -> None:
    """``pipeline cache import`` of .npy descriptors, labels and a names file (its function, in-process)."""
    from cvgl.cache.importers import import_npy

    stem = alias.replace("@", "_")
    np.save(tmp / f"{stem}.npy", desc)
    np.save(tmp / f"{stem}.labels.npy", labels.astype(np.int64))
    (tmp / f"{stem}.txt").write_text("".join(f"{images}/{i:03d}.jpg\n" for i in range(len(desc))))
    import_npy(
        store, tmp / f"{stem}.npy", labels=tmp / f"{stem}.labels.npy", names=tmp / f"{stem}.txt", alias=alias
    )


def _conv_maps(cache: Path) -> None:
    """Ground [8, 3, 13] and aerial [8, 6, 6] conv maps, 16 pairs, under fixed specs."""
    from cvgl.cache.store import CacheStore

    store = CacheStore(cache)
    n = 16
    idx = np.arange(n * 8 * 3 * 13, dtype=np.int64).reshape(n, 8, 3, 13)
    ground = (((idx * 13) % 29 - 14) / 4).astype(np.float32)
    idx = np.arange(n * 8 * 6 * 6, dtype=np.int64).reshape(n, 8, 6, 6)
    aerial = (((idx * 11) % 23 - 11) / 4).astype(np.float32)
    for view, maps in (("ground", ground), ("aerial", aerial)):
        store.put_arrays(
            {"kind": "pinned-conv-maps", "view": view},
            maps,
            np.arange(n),
            [f"{view}/{i:03d}" for i in range(n)],
            alias=f"cv.{view}@conv5_3",
            extra={"view": view},
            shard_rows=8,
        )


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    from cvgl.cache.store import CacheStore

    tmp = tmp_path_factory.mktemp("pinned")
    cache = tmp / "cache"
    store = CacheStore(cache)
    sat_labels, drone_labels = np.arange(8), np.arange(24) // 3
    views = {  # view: (salt, labels, image folder); S2D sees the same arrays under its view names
        "query_drone": (1, drone_labels, "drone"),
        "gallery_satellite": (2, sat_labels, "satellite"),
        "query_satellite": (2, sat_labels, "satellite"),
        "gallery_drone": (1, drone_labels, "drone"),
        "train.drone": (3, drone_labels + 100, "train/drone"),
        "train.satellite": (4, sat_labels + 100, "train/satellite"),
    }
    for L in LAYERS:
        for view, (salt, labels, images) in views.items():
            _import(tmp, store, f"pin.{view}@{L}", _descriptors(len(labels), salt + 10 * L), labels, images)
    _conv_maps(cache)
    return cache


TRAIN = [
    "align.train_drone=[pin.train.drone@1,pin.train.drone@2]",
    "align.train_satellite=[pin.train.satellite@1,pin.train.satellite@2]",
]
CVFT = ["name=cv", "dataset.layout=cvusa", "dataset.mode=G2A", "backbone.layers=[conv5_3]"]

# case: (overrides, run digest, {aligned alias: key}); computed once with the code these keys promise.
PINNED = {
    "isms": (
        ["method=isms"],
        "94b3cf45708bca073802bff83876704a1732cacc7dd11b2033b4938c793fe67d",
        {
            "pin.isms.query_drone": "288bbbf293b82cf3ab5336b655276da9b94e3347ff99acd4d43460ea6589a608",
            "pin.isms.gallery_satellite": "8a12c9ecd32e93d0be954b47644e035ee9a8d4159e9348d6fb18c9699299cbb0",
        },
    ),
    "geoalign": (
        ["method=geoalign", "align.params={epochs: 1}"],
        "fa6e51558f573fef23230cd95821ea19a3da72abf147fb258e08f542b7ca488b",
        {
            "pin.geoalign.query_drone": "f92183a898330d46376a2f9ed49a6f03bb058057c11214e75f4abd6eed64dfa6",
            "pin.geoalign.gallery_satellite": "7c606ce6a44b30efe691d491e2cfe1fa653536122c13254d385c6a2f238a1b40",
        },
    ),
    "fusion": (
        ["method=fusion", "align.params={epochs: 1}"],
        "202e759882de63306afe4edbdca069d2dc90afba1846b74a198580e556f9b5bf",
        {
            "pin.fusion.query_drone": "ba9542c430301120c402e0c2c6e03de6ffb077917b898b09a92d971a18d202c2",
            "pin.fusion.gallery_satellite": "bfcfa0a652cc6d889169f6d96d2e9ae66b7cf2707de3987f0921aff45a7949e1",
        },
    ),
    "emcvgl": (
        ["method=emcvgl", "align.params={epochs: 1}"],
        "bbae8cfe2373b8d626a476da09151f16117d2a3a2b65dbc369f381c5ca905423",
        {
            "pin.emcvgl.query_drone": "e7bcef269ae1f0cff3fdd2ed8333b6e7f529ec25e2b90c394e9f68d8c2544fcb",
            "pin.emcvgl.gallery_satellite": "87d32c7545b966a4964c854bb36b80e5ad79e638ddb786fceca73bc636c0890b",
        },
    ),
    "supervised": (
        ["method=supervised", "align.params={epochs: 1}"],
        "1e4bcd8376f1c8ce1c1b3d701979cb76b6bcaf85a25e765c0cd2d4e0da62904f",
        {
            "pin.supervised.query_drone": "9b1e0811b429c84e7e64639dae86162dcfef5e9c8f8eff8388696bd0922f07b0",
            "pin.supervised.gallery_satellite": "f3a82f23c872db9d2ecfe0f04747c2bcb9761956652c6b4a8adf51057a66673c",
        },
    ),
    "geoalign_s2d": (
        ["method=geoalign", "mode=S2D", "align.params={epochs: 1}"],
        "f4d3dc5f6e973ff31380feb331aefe725386d87d122698221300d559c6a783a5",
        {
            "pin.geoalign.query_satellite": "161713e99682aeae126628b1ea6612a46a250dc0bd97d24fbbccf41070373aa4",
            "pin.geoalign.gallery_drone": "01642d994b65e2e8f3f8e4f579f8219d0a6180c8e565bdc3173922083f2546b3",
        },
    ),
    "geoalign_train_split": (
        ["method=geoalign", "align.params={epochs: 1}", *TRAIN],
        "23b4fbd3c6c2edaabb0dfcf4a8cb59e263cf03c3f5afa063fd3730fbdb63be1f",
        {
            "pin.geoalign.query_drone": "ff5ad0f8c4026e25025a2d8538dad1f59d766cb5c918b6b321ec9dcb8eea288a",
            "pin.geoalign.gallery_satellite": "89a082ea6e736240d3a4ec247c924392295d59e6fc3048dc3506414d9369c316",
        },
    ),
    "isms_explicit_entries": (
        [
            "method=isms",
            "align.query=[pin.query_drone@1,pin.query_drone@2]",
            "align.gallery=[pin.gallery_satellite@1,pin.gallery_satellite@2]",
            "align.alias=pin.explicit",
        ],
        "94b3cf45708bca073802bff83876704a1732cacc7dd11b2033b4938c793fe67d",
        {
            "pin.explicit.query_drone": "288bbbf293b82cf3ab5336b655276da9b94e3347ff99acd4d43460ea6589a608",
            "pin.explicit.gallery_satellite": "8a12c9ecd32e93d0be954b47644e035ee9a8d4159e9348d6fb18c9699299cbb0",
        },
    ),
    "cvft": (
        ["method=cvft", *CVFT, "align.params={epochs: 1, batch_size: 4}"],
        "05e4e0a50bfe4b9e48affdc16e7b69479181e44e361aa5a6b03c32ec89369467",
        {
            "cv.cvft.ground": "6ac614a5dd4e43b26bb740fd9633d87d00cac13afd860a1b80d97c4bbf26e851",
            "cv.cvft.aerial": "b6e80500ed94710dea4c774c7734f3a219dadca6b2fb42d8a662cac0a10101b8",
        },
    ),
    "vgg_gp": (
        ["method=vgg_gp", *CVFT],
        "d17edb8cabc454baaebd4164c3bd9a259a7454ebe18713ee870baa54412f799f",
        {
            "cv.vgg_gp.ground": "9d20326af0e5c91a5328fd67e351ad3e91365f7a04bafd98b03ebbd845d7f066",
            "cv.vgg_gp.aerial": "7d8c69c1ce58d3dcb04fdddacb4d54afe9e85251031f386972e8230211c9c73c",
        },
    ),
}


@pytest.mark.parametrize("case", sorted(PINNED))
def test_aligned_keys_and_run_digest_match_the_pinned_values(cache, tmp_path, case):
    overrides, digest, keys = PINNED[case]
    p = cli("align", *COMMON, *overrides, f"out={tmp_path / 'run'}", cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    got_keys = {a: k for a, k in info["cache_keys"].items() if not a.startswith("parent:")}
    got = (info["alignment"]["run_digest"], got_keys)
    assert got == (digest, keys)
