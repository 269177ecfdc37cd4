"""Images of different sizes at native resolution (``preprocess.resize=none``): each shard is batched
by size, so any batch size works and gives the values of a batch-size-1 run."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from cvgl.cache.store import CacheStore
from PIL import Image

from tests.helpers import cli, one_error_line

# A tiny random DINOv3 (2 blocks, width 32): a few patches per image, milliseconds per batch.
TINY = [
    "dataset.layout=folder",
    "backbone.name=dinov3_vits16",
    "backbone.arch={depth: 2, hidden_size: 32, num_heads: 2}",
    "backbone.layers=[0,1]",
    "backbone.device=cpu",
    "preprocess.resize=none",
    "extract.shard_rows=8",
    "extract.num_workers=0",
    "extract.dtype=float32",
    "alias=m",
]
#: (height, width) of the images, cycled through the list so every shard holds all three, interleaved.
SIZES = [(32, 32), (48, 32), (32, 64)]


def _mixed_folder(root: Path, n: int = 19) -> Path:
    """``n`` random PNGs in the folder layout, sizes cycling through SIZES in file-name order."""
    rng = np.random.default_rng(0)
    for k in range(n):
        h, w = SIZES[k % len(SIZES)]
        p = root / str(k % 4) / f"{k:04d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
    return root


def _extract(tmp_path: Path, root: Path, cache: Path, *extra: str) -> None:
    p = cli("extract", *TINY, f"root={root}", *extra, f"out={cache.name}-run", cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr


def _shards(cache: Path) -> dict[str, list[tuple[np.ndarray, np.ndarray, list[str]]]]:
    """{alias: [(descriptors, labels, names) of each shard file, in shard order]}."""
    store = CacheStore(cache)
    out = {}
    for alias in store.aliases():
        entry = store.root / "entries" / store.resolve(alias)
        rows = []
        for f in sorted(entry.glob("shard-*.h5")):
            with h5py.File(f, "r") as h:
                rows.append((h["descriptors"][()], h["labels"][()], [n.decode() for n in h["names"][()]]))
        out[alias] = rows
    return out


def _assert_equal(a: Path, b: Path) -> None:
    sa, sb = _shards(a), _shards(b)
    assert sorted(sa) == sorted(sb) == ["m@0", "m@1"]
    for alias in sa:
        assert CacheStore(a).resolve(alias) == CacheStore(b).resolve(alias)  # batch size is not in the key
        assert len(sa[alias]) == len(sb[alias]) == 3
        for (da, la, na), (db, lb, nb) in zip(sa[alias], sb[alias]):
            assert np.array_equal(da, db), alias
            assert np.array_equal(la, lb) and na == nb


@pytest.mark.slow
def test_mixed_native_sizes_extract_with_any_batch_size_equal_to_batch_size_one(tmp_path):
    root = _mixed_folder(tmp_path / "ds")
    one = tmp_path / "bs1"
    _extract(tmp_path, root, one, "extract.batch_size=1")
    four = tmp_path / "bs4"
    _extract(tmp_path, root, four, "extract.batch_size=4")
    _assert_equal(one, four)
    # Two torchrun ranks (each plans and writes its own shards) with a batch size of 3.
    three = tmp_path / "bs3"
    _extract(tmp_path, root, three, "extract.batch_size=3", "--launcher", "torchrun", "--nproc", "2")
    _assert_equal(one, three)
    assert CacheStore(three).open("m@0").manifest.extra["ranks"] == 2
    # Rows stay in image-list order (the folder layout's sorted paths), every row filled.
    names = [n for _, _, ns in _shards(one)["m@0"] for n in ns]
    assert names == sorted(names) and len(names) == 19
    d = np.concatenate([x for x, _, _ in _shards(one)["m@1"]])
    assert np.isfinite(d).all() and (np.linalg.norm(d, axis=1) > 0.5).all()


@pytest.mark.slow
def test_mixed_native_sizes_resume_from_complete_shards_gives_identical_shard_files(tmp_path):
    """A run stopped before its manifest leaves complete shards; the rerun computes only the missing
    ones and its shard files are byte for byte those of the uninterrupted run."""
    root = _mixed_folder(tmp_path / "ds")
    cache = tmp_path / "c"
    _extract(tmp_path, root, cache, "extract.batch_size=4")
    store = CacheStore(cache)
    files = sorted(store.root.glob("entries/*/shard-*.h5"))
    assert len(files) == 6
    clean = {f: f.read_bytes() for f in files}
    for alias in store.aliases():
        entry = store.root / "entries" / store.resolve(alias)
        (entry / "manifest.json").unlink()  # what a kill before the manifest leaves behind
        (entry / "shard-00000.h5").unlink()
        (entry / "shard-00002.h5").unlink()
    kept = {f: f.stat().st_mtime_ns for f in store.root.glob("entries/*/shard-00001.h5")}
    _extract(tmp_path, root, cache, "extract.batch_size=4")
    assert {f: f.stat().st_mtime_ns for f in kept} == kept  # the complete shard was not recomputed
    assert sorted(store.root.glob("entries/*/shard-*.h5")) == files
    for f in files:
        assert f.read_bytes() == clean[f], f
    assert store.verify() == {k: [] for k in store.keys()}


@pytest.mark.slow
def test_conv_maps_of_mixed_native_sizes_are_refused_in_one_line(tmp_path):
    """Conv maps (pooling.name=none) take their shape from the input size, so one entry cannot hold
    maps of different sizes: refused before any shard is written, naming the fix, whatever the batch
    size (with batch size 1 no batch ever mixes sizes)."""
    root = _mixed_folder(tmp_path / "ds", n=6)
    cache = tmp_path / "c"
    vgg = ["backbone.name=vgg16", "backbone.arch={}", "backbone.layers=[conv5_3]", "pooling.name=none"]
    p = cli("extract", *TINY, *vgg, f"root={root}", "extract.batch_size=1", cache=cache, cwd=tmp_path)
    line = one_error_line(p)
    assert re.search(r"image \d/\d{4}\.png is \d+x\d+", line) and "preprocess.resize=" in line
    assert not list(cache.glob("entries/*/manifest.json")) and not list(cache.glob("entries/*/shard-*.h5"))
