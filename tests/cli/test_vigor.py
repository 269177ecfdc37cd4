"""VIGOR: the on-disk layout, the cached semi-positives, and Sample4Geo's protocol (R@K, R@1%, hit rate)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from cvgl.datasets.layouts import VIGOR_CITIES, list_images
from cvgl.retrieve.metrics import evaluate, evaluate_streaming, iter_array_chunks
from PIL import Image

from tests.helpers import cli, one_error_line

pytestmark = pytest.mark.usefixtures("one_thread")

# A tiny random DINOv3 on 32-pixel images: extraction of the whole fake VIGOR takes seconds.
TINY = [
    "dataset.layout=vigor",
    "mode=G2S",
    "align.method=identity",
    "preprocess.resize=32",
    "backbone.arch={depth: 2, hidden_size: 32, num_heads: 2}",
    "backbone.layers=[1]",
    "extract.shard_rows=4",
    "extract.batch_size=4",
    "retrieve.report=false",
]
N_SAT = 6  # satellites per city
N_GROUND = 3  # ground images per city and split file


def _img(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(arr, "RGB").save(path)


def _sat(city_i: int, k: int) -> str:
    return f"satellite_{40 + city_i:.6f}_{-80 - k * 0.001:.6f}.png"


def _make_vigor(root: Path) -> dict[str, list[list[str]]]:
    """Four cities, ``N_SAT`` tiles each, three label files per city; returns each file's rows."""
    rows: dict[str, list[list[str]]] = {}
    for ci, city in enumerate(VIGOR_CITIES):
        sats = [_sat(ci, k) for k in range(N_SAT)]
        for k, s in enumerate(sats):
            _img(root / "satellite" / city / s, 100 * ci + k)
        split_dir = root / "splits" / city
        split_dir.mkdir(parents=True)
        (split_dir / "satellite_list.txt").write_text("".join(f"{s}\n" for s in sats))
        for fi, fname in enumerate(("same_area_balanced_train.txt", "same_area_balanced_test.txt", "pano_label_balanced.txt")):
            lines = []
            for g in range(N_GROUND):
                gname = f"p{fi}{g}x,{40 + ci + g * 1e-4:.6f},{-80 - g * 1e-3:.6f},.jpg"
                _img(root / "ground" / city / gname, 1000 * ci + 10 * fi + g)
                # positive then three semi-positives, each with two pixel offsets
                pick = [(fi + g + j) % N_SAT for j in range(4)]
                cols = [gname]
                for j in pick:
                    cols += [sats[j], f"{j}.5", f"-{j}.25"]
                lines.append(cols)
            (split_dir / fname).write_text("".join(" ".join(c) + "\n" for c in lines))
            rows[f"{city}/{fname}"] = lines
    return rows


@pytest.fixture()
def vigor(tmp_path: Path) -> tuple[Path, dict[str, list[list[str]]]]:
    root = tmp_path / "VIGOR"
    return root, _make_vigor(root)


# --------------------------------------------------------------------------------------------------
# Layout


def test_same_area_test_lists_every_satellite_and_labels_ground_by_positive(vigor):
    root, rows = vigor
    gal = list_images("vigor", root, "satellite", split="test", area="same")
    assert len(gal) == 4 * N_SAT
    assert list(gal.labels) == list(range(4 * N_SAT))  # index in the cities' satellite lists
    assert gal.names[N_SAT] == f"satellite/NewYork/{_sat(1, 0)}"
    q = list_images("vigor", root, "ground", split="test", area="same")
    assert len(q) == 4 * N_GROUND and q.semi_positives is not None and q.semi_positives.shape == (4 * N_GROUND, 3)
    label_of = {n.rsplit("/", 1)[1]: int(lab) for n, lab in zip(gal.names, gal.labels)}
    for i, name in enumerate(q.names):
        city, g = name.split("/")[1:]
        row = next(r for r in rows[f"{city}/same_area_balanced_test.txt"] if r[0] == g)
        assert q.labels[i] == label_of[row[1]]
        assert list(q.semi_positives[i]) == [label_of[row[c]] for c in (4, 7, 10)]


def test_cross_area_uses_its_cities_and_train_gallery_is_the_positives(vigor):
    root, rows = vigor
    test_gal = list_images("vigor", root, "satellite", split="test", area="cross")
    assert {n.split("/")[1] for n in test_gal.names} == {"Chicago", "SanFrancisco"}
    train_q = list_images("vigor", root, "ground", split="train", area="cross")
    assert {n.split("/")[1] for n in train_q.names} == {"NewYork", "Seattle"}
    train_gal = list_images("vigor", root, "satellite", split="train", area="cross")
    positives = [f"satellite/{k.split('/')[0]}/{r[1]}" for k in ("NewYork/pano_label_balanced.txt", "Seattle/pano_label_balanced.txt") for r in rows[k]]
    assert list(train_gal.names) == list(dict.fromkeys(positives))
    # Labels number tiles within the split's full satellite lists, so queries point at the right tile.
    name_of = dict(zip(train_gal.labels.tolist(), train_gal.names))
    for name, lab in zip(train_q.names, train_q.labels):
        city, g = name.split("/")[1:]
        row = next(r for r in rows[f"{city}/pano_label_balanced.txt"] if r[0] == g)
        assert name_of[int(lab)] == f"satellite/{city}/{row[1]}"


# --------------------------------------------------------------------------------------------------
# Protocol vigor against the obvious implementation (Sample4Geo's calculate_scores, with junk removed)


def _slow_vigor(q, ql, g, gl, semi, ks):
    """Loop over queries and gallery items: rank = items (not junk, not the positive) scoring strictly
    higher than the best positive; hit = none of those is outside the semi-positives."""
    s = q.astype(np.float32) @ g.astype(np.float32).T
    n_q, n_g = s.shape
    recalls = {k: 0 for k in ks}
    r1pct = hits = 0
    for i in range(n_q):
        pos = [j for j in range(n_g) if gl[j] == ql[i] and ql[i] >= 0]
        if not pos:
            continue
        best = max(s[i, j] for j in pos)
        above = [j for j in range(n_g) if gl[j] != -1 and gl[j] != ql[i] and s[i, j] > best]
        rank = len(above)
        for k in ks:
            recalls[k] += rank < k
        r1pct += rank < n_g // 100
        semi_labels = {int(x) for x in semi[i] if x >= 0}
        hits += all(int(gl[j]) in semi_labels for j in above)
    out = {f"R@{k}": 100.0 * recalls[k] / n_q for k in ks}
    out["R@1%"] = 100.0 * r1pct / n_q
    out["hit_rate"] = 100.0 * hits / n_q
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vigor_protocol_equals_slow_implementation_with_ties_junk_and_distractors(seed):
    rng = np.random.default_rng(seed)
    n_g, n_q, d = 260, 90, 4
    # Few distinct levels: many exact score ties between the positive, semi-positives and the rest.
    g = rng.integers(-2, 3, (n_g, d)).astype(np.float32)
    gl = rng.permutation(n_g).astype(np.int64)
    gl[rng.choice(n_g, 20, replace=False)] = -1  # junk: removed from every ranking
    gl[rng.choice(n_g, 20, replace=False)] = -2  # distractors: ranked as negatives
    real = np.flatnonzero(gl >= 0)
    pos = rng.choice(real, n_q)
    # Queries near their positive, so ranks are small and often tied with other tiles.
    q = g[pos] + rng.integers(-1, 2, (n_q, d)).astype(np.float32)
    ql = gl[pos]
    ql[:3] = -1  # queries whose positive is unknown count as misses
    ql[3] = 10_000  # a positive absent from the gallery
    semi = gl[rng.choice(real, (n_q, 3))]
    # Half the queries get their best-scoring other tiles as semi-positives: the hit rate forgives them.
    scores = q @ g.T
    for i in range(0, n_q, 2):
        best = [j for j in np.argsort(-scores[i], kind="stable") if gl[j] >= 0 and gl[j] != ql[i]]
        semi[i] = gl[best[:3]]
    semi[5] = -1  # no semi-positives
    semi[6, 0] = ql[6]  # a semi-positive equal to the positive changes nothing
    semi[7] = [semi[7, 0]] * 3  # repeated semi-positives count once
    ks = (1, 5, 10)
    want = _slow_vigor(q, ql, g, gl, semi, ks)
    one, _ = evaluate(q, ql, g, gl, "vigor", ks=ks, semi_positives=semi)
    chunked, res = evaluate_streaming(
        q, ql, iter_array_chunks(g, gl, 37), "vigor", ks=ks, semi_positives=semi, block_size=16
    )
    for got in (one, chunked):
        assert set(want) <= set(got) and "AP" not in got
        for key, value in want.items():
            assert got[key] == pytest.approx(value), key
    assert want["R@1"] < want["hit_rate"] < 100  # the data exercise forgiven and unforgiven queries
    assert np.isnan(res.ap).all()


def test_vigor_hit_rate_forgives_exactly_the_semi_positives():
    # One query; gallery labels 0..4; positive 0 scores 0.5, labels 1 and 2 score higher.
    q = np.array([[1.0, 0.0]], np.float32)
    g = np.array([[0.5, 0], [0.9, 0], [0.8, 0], [0.1, 0], [0.5, 0]], np.float32)
    gl = np.arange(5)
    both = evaluate(q, [0], g, gl, "vigor", topk=3, semi_positives=[[1, 2, 3]])[0]
    assert both["R@1"] == 0 and both["R@5"] == 100 and both["hit_rate"] == 100
    one = evaluate(q, [0], g, gl, "vigor", topk=3, semi_positives=[[1, 3, 4]])[0]
    assert one["hit_rate"] == 0  # label 2 is above the positive and is not a semi-positive
    # Label 4 ties with the positive: not strictly higher, so never counted against it.
    tie = evaluate(q, [0], g[[0, 4, 3]], [0, 4, 3], "vigor", topk=3, semi_positives=[[-1, -1, -1]])[0]
    assert tie["R@1"] == 100 and tie["hit_rate"] == 100


# --------------------------------------------------------------------------------------------------
# Through the command line: the semi-positives travel with the cache entry


def _entry_dir(cache: Path, alias: str) -> Path:
    return cache / "entries" / (cache / "aliases" / alias).read_text().strip()


@pytest.mark.slow
def test_vigor_end_to_end_stores_semi_positives_readable_with_h5py(vigor, tmp_path):
    root, rows = vigor
    cache = tmp_path / "cache"
    p = cli("run", "demo", f"root={root}", *TINY, "protocol=vigor", "retrieve.geo=true", "out=run", cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["protocol"] == "vigor" and m["n_queries"] == 4 * N_GROUND and m["n_gallery"] == 4 * N_SAT
    assert {"R@1", "R@5", "R@10", "R@1%", "hit_rate"} <= set(m) and "AP" not in m
    assert m["R@1"] <= m["hit_rate"] <= 100
    # Positions from VIGOR's names: SDM and metres are there and sane.
    assert {"SDM@1", "SDM@5", "SDM@10", "MA@5m", "MA@100m", "dist_m_mean", "dist_m_median"} <= set(m)
    assert 0 <= m["SDM@1"] <= 100 and m["dist_m_mean"] >= 0

    entry = _entry_dir(cache, "demo.ground@1")
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["extra"]["semi_positives"]["file"] == "semi_positives.h5"
    with h5py.File(entry / "semi_positives.h5", "r") as f:
        names = [n.decode() for n in f["names"][...]]
        semi = f["semi_positives"][...]
    label_of: dict[str, int] = {}
    for shard in sorted(_entry_dir(cache, "demo.satellite@1").glob("shard-*.h5")):
        with h5py.File(shard, "r") as f:
            label_of.update(zip((n.decode() for n in f["names"][...]), f["labels"][...].tolist()))
    assert semi.dtype == np.int64 and semi.shape == (4 * N_GROUND, 3)
    # The stored labels are the satellite entry's labels of the semi-positives named in the split file.
    chicago = rows["Chicago/same_area_balanced_test.txt"][0]
    i = names.index(f"ground/Chicago/{chicago[0]}")
    assert semi[i].tolist() == [label_of[f"satellite/Chicago/{chicago[c]}"] for c in (4, 7, 10)]


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["missing_split", "wrong_columns", "satellite_gone"])
def test_bad_vigor_input_is_one_line_and_leaves_no_entry(vigor, tmp_path, damage):
    root, _ = vigor
    split = root / "splits" / "Seattle"
    if damage == "missing_split":
        (split / "same_area_balanced_test.txt").unlink()
        expect = "same_area_balanced_test.txt does not exist"
    elif damage == "wrong_columns":
        lines = (split / "same_area_balanced_test.txt").read_text().splitlines()
        lines[1] = " ".join(lines[1].split()[:10])
        (split / "same_area_balanced_test.txt").write_text("\n".join(lines) + "\n")
        expect = "line 2 has 10 columns"
    else:
        (root / "satellite" / "Seattle" / _sat(3, 2)).unlink()
        expect = "missing on disk"
    cache = tmp_path / "cache"
    p = cli("extract", "demo", f"root={root}", *TINY, cache=cache, cwd=tmp_path)
    assert expect in one_error_line(p)
    entries = cache / "entries"
    assert not entries.exists() or not list(entries.glob("*/manifest.json"))
