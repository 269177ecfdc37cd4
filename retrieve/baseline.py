"""What a retrieval is compared with: ``retrieve.baseline=raw|none|<run folder>``.

* ``raw`` (default): the raw descriptors the alignment started from, ranked exactly like the run
  itself. That is the ``identity`` method on the same entries: the last parent of an aligned query
  entry and of its gallery entry (the alignment's inputs are in layer order, so this is the last
  layer, the one ``align.method=identity`` retrieves with). A run on raw descriptors is its own
  baseline, so it has none; so do entries without a raw parent of matching shape (imported arrays,
  spatial maps).
* ``none``: no baseline (saves the second retrieval pass).
* a run folder (or its ``per_query.csv``): that earlier run's first-match ranks, matched to this
  run's queries by name, and its metrics.json beside them.

A :class:`Baseline` holds the baseline's first-match rank of every query of this run (in this run's
query order) and its summary metrics; ``report.html`` shows both ranks per query and sorts by the
change, ``metrics.json`` keeps the summary under ``baseline``, and ``pipeline run`` prints it beside
the run's own row.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cvgl.cache.store import CacheStore, Entry
from cvgl.core.errors import UserError
from cvgl.retrieve.indexes import l2_normalize_rows

UNKNOWN_RANK = -2  # a query the baseline has no rank for (a run folder without that query name)


@dataclass
class Baseline:
    """The baseline's first-match ranks (0-based; -1 = no true match; -2 = not in the baseline)."""

    label: str  # what the page and the table call it, e.g. "raw descriptors"
    source: str  # "raw" or the run folder it was read from
    first_rank: np.ndarray  # int64 [n_q] in this run's query order
    metrics: dict[str, Any] = field(default_factory=dict)  # R@K, R@1%, AP, query, gallery, …

    def summary(self) -> dict[str, Any]:
        """What metrics.json keeps under ``baseline``."""
        keep = {k: v for k, v in self.metrics.items() if k.startswith("R@") or k in ("AP", "hit_rate")}
        return {
            "source": self.source,
            "label": self.label,
            **{k: self.metrics[k] for k in ("query", "gallery", "n_gallery") if k in self.metrics},
            **keep,
        }


def raw_parent(store: CacheStore, entry: Entry) -> Entry | None:
    """The raw entry an aligned entry was computed from (its last parent), or None."""
    spec = entry.manifest.spec if isinstance(entry.manifest.spec, dict) else {}
    if spec.get("kind") != "aligned" or not entry.manifest.parents:
        return None
    try:
        parent = store.open(entry.manifest.parents[-1])
    except (UserError, OSError, KeyError, ValueError):
        return None
    return parent if len(parent.shape) == 1 else None


def raw_baseline(
    store: CacheStore,
    qe: Entry,
    ge: Entry,
    q_names: list[str],
    evaluate: Callable[[np.ndarray, np.ndarray, Callable], tuple[dict, Any]],
) -> Baseline | None:
    """Rank the raw parents of ``qe`` and ``ge`` with ``evaluate`` (the run's own exact pass)."""
    rq, rg = raw_parent(store, qe), raw_parent(store, ge)
    if rq is None or rg is None or rq.shape != rg.shape:
        return None
    q_desc, q_labels, names = rq.read()
    if list(names) != list(q_names):  # e.g. multi-query merged the views: no row-by-row comparison
        return None
    q_desc = l2_normalize_rows(q_desc, f"query set {rq.label}")

    def chunks():
        offset = 0
        for d, lab, _ in rg.iter_chunks():
            yield l2_normalize_rows(d, f"gallery {rg.label}", offset), lab
            offset += d.shape[0]

    summary, results = evaluate(q_desc, q_labels, chunks)
    metrics = {"query": rq.label, "gallery": rg.label, **summary}
    return Baseline("raw descriptors", "raw", np.asarray(results.first_rank, np.int64), metrics)


def folder_baseline(path: str | Path, q_names: list[str]) -> Baseline:
    """The first-match ranks an earlier run wrote to ``per_query.csv``, in the order of ``q_names``."""
    p = Path(path).expanduser()
    csv_path = p if p.is_file() else p / "per_query.csv"
    if not csv_path.is_file():
        raise UserError(
            f"retrieve.baseline={path}: no per_query.csv there; give a run folder of retrieve or run "
            "(or retrieve.baseline=raw|none)"
        )
    ranks: dict[str, int] = {}
    try:
        with open(csv_path, newline="") as f:
            for row in csv.DictReader(f):
                ranks[row["query"]] = int(row["first_match_rank"])
    except (OSError, KeyError, ValueError, csv.Error) as e:
        raise UserError(
            f"cannot read {csv_path} ({type(e).__name__}: {e}); is it a per_query.csv written by pipeline?"
        ) from None
    if not any(n in ranks for n in q_names):
        raise UserError(
            f"retrieve.baseline={path}: none of this run's queries is in {csv_path}; give a run on the "
            "same query set"
        )
    first = np.array([ranks.get(n, UNKNOWN_RANK) for n in q_names], dtype=np.int64)
    try:
        metrics = json.loads((csv_path.parent / "metrics.json").read_text())
    except (OSError, ValueError):
        metrics = {}
    return Baseline(f"run {csv_path.parent.name}", str(csv_path.parent), first, metrics if isinstance(metrics, dict) else {})


def rank_change(first: np.ndarray, base: np.ndarray, n_gallery: int) -> np.ndarray:
    """Per query: this run's rank of the true match minus the baseline's (negative = better).

    No true match counts as rank ``n_gallery``; a query the baseline lacks changes by 0."""
    a = np.where(np.asarray(first) < 0, n_gallery, first).astype(np.int64)
    b = np.where(np.asarray(base) < 0, n_gallery, base).astype(np.int64)
    return np.where(np.asarray(base) == UNKNOWN_RANK, 0, a - b)
