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
# COMMON sets ISMS through the old align.isms section: isms and fusion read it (their keys are those of
# the section's time); geoalign, emcvgl and supervised never read ISMS settings, and their keys carry none.
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
        "4e60def5ac0d53f210a79629ee1505d590f422a51740c3c57ff8e516c46cc14d",
        {
            "pin.geoalign.query_drone": "ba318968b07eefb1d1bc5e408bb13305510bcbddf38cc4bd583c027305b14511",
            "pin.geoalign.gallery_satellite": "31b5fc1bbcc6d8e89a98ac1d54db39352e4c7ac8f03f7eb6b445f520f6f94aef",
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
        "fa0bd6d89b8811a6c5e6f55cf856d1bbd5251ae7ab384401da231fa425ab5854",
        {
            "pin.emcvgl.query_drone": "ba98e8ad7eae4862c1629534dbed52f5373b6c9d5a23025983d51dbf93e347e4",
            "pin.emcvgl.gallery_satellite": "e5d6a4a06abb4100dedd31cbd40c3eeb89eeefb97351ec192fba927165cb5f01",
        },
    ),
    "supervised": (
        ["method=supervised", "align.params={epochs: 1}"],
        "a959d2c7ddc818aa7f49b3fa09386f16ddfd1a5921063de274f619808a3e5673",
        {
            "pin.supervised.query_drone": "c06a95bf3f53bb5f20f14a3fd5f094bcb20f1b8c771568c5ec4454337733f6a9",
            "pin.supervised.gallery_satellite": "3397ae3a63348ea352044a7418685838c2c736c510a9aa125797f2660b580a67",
        },
    ),
    "geoalign_s2d": (
        ["method=geoalign", "mode=S2D", "align.params={epochs: 1}"],
        "e78e88f19b7f6a1dc1d6ba5e21a199e37929396dde358d0a22f52e94f9657997",
        {
            "pin.geoalign.query_satellite": "bc62f10c95a3b9de2853ec4f8bd35e165ee766bae37bf4c0669a47a38cb9c636",
            "pin.geoalign.gallery_drone": "e9835e0e80ef3f4632a632ffc128b6bb8131a1ef5601738b48260074d5226bf5",
        },
    ),
    "geoalign_train_split": (
        ["method=geoalign", "align.params={epochs: 1}", *TRAIN],
        "6b9d73d7268c07957ffdc9efd3d980fc65482ef6cedac1ca4c8e66c5ed4e437c",
        {
            "pin.geoalign.query_drone": "6235abe2e46513ff3c510ec5d4687bc0d2cfe2bf1b775b853ffbc57cac042cf5",
            "pin.geoalign.gallery_satellite": "0b9d528696ed6da26d70a49f5bc917cd8587e88c262c9339a898a41182574391",
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


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(PINNED))
def test_aligned_keys_and_run_digest_match_the_pinned_values(cache, tmp_path, case):
    overrides, digest, keys = PINNED[case]
    p = cli("align", *COMMON, *overrides, f"out={tmp_path / 'run'}", cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    got_keys = {a: k for a, k in info["cache_keys"].items() if not a.startswith("parent:")}
    got = (info["alignment"]["run_digest"], got_keys)
    assert got == (digest, keys), f"computed: {json.dumps(got)}"
