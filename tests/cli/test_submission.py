"""University-1652 extras through the real command line: University-160k answer.txt, multi-query."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import cli, one_error_line


def _import(tmp_path: Path, cache: Path, alias: str, desc: np.ndarray, labels: list[int], names: list[str]) -> None:
    np.save(tmp_path / f"{alias}.npy", desc.astype(np.float32))
    np.save(tmp_path / f"{alias}_labels.npy", np.array(labels, np.int64))
    (tmp_path / f"{alias}_names.txt").write_text("\n".join(names) + "\n")
    p = cli(
        "cache", "import", f"{alias}.npy", "--labels", f"{alias}_labels.npy", "--names", f"{alias}_names.txt",
        "--alias", alias, cache=cache, cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _160k(tmp_path: Path, cache: Path) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Challenge-like entries: unlabelled drone queries (-1), a flat satellite gallery of distractors (-2)."""
    rng = np.random.default_rng(0)
    q = _normalize(rng.standard_normal((6, 16)))
    g = _normalize(rng.standard_normal((15, 16)))
    q_names = [f"query_drone_160k/{h}.jpeg" for h in ("d41d8c", "0cc175", "92eb5f", "4a8a08", "8277e0", "e1671")]
    g_names = [f"gallery_satellite_160k/{i:06d}.jpg" for i in range(15)]
    _import(tmp_path, cache, "q160k", q, [-1] * 6, q_names)
    _import(tmp_path, cache, "g160k", g, [-2] * 15, g_names)
    return q.astype(np.float32), g.astype(np.float32), q_names, g_names


@pytest.mark.slow
def test_answer_txt_lists_top10_satellite_ids_in_the_challenge_query_order(tmp_path):
    cache = tmp_path / "cache"
    q, g, q_names, _ = _160k(tmp_path, cache)
    order = [3, 0, 5, 1, 4, 2]
    (tmp_path / "query_drone_name.txt").write_text("".join(Path(q_names[i]).name + "\n" for i in order))
    p = cli(
        "retrieve", "demo", "query=q160k", "gallery=g160k", "retrieve.answer=answer.txt",
        f"retrieve.answer_order={tmp_path / 'query_drone_name.txt'}", "retrieve.report=false", "out=r",
        cache=cache, cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    lines = (tmp_path / "r" / "answer.txt").read_text().split("\n")
    assert lines[-1] == "" and len(lines) == len(order) + 1  # one line per listed query, newline-terminated
    scores = q @ g.T
    for line, qi in zip(lines, order):
        expected = [f"{j:06d}" for j in np.argsort(-scores[qi], kind="stable")[:10]]
        assert line.split("\t") == expected
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["answer"].endswith("answer.txt")


@pytest.mark.slow
def test_answer_order_naming_an_unknown_query_is_one_line_and_writes_no_answer(tmp_path):
    cache = tmp_path / "cache"
    _, _, q_names, _ = _160k(tmp_path, cache)
    (tmp_path / "order.txt").write_text(Path(q_names[0]).name + "\nnot-a-query.jpeg\n")
    p = cli(
        "retrieve", "demo", "query=q160k", "gallery=g160k", "retrieve.answer=answer.txt",
        f"retrieve.answer_order={tmp_path / 'order.txt'}", "out=r", cache=cache, cwd=tmp_path,
    )
    assert "not-a-query.jpeg" in one_error_line(p)
    assert not (tmp_path / "r" / "answer.txt").exists() and not (tmp_path / "r" / "metrics.json").exists()


@pytest.mark.slow
def test_multi_query_ranks_each_location_by_the_normalized_mean_of_its_normalized_views(tmp_path):
    rng = np.random.default_rng(3)
    cache = tmp_path / "cache"
    n_loc, views = 4, 3
    labels = [loc for loc in range(1, n_loc + 1) for _ in range(views)]
    # Views of very different norms: averaging raw descriptors would let one view dominate.
    scale = np.tile([1.0, 30.0, 0.05], n_loc)[:, None]
    q = rng.standard_normal((n_loc * views, 16)) * scale
    q_names = [f"query_drone/{loc:04d}/image-{v:02d}.jpeg" for loc in range(1, n_loc + 1) for v in range(views)]
    g = _normalize(rng.standard_normal((8, 16)))
    g_labels = [1, 2, 3, 4, -2, -2, -2, -2]
    g_names = [f"gallery_satellite/{i:04d}/{i}.jpg" for i in range(8)]
    _import(tmp_path, cache, "mq", q, labels, q_names)
    _import(tmp_path, cache, "sat", g, g_labels, g_names)
    p = cli(
        "retrieve", "demo", "query=mq", "gallery=sat", "retrieve.multi_query=true", "retrieve.report=false",
        "out=r", cache=cache, cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["n_queries"] == n_loc and metrics["multi_query"] == {"views": n_loc * views, "queries": n_loc}

    qn = _normalize(q.astype(np.float32))
    mean = _normalize(np.stack([qn[i * views : (i + 1) * views].sum(0) for i in range(n_loc)]))
    scores = mean @ g.T
    with open(tmp_path / "r" / "per_query.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["query"] for r in rows] == [f"query_drone/{loc:04d}" for loc in range(1, n_loc + 1)]
    for i, row in enumerate(rows):
        expected = [g_names[j] for j in np.argsort(-scores[i], kind="stable")[: len(row["topk"].split())]]
        assert row["topk"].split() == expected
        assert int(row["first_match_rank"]) == int((scores[i] > scores[i, i]).sum())
