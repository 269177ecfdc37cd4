"""What comes into the cache and what retrieval reads back is what the user gave, or is refused in one line:
cosine scores whatever the descriptors' scale, cached indexes verified by checksum, imports that refuse
what they cannot hold faithfully, and image names that survive export and re-import.

Every test drives the real command line (``pipeline ...`` in a subprocess) on real files.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from cvgl.cache.store import CacheStore
from PIL import Image

from tests.helpers import cli, one_error_line

# A tiny random DINOv3 over 32-pixel images: extraction in seconds, no worker processes.
TINY_EXTRACT = [
    "dataset.layout=folder",
    "preprocess.resize=32",
    "backbone.arch={depth: 2, hidden_size: 32, num_heads: 2}",
    "backbone.layers=[1]",
    "extract.batch_size=2",
    "extract.num_workers=0",
]


def _save(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


def _import(tmp_path: Path, cache: Path, name: str, desc: np.ndarray, labels: np.ndarray, *extra: str):
    d = _save(tmp_path / f"{name}.npy", desc)
    lab = _save(tmp_path / f"{name}_labels.npy", labels)
    args = ("cache", "import", str(d), "--labels", str(lab), "--alias", name, *extra)
    p = cli(*args, cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    return p


def _per_query(run: Path) -> list[dict]:
    with open(run / "per_query.csv", newline="") as f:
        return list(csv.DictReader(f))


def _nothing_cached(cache: Path) -> bool:
    store = CacheStore(cache)
    aliases = cache / "aliases"
    return store.keys() == [] and not (aliases.is_dir() and any(aliases.iterdir()))


# ------------------------------------------------------------------------------------------------------
# Cosine, always


@pytest.mark.slow
def test_unnormalized_imported_descriptors_are_ranked_by_cosine(tmp_path):
    cache = tmp_path / "c"
    _import(tmp_path, cache, "q", np.array([[1, 0], [0, 1]], np.float32), np.array([0, 1]))
    gallery = np.array([[1, 0.05], [10, 5], [0, 1], [5, 10]], np.float32)
    _import(tmp_path, cache, "g", gallery, np.array([0, 9, 1, 8]))
    p = cli("retrieve", "query=q", "gallery=g", "out=run", "retrieve.report=false", cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # By raw inner product [10, 5] and [5, 10] would win; by cosine each query's own item is nearest.
    assert metrics["R@1"] == 100.0 and metrics["AP"] == 100.0


@pytest.mark.parametrize(
    "how",
    [[], ["retrieve.index=hnsw"], ["retrieve.rerank=k_reciprocal", "retrieve.k1=4", "retrieve.k2=2"]],
    ids=["exact", "hnsw-index", "k-reciprocal-rerank"],
)
@pytest.mark.slow
def test_rescaling_descriptors_changes_no_rank_and_no_top_k_list(tmp_path, how):
    """Cosine scores ignore each row's length: unit rows and the same rows scaled by 0.1-10 rank alike,
    in the exact pass, through a FAISS index and under re-ranking."""
    rng = np.random.default_rng(3)
    g = rng.standard_normal((30, 8)).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    gl = np.arange(30) % 10
    q = (g[:10] + 0.6 * rng.standard_normal((10, 8))).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ql = np.arange(10)
    names_g = tmp_path / "gallery_names.txt"
    names_g.write_text("".join(f"g{i}\n" for i in range(30)))
    names_q = tmp_path / "query_names.txt"
    names_q.write_text("".join(f"q{i}\n" for i in range(10)))
    cache = tmp_path / "c"
    _import(tmp_path, cache, "qu", q, ql, "--names", str(names_q))
    _import(tmp_path, cache, "gu", g, gl, "--names", str(names_g))
    scale_q = rng.uniform(0.1, 10, (10, 1)).astype(np.float32)
    scale_g = rng.uniform(0.1, 10, (30, 1)).astype(np.float32)
    _import(tmp_path, cache, "qs", q * scale_q, ql, "--names", str(names_q))
    _import(tmp_path, cache, "gs", g * scale_g, gl, "--names", str(names_g))
    runs = {}
    for side in ("u", "s"):
        out = f"run_{side}"
        p = cli(
            "retrieve",
            f"query=q{side}",
            f"gallery=g{side}",
            f"out={out}",
            "retrieve.topk=5",
            "retrieve.report=false",
            *how,
            cache=cache,
            cwd=tmp_path,
        )
        assert p.returncode == 0, p.stderr
        runs[side] = (json.loads((tmp_path / out / "metrics.json").read_text()), _per_query(tmp_path / out))
    (mu, rows_u), (ms, rows_s) = runs["u"], runs["s"]
    for k in ("R@1", "R@5", "R@10", "AP"):
        assert ms[k] == pytest.approx(mu[k])
    assert [(r["query"], r["first_match_rank"], r["topk"]) for r in rows_s] == [
        (r["query"], r["first_match_rank"], r["topk"]) for r in rows_u
    ]


@pytest.mark.slow
def test_an_all_zero_descriptor_is_refused_in_one_line(tmp_path):
    cache = tmp_path / "c"
    _import(tmp_path, cache, "q", np.array([[1, 0], [0, 1]], np.float32), np.array([0, 1]))
    _import(tmp_path, cache, "g", np.array([[1, 0], [0, 0], [0, 1]], np.float32), np.array([0, 5, 1]))
    p = cli("retrieve", "query=q", "gallery=g", "out=run", cache=cache, cwd=tmp_path)
    line = one_error_line(p)
    assert "all-zero" in line and "row 1" in line and "gallery g" in line
    assert not (tmp_path / "run" / "metrics.json").exists()


# ------------------------------------------------------------------------------------------------------
# Cached indexes carry a checksum


def _corrupt_index_bytes(d: Path) -> None:
    path = d / "index.faiss"
    data = bytearray(path.read_bytes())
    # Flip bytes in the stored vectors at the end of the file: faiss still parses it, the lists go wrong.
    for i in range(len(data) - 200, len(data) - 8, 4):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


def _garbage_index_json(d: Path) -> None:
    (d / "index.json").write_text('{"gallery_fingerprint": "trunc')


@pytest.mark.parametrize(
    "damage", [_corrupt_index_bytes, _garbage_index_json], ids=["index.faiss", "index.json"]
)
@pytest.mark.slow
def test_a_damaged_cached_index_is_rebuilt_and_says_so(tmp_path, damage):
    rng = np.random.default_rng(0)
    g = rng.standard_normal((60, 8)).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    cache = tmp_path / "c"
    q = g[:12] + 0.01
    q /= np.linalg.norm(q, axis=1, keepdims=True)  # unit rows: no cosine warning beside the note
    _import(tmp_path, cache, "q", q, np.arange(12))
    _import(tmp_path, cache, "g", g, np.arange(60))
    args = ("retrieve", "query=q", "gallery=g", "retrieve.index=hnsw", "retrieve.report=false")
    p = cli(*args, "out=first", cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    (d,) = list((cache / "indexes").iterdir())
    meta = json.loads((d / "index.json").read_text())
    assert meta["index_sha256"] == hashlib.sha256((d / "index.faiss").read_bytes()).hexdigest()

    damage(d)
    p = cli(*args, "out=second", cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    notes = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(notes) == 1 and "rebuilding" in notes[0] and str(d) in notes[0], p.stderr
    ann = json.loads((tmp_path / "second" / "metrics.json").read_text())["ann"]
    assert ann["index_cache"].startswith("rebuilt") and ann["recall@10_vs_exact"] == 1.0
    meta = json.loads((d / "index.json").read_text())
    assert meta["index_sha256"] == hashlib.sha256((d / "index.faiss").read_bytes()).hexdigest()
    # Once rebuilt, it is reused quietly.
    p = cli(*args, "out=third", cache=cache, cwd=tmp_path)
    assert p.returncode == 0 and not p.stderr.strip(), p.stderr
    assert json.loads((tmp_path / "third" / "metrics.json").read_text())["ann"]["index_cache"] == "reused"


# ------------------------------------------------------------------------------------------------------
# Import refuses what it cannot hold faithfully


def _npy_case(tmp_path: Path, desc: np.ndarray, labels: np.ndarray | None = None, names: bytes | None = None):
    args = [str(_save(tmp_path / "x.npy", desc))]
    if labels is not None:
        args += ["--labels", str(_save(tmp_path / "labels.npy", labels))]
    if names is not None:
        (tmp_path / "names.txt").write_bytes(names)
        args += ["--names", str(tmp_path / "names.txt")]
    return args


def _h5_case(tmp_path: Path, **datasets) -> list[str]:
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f.create_dataset(k, data=v)
    return [str(path)]


def _object_npy(tmp_path: Path) -> list[str]:
    np.save(tmp_path / "x.npy", np.array([[1.0, None]] * 3, dtype=object), allow_pickle=True)
    return [str(tmp_path / "x.npy")]


GOOD = np.eye(3, 4, dtype=np.float32)
IMPORT_REFUSALS = {
    "complex": (lambda t: _npy_case(t, GOOD.astype(np.complex64) + 1j), "complex"),
    "unicode strings": (lambda t: _npy_case(t, np.array([["a", "b"]] * 3)), "text strings"),
    "byte strings": (lambda t: _npy_case(t, np.array([[b"a", b"b"]] * 3)), "byte strings"),
    "objects": (_object_npy, "dtype object"),
    "2-D labels": (lambda t: _npy_case(t, GOOD, np.arange(3).reshape(3, 1)), "1-D"),
    ".h5 float labels": (
        lambda t: _h5_case(t, descriptors=GOOD, labels=np.array([0.5, 1.0, 2.0])),
        "integers",
    ),
    "non-UTF-8 names.txt": (lambda t: _npy_case(t, GOOD, None, b"a\nb\xe9\nc\n"), "not UTF-8"),
    "non-UTF-8 .h5 names": (
        lambda t: _h5_case(t, descriptors=GOOD, labels=np.arange(3), names=np.array([b"a", b"b\xff", b"c"])),
        "not UTF-8",
    ),
    ".h5 string descriptors": (
        lambda t: _h5_case(t, descriptors=np.array([[b"a"], [b"b"], [b"c"]])),
        "byte strings",
    ),
    ".h5 2-D labels": (lambda t: _h5_case(t, descriptors=GOOD, labels=np.zeros((3, 2), np.int64)), "1-D"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(IMPORT_REFUSALS))
def test_import_refuses_what_it_cannot_hold_in_one_line_and_caches_nothing(tmp_path, case):
    make, expected = IMPORT_REFUSALS[case]
    cache = tmp_path / "c"
    p = cli("cache", "import", *make(tmp_path), "--alias", "x", cache=cache, cwd=tmp_path)
    assert expected in one_error_line(p)
    assert _nothing_cached(cache)


# ------------------------------------------------------------------------------------------------------
# Image names round-trip, or are refused at extraction


def _image(path: Path | bytes, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path, format="PNG")


def _extract(tmp_path: Path, root: Path, cache: Path, *extra: str):
    args = ("extract", "demo", f"root={root}", *TINY_EXTRACT, *extra, "out=extract")
    return cli(*args, cache=cache, cwd=tmp_path)


def _export_import(tmp_path: Path, cache: Path, alias: str) -> tuple[list[str], list[str]]:
    exp = tmp_path / "exported"
    p = cli("cache", "export", alias, "--format", "npy", "--out", str(exp), cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    p = cli(
        "cache",
        "import",
        str(exp / "descriptors.npy"),
        "--labels",
        str(exp / "labels.npy"),
        "--names",
        str(exp / "names.txt"),
        "--alias",
        "back",
        cache=cache,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    store = CacheStore(cache)
    return store.open(alias).names(), store.open("back").names()


# Legal file names that line-splitting helpers (str.splitlines) would cut: form feed, NEL, U+2028.
ODD_NAMES = [
    "0/café ü.png",
    "0/tab\there.png",
    "0/line\u2028sep.png",
    "1/form\x0cfeed nel\x85.png",
    "1/plain.png",
]


@pytest.mark.slow
def test_every_name_extraction_accepts_round_trips_through_export_and_import(tmp_path):
    root = tmp_path / "ds"
    for i, name in enumerate(ODD_NAMES):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        _image(root / name, i)
    cache = tmp_path / "c"
    p = _extract(tmp_path, root, cache)
    assert p.returncode == 0, p.stderr
    original, back = _export_import(tmp_path, cache, "demo@1")
    assert sorted(original) == sorted(ODD_NAMES)
    assert back == original


def _bad_newline(folder: Path) -> str:
    _image(folder / "new\nline.png", 7)
    return "new\\nline.png"


def _bad_bytes(folder: Path) -> str:
    _image(os.fsencode(folder) + b"/latin\xe9.png", 8)
    return "latin\\xe9.png"


def _bad_loop(folder: Path) -> str:
    os.symlink("loop", folder / "b.jpg")
    os.symlink("b.jpg", folder / "loop")
    return "b.jpg"


BAD_NAMES = {"newline": _bad_newline, "non-UTF-8 bytes": _bad_bytes, "symlink loop": _bad_loop}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(BAD_NAMES))
def test_an_image_whose_name_cannot_come_back_is_refused_in_one_line_naming_it(tmp_path, kind):
    root = tmp_path / "ds"
    (root / "0").mkdir(parents=True)
    _image(root / "0" / "a.png", 1)
    shown = BAD_NAMES[kind](root / "0")
    cache = tmp_path / "c"
    p = _extract(tmp_path, root, cache)
    assert shown in one_error_line(p)
    store = CacheStore(cache)
    assert not any(store.has(k) for k in store.keys())  # nothing that reads as complete


@pytest.mark.slow
def test_skip_bad_lists_unstorable_names_and_the_rest_round_trips(tmp_path):
    root = tmp_path / "ds"
    (root / "0").mkdir(parents=True)
    _image(root / "0" / "a.png", 1)
    _image(root / "0" / "z z.png", 2)
    for make in BAD_NAMES.values():
        make(root / "0")
    cache = tmp_path / "c"
    p = _extract(tmp_path, root, cache, "--skip-bad")
    assert p.returncode == 0, p.stderr
    entry = CacheStore(cache).open("demo@1")
    skipped = entry.manifest.extra["skipped"]
    expected = [b"0/b.jpg", b"0/latin\xe9.png", b"0/new\nline.png"]
    assert sorted(os.fsencode(s) for s in skipped) == sorted(expected)
    original, back = _export_import(tmp_path, cache, "demo@1")
    assert original == back and sorted(original) == ["0/a.png", "0/z z.png"]
