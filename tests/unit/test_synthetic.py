"""The synthetic University-1652-style dataset: determinism, layout, and that views match their tiles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cvgl.core.errors import UserError
from cvgl.datasets.layouts import list_images, view_pair
from cvgl.datasets.synthetic import MARKER, make_synthetic_u1652, synthetic_summary
from cvgl.extract.images import ImageDataset
from PIL import Image

# Small but not trivial: 12 places, 4 distractors, 3 views each, 64 px; about a second to build.
SMALL = dict(n_locations=12, n_distractors=4, views_per_location=3, size=64, train_locations=2)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synthetic") / "u1652"
    return root, make_synthetic_u1652(root, **SMALL)


def test_summary_and_counts(small: tuple[Path, dict]):
    root, summary = small
    assert summary["root"] == str(root)
    q, d, t = summary["query_ids"], summary["distractor_ids"], summary["train_ids"]
    assert (len(q), len(d), len(t)) == (12, 4, 2)
    assert all(len(i) == 4 and i.isdigit() for i in q + d + t)
    assert len(set(q) | set(d) | set(t)) == 18  # train, query and distractor places are disjoint
    assert summary["counts"] == {
        "test/gallery_drone": 16 * 3,
        "test/gallery_satellite": 16,
        "test/query_drone": 12 * 3,
        "test/query_satellite": 12,
        "train/drone": 2 * 3,
        "train/satellite": 2,
    }
    assert synthetic_summary(root) == summary
    assert json.loads((root / MARKER).read_text())["complete"] is True
    qid = q[0]
    assert (root / "test" / "gallery_satellite" / qid / f"{qid}.jpg").is_file()
    assert (root / "test" / "query_drone" / qid / "image-01.jpeg").is_file()


def test_layout_readable_both_directions(small: tuple[Path, dict]):
    root, summary = small
    q_ids = {int(i) for i in summary["query_ids"]}
    d_ids = {int(i) for i in summary["distractor_ids"]}
    for mode in ("D2S", "S2D"):
        qv, gv = view_pair(mode)
        ql = list_images("u1652", root, qv)
        gl = list_images("u1652", root, gv)
        # Distractors live only on the gallery side; every query has its place in the gallery.
        assert set(ql.labels.tolist()) == q_ids
        assert set(gl.labels.tolist()) == q_ids | d_ids
        assert not d_ids & set(ql.labels.tolist())
    assert len(list_images("u1652", root, "query_drone")) == 36
    train = list_images("u1652", root, "drone", split="train")
    assert set(train.labels.tolist()) == {int(i) for i in summary["train_ids"]}
    # Query and gallery copies of the same place are the same files.
    qid = summary["query_ids"][3]
    a = root / "test" / "query_drone" / qid / "image-02.jpeg"
    b = root / "test" / "gallery_drone" / qid / "image-02.jpeg"
    assert a.read_bytes() == b.read_bytes()


def test_images_decode_at_size(small: tuple[Path, dict]):
    root, _ = small
    ds = ImageDataset(list_images("u1652", root, "gallery_satellite"))
    i, x = ds[0]
    assert i == 0 and tuple(x.shape) == (3, 64, 64)
    with Image.open(ds.images.path(0)) as im:
        assert im.format == "JPEG" and im.mode == "RGB"


def test_deterministic_by_seed(tmp_path: Path, small: tuple[Path, dict]):
    root, _ = small
    again = tmp_path / "again"
    make_synthetic_u1652(again, **SMALL)
    assert _files(again) == _files(root)  # byte-identical, marker included
    other = tmp_path / "other"
    s2 = make_synthetic_u1652(other, **{**SMALL, "seed": 1})
    files = _files(other)
    assert s2["query_ids"] != synthetic_summary(root)["query_ids"]
    tiles = [v for k, v in files.items() if k.startswith("test/gallery_satellite/")]
    assert len(set(tiles)) == len(tiles)  # every place is different


def _hist(path: Path, bins: int = 4) -> np.ndarray:
    """Square-rooted joint RGB histogram (Hellinger embedding): blind to rotation and perspective."""
    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB")).astype(np.int64) * bins // 256
    code = (a[..., 0] * bins + a[..., 1]) * bins + a[..., 2]
    h = np.bincount(code.ravel(), minlength=bins**3).astype(np.float64)
    return np.sqrt(h / h.sum())


def test_drone_views_derive_from_their_tile(small: tuple[Path, dict]):
    root, _ = small
    q = list_images("u1652", root, "query_drone")
    g = list_images("u1652", root, "gallery_satellite")
    sim = (
        np.stack([_hist(q.path(i)) for i in range(len(q))])
        @ np.stack([_hist(g.path(j)) for j in range(len(g))]).T
    )
    own = q.labels[:, None] == g.labels[None, :]
    assert own.sum(axis=1).tolist() == [1] * len(q)
    own_sim = sim[own]
    others = np.where(own, np.nan, sim)
    assert own_sim.mean() > np.nanmean(others) + 0.1
    assert (own_sim > np.nanmedian(others, axis=1)).mean() >= 0.75
    top1 = (g.labels[sim.argmax(axis=1)] == q.labels).mean()
    assert top1 >= 4 / len(g)  # well above chance (1 / 16)
    # ...yet the views are real re-renderings, not copies of the tile or of each other.
    tiles = {int(lab): np.asarray(Image.open(g.path(j)), np.float32) for j, lab in enumerate(g.labels)}
    views = [np.asarray(Image.open(q.path(i)), np.float32) for i in range(3)]
    assert all(np.abs(v - tiles[int(q.labels[0])]).mean() > 5 for v in views)
    assert np.abs(views[0] - views[1]).mean() > 5


def test_rerun_replaces_own_output(tmp_path: Path):
    root = tmp_path / "ds"
    first = make_synthetic_u1652(root, n_locations=4, n_distractors=2, views_per_location=1, size=32)
    second = make_synthetic_u1652(root, n_locations=2, n_distractors=0, views_per_location=1, size=32)
    # No stale places from the bigger first run survive.
    listed = set(list_images("u1652", root, "gallery_satellite").labels.tolist())
    assert listed == {int(i) for i in second["query_ids"]}
    assert len(first["query_ids"]) == 4


def test_refuses_foreign_folder(tmp_path: Path):
    (tmp_path / "real.jpg").write_bytes(b"user data")
    with pytest.raises(UserError, match="not empty") as e:
        make_synthetic_u1652(tmp_path, n_locations=1, size=32)
    assert str(tmp_path) in str(e.value)
    assert (tmp_path / "real.jpg").read_bytes() == b"user data"


def test_bad_arguments(tmp_path: Path):
    with pytest.raises(UserError, match="n_locations"):
        make_synthetic_u1652(tmp_path / "a", n_locations=0)
    with pytest.raises(UserError, match="size"):
        make_synthetic_u1652(tmp_path / "b", size=8)
    with pytest.raises(UserError, match="9999"):
        make_synthetic_u1652(tmp_path / "c", n_locations=9000, n_distractors=1000)
    with pytest.raises(UserError, match="seed"):
        make_synthetic_u1652(tmp_path / "d", seed=1.5)  # type: ignore[arg-type]
    assert synthetic_summary(tmp_path / "a") is None
