"""Reports people can look at: the recall@K curve (PNG) and an HTML page of queries and their top-K.

* ``recall_curve.png``: R@K for K = 1 … min(100, rankable gallery items) from the exact first-match ranks,
  one curve per variant (e.g. with and without re-ranking); drawn with Pillow alone.
* ``report.html``: titled with the method and the run; the metrics (and the baseline's, see
  :mod:`cvgl.retrieve.baseline`), the curve, then a sample of queries, each beside its top-K gallery
  items: a green border marks a correct item (the query's label; under cvft, its paired row), a red
  border a wrong one, and a query without a correct item also shows its true match (dashed green).
  Without a baseline the sample is half the worst queries and half drawn at random from the rest,
  listed worst first; with one, the queries whose rank of the true match changed most, both ranks in
  the caption, sorted by the change. File names break only after ``/``, ``_`` and ``-``. Thumbnails are written
  to ``thumbs/`` next to the page with Pillow, and every thumbnail links back to the original image by a
  relative path. Entries without images on disk (imported arrays, a moved dataset) show their names in
  the same bordered boxes instead.
"""

from __future__ import annotations

import hashlib
import html
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
from cvgl.core.atomic import atomic_path, write_text_atomic
from cvgl.core.console import metric_cell
from PIL import Image, ImageDraw, ImageFont

CORRECT_COLOR = "#00b400"
WRONG_COLOR = "#e00000"
QUERY_COLOR = "#2060d0"
_CURVE_COLORS = ["#1f5fbf", "#e07000", "#2a9d2a", "#b02050", "#7040b0", "#606060"]


# --------------------------------------------------------------------------------------------------------
# Recall curve


def recall_curve(first_rank: np.ndarray, n_rankable: int, k_max: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(K = 1 … min(k_max, n_rankable), R@K in percent) from 0-based first-match ranks (-1 = none)."""
    first = np.asarray(first_rank, dtype=np.int64)
    k_hi = max(1, min(int(k_max), int(n_rankable)))
    hits = np.bincount(first[(first >= 0) & (first < k_hi)], minlength=k_hi)
    return np.arange(1, k_hi + 1), 100.0 * np.cumsum(hits) / max(1, first.size)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def write_recall_png(
    path: Path,
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    title: str,
    size: tuple[int, int] = (720, 460),
) -> Path:
    """Draw R@K curves (K on a log axis when it spans more than 10) into a PNG; returns ``path``."""
    w, h = size
    left, right, top, bottom = 64, 24, 40, 52
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font, small = _font(15), _font(12)
    k_hi = max(int(ks[-1]) for ks, _ in curves.values()) if curves else 1
    log = k_hi > 10

    def x_of(k: float) -> float:
        if k_hi == 1:
            return left + (w - left - right) / 2
        t = math.log(k) / math.log(k_hi) if log else (k - 1) / (k_hi - 1)
        return left + t * (w - left - right)

    def y_of(r: float) -> float:
        return top + (1 - r / 100.0) * (h - top - bottom)

    for r in range(0, 101, 20):
        y = y_of(r)
        draw.line([(left, y), (w - right, y)], fill="#e4e4e4")
        draw.text((left - 8, y), f"{r}", fill="black", font=small, anchor="rm")
    ticks = [k for k in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if k <= k_hi] if log else _lin_ticks(k_hi)
    for k in ticks:
        x = x_of(k)
        draw.line([(x, top), (x, h - bottom)], fill="#e4e4e4")
        draw.text((x, h - bottom + 6), str(k), fill="black", font=small, anchor="mt")
    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    draw.text((w / 2, 12), title, fill="black", font=font, anchor="mt")
    draw.text((w / 2, h - 16), "K" + (" (log scale)" if log else ""), fill="black", font=small, anchor="mm")
    draw.text((14, (top + h - bottom) / 2), "R@K %", fill="black", font=small, anchor="lm")
    for n, (ks, rec) in enumerate(curves.values()):
        color = _CURVE_COLORS[n % len(_CURVE_COLORS)]
        pts = [(x_of(float(k)), y_of(float(r))) for k, r in zip(ks, rec)]
        if len(pts) > 1:
            draw.line(pts, fill=color, width=3)
        for k in (1, 5, 10):
            if k <= len(pts):
                x, y = pts[k - 1]
                draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=color)
    # Legend in the lower right corner of the plot, where R@K curves (rising with K) rarely are.
    labels = [f"{label}: R@1 {rec[0]:.1f}" for label, (_, rec) in curves.items()]
    if labels:
        text_w = max(draw.textlength(t, font=small) for t in labels)
        x1, y1 = w - right - 8, h - bottom - 8
        x0, y0 = x1 - text_w - 52, y1 - 20 * len(labels) - 8
        draw.rectangle([x0, y0, x1, y1], fill="white", outline="#999999")
        for n, t in enumerate(labels):
            ly = y0 + 14 + 20 * n
            draw.line([(x0 + 8, ly), (x0 + 38, ly)], fill=_CURVE_COLORS[n % len(_CURVE_COLORS)], width=3)
            draw.text((x0 + 44, ly), t, fill="black", font=small, anchor="lm")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


def _lin_ticks(k_hi: int) -> list[int]:
    step = max(1, math.ceil(k_hi / 8))
    return sorted({1, *range(step, k_hi + 1, step), k_hi})


# --------------------------------------------------------------------------------------------------------
# HTML report


@dataclass
class ReportData:
    """What the HTML page shows; arrays are per query in the query entry's row order."""

    title: str
    metrics: dict
    q_names: list[str]
    q_labels: np.ndarray
    g_names: list[str]
    first_rank: np.ndarray  # int64 [n_q], -1 = no true match
    ap: np.ndarray  # float [n_q] in [0, 1] (NaN under cvft)
    topk: np.ndarray  # int64 [n_q, K] gallery rows, -1 = none
    topk_scores: np.ndarray  # float32 [n_q, K]
    correct: np.ndarray  # bool [n_q, K]
    q_root: Path | None = None  # dataset root the query names are relative to (None: no images)
    g_root: Path | None = None
    topk_source: str = "exact"
    curve_png: str | None = "recall_curve.png"
    score_name: str = "score"  # what topk_scores are ("score": higher is better; "distance": lower)
    subtitle: str = ""  # what was compared (entries, protocol), under the title
    g_labels: np.ndarray | None = None  # gallery labels (to show a failed query's true match); None: cvft rows
    baseline_first: np.ndarray | None = None  # the baseline's first-match ranks (-1 none, -2 unknown)
    baseline_label: str = ""
    baseline_metrics: dict | None = None


def select_queries(first_rank: np.ndarray, ap: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` query indices: the ``n // 2`` worst, then random others; ordered worst first.

    Worst = true match ranked lowest (no true match at all counts as worst), then lowest AP.
    """
    first = np.asarray(first_rank, dtype=np.int64)
    n = min(int(n), first.size)
    if n <= 0:
        return np.zeros(0, np.int64)
    badness = np.where(first < 0, np.iinfo(np.int64).max, first)
    apv = np.nan_to_num(np.asarray(ap, dtype=np.float64), nan=0.0)
    order = np.lexsort((np.arange(first.size), apv, -badness))  # worst first, ties by row
    worst = order[: n // 2]
    rest = order[n // 2 :]
    rng = np.random.default_rng(seed)
    extra = rng.choice(rest, size=n - worst.size, replace=False) if rest.size else rest[:0]
    chosen = np.concatenate([worst, extra])
    rank_of = np.empty(first.size, np.int64)
    rank_of[order] = np.arange(first.size)
    return chosen[np.argsort(rank_of[chosen], kind="stable")]


def select_changes(change: np.ndarray, first_rank: np.ndarray, ap: np.ndarray, n: int) -> np.ndarray:
    """``n`` query indices for a page with a baseline: the largest changes of rank both ways (half the
    most worsened, half the most improved), topped up with the worst queries; sorted by the change,
    most worsened first (ties: worse rank first, then row)."""
    change = np.asarray(change, dtype=np.int64)
    n = min(int(n), change.size)
    if n <= 0:
        return np.zeros(0, np.int64)
    first = np.asarray(first_rank, dtype=np.int64)
    badness = np.where(first < 0, np.iinfo(np.int64).max, first)
    rows = np.arange(change.size)
    worse = [int(i) for i in np.lexsort((rows, -change)) if change[i] > 0][: n // 2]
    better = [int(i) for i in np.lexsort((rows, change)) if change[i] < 0][: n - len(worse)]
    chosen = list(dict.fromkeys(worse + better))
    for i in select_queries(first, ap, change.size):  # top up with the worst, if too few changed
        if len(chosen) >= n:
            break
        if int(i) not in chosen:
            chosen.append(int(i))
    out = np.array(chosen, dtype=np.int64)
    return out[np.lexsort((out, -badness[out], -change[out]))]


def breakable(name: str) -> str:
    """``name`` HTML-escaped, with a line-break opportunity (``<wbr>``) after each ``/``, ``_`` and ``-``:
    a long path wraps between its parts, never inside a part such as ``3834.jpg``."""
    out = []
    for ch in name:
        out.append(html.escape(ch))
        if ch in "/_-":
            out.append("<wbr>")
    return "".join(out)


def _thumb(src: Path, out_dir: Path, size: int) -> str | None:
    """Write (once) a JPEG thumbnail of ``src`` under ``out_dir/thumbs``; its relative path, or None."""
    name = hashlib.sha1(str(src).encode()).hexdigest()[:20] + ".jpg"
    dst = out_dir / "thumbs" / name
    if not dst.exists():
        try:
            with Image.open(src) as im:
                im = im.convert("RGB")
                im.thumbnail((size, size))
                dst.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(dst) as tmp:
                    im.save(tmp, format="JPEG", quality=85)
        except (OSError, ValueError, Image.DecompressionBombError):
            return None
    return f"thumbs/{name}"


def _href(target: Path, out_dir: Path) -> str:
    rel = os.path.relpath(target.resolve(), out_dir.resolve())
    return quote(Path(rel).as_posix())


def _tile(name: str, root: Path | None, out_dir: Path, size: int, cls: str, caption: str) -> str:
    """One bordered box: a linked thumbnail when the image exists, else the name."""
    thumb = _thumb(root / name, out_dir, size) if root is not None else None
    cap = f'<div class="cap" style="width:{size}px">{caption}</div>'
    if thumb is None:
        return f'<div class="tile {cls}"><div class="noimg" style="width:{size}px">{breakable(name)}</div>{cap}</div>'
    link = _href(root / name, out_dir)  # type: ignore[operator]
    return (
        f'<div class="tile {cls}"><a href="{link}" title="{html.escape(name)}">'
        f'<img src="{thumb}" alt="{html.escape(name)}" style="max-width:{size}px;max-height:{size}px"></a>{cap}</div>'
    )


_CSS = f"""
body {{ font-family: sans-serif; margin: 16px; background: #fafafa; color: #222; }}
table.m {{ border-collapse: collapse; margin: 8px 0 16px; }}
table.m td, table.m th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
.row {{ display: flex; flex-wrap: wrap; align-items: flex-start; gap: 6px; margin: 10px 0; padding: 6px;
        background: white; border-bottom: 1px solid #ddd; }}
.tile {{ display: inline-block; padding: 2px; background: white; border: 6px solid #999; }}
.tile img {{ display: block; }}
.tile.query {{ border-color: {QUERY_COLOR}; margin-right: 14px; }}
.tile.ok {{ border-color: {CORRECT_COLOR}; }}
.tile.bad {{ border-color: {WRONG_COLOR}; }}
.tile.truth {{ border-color: {CORRECT_COLOR}; border-style: dashed; margin-left: 14px; }}
/* File names break only where breakable() put a <wbr> (after / _ -), never inside "3834.jpg". */
.cap {{ font-size: 11px; overflow-wrap: normal; word-break: keep-all; }}
.noimg {{ font-size: 11px; min-height: 40px; overflow-wrap: normal; word-break: keep-all; background: #f0f0f0; }}
.better {{ color: {CORRECT_COLOR}; font-weight: bold; }}
.worse {{ color: {WRONG_COLOR}; font-weight: bold; }}
.sub {{ color: #555; }}
"""


def _metrics_table(metrics: dict, baseline: tuple[str, dict] | None = None) -> str:
    keys = [k for k in metrics if k.startswith("R@")] + (["AP"] if "AP" in metrics else [])
    rows = [("this run", metrics)]
    if isinstance(metrics.get("without_rerank"), dict):
        rows = [("re-ranked", metrics), ("without re-ranking", metrics["without_rerank"])]
    if baseline is not None:
        rows.append((f"baseline: {baseline[0]}", baseline[1]))
    n_gallery = metrics.get("n_gallery")  # R@1% is "–" under 100 gallery items, as on the command line
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join(
        f"<tr><th>{html.escape(label)}</th>"
        + "".join(f"<td>{metric_cell(k, m.get(k), n_gallery)}</td>" for k in keys)
        + "</tr>"
        for label, m in rows
    )
    return f'<table class="m"><tr><th></th>{head}</tr>{body}</table>'


def write_html_report(
    out_dir: Path, data: ReportData, *, n_queries: int = 40, thumb_size: int = 112, seed: int = 0
) -> Path:
    """Write ``out_dir/report.html`` (and thumbnails under ``out_dir/thumbs``); returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    m = data.metrics
    base = data.baseline_first
    change = None
    if base is not None:
        from cvgl.retrieve.baseline import rank_change

        change = rank_change(data.first_rank, base, int(m.get("n_gallery") or len(data.g_names)))
        chosen = select_changes(change, data.first_rank, data.ap, n_queries)
    else:
        chosen = select_queries(data.first_rank, data.ap, n_queries, seed)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(data.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(data.title)}</h1>",
    ]
    if data.subtitle:
        parts.append(f'<p class="sub">{breakable(data.subtitle)}</p>')
    parts += [
        f"<p>protocol <b>{html.escape(str(m.get('protocol')))}</b>, {m.get('n_queries')} queries, "
        f"{m.get('n_gallery')} gallery items. Metrics are exact (ranks of every positive over the whole "
        f"gallery); the top-K lists below come from: <b>{html.escape(data.topk_source)}</b>.</p>",
        _metrics_table(m, (data.baseline_label, data.baseline_metrics or {}) if base is not None else None),
    ]
    if isinstance(m.get("ann"), dict):
        a = m["ann"]
        rec = {k: v for k, v in a.items() if k.startswith("recall@") or k.startswith("nn_recall@")}
        parts.append(
            f"<p>index {html.escape(str(a.get('index')))}: "
            + ", ".join(f"{html.escape(k)} = {v:.4f}" for k, v in rec.items())
            + f" over {a.get('sample')} queries.</p>"
        )
    if data.curve_png:
        parts.append(f'<p><img src="{quote(data.curve_png)}" alt="recall@K curve" width="540"></p>')
    legend = (
        "Blue: the query. Green border: a correct gallery item; red: a wrong one; dashed green, after a "
        "list without a correct item: the true match. Click a thumbnail for the original image."
    )
    if change is not None:
        known = base != -2
        n_better, n_worse = int(((change < 0) & known).sum()), int(((change > 0) & known).sum())
        parts.append(
            f"<h2>Rank of the true match: this run against {html.escape(data.baseline_label)}</h2>"
            f"<p>Over all {change.size} queries: <span class='better'>{n_better} better</span>, "
            f"<span class='worse'>{n_worse} worse</span>, {int(known.sum()) - n_better - n_worse} unchanged"
            + (f", {int((~known).sum())} not in the baseline" if (~known).any() else "")
            + f". Below, {chosen.size} queries with the largest changes, sorted by the change (most "
            f"worsened first).</p><p>{legend}</p>"
        )
    else:
        parts.append(f"<h2>{chosen.size} queries, worst first</h2><p>{legend}</p>")
    for i in chosen:
        fr = int(data.first_rank[i])
        apv = float(data.ap[i])
        ap_txt = "" if math.isnan(apv) else f" · AP {100 * apv:.1f}"
        cap = f"{breakable(data.q_names[i])}<br>label {int(data.q_labels[i])} · rank {_rank(fr)}{ap_txt}"
        if change is not None and base is not None:
            b, d = int(base[i]), int(change[i])
            delta = (
                "" if b == -2 or d == 0
                else f" <span class='{'worse' if d > 0 else 'better'}'>{'▼' if d > 0 else '▲'}{abs(d)}</span>"
            )
            cap += f"<br>{html.escape(data.baseline_label)}: rank {'?' if b == -2 else _rank(b)}{delta}"
        row = [_tile(data.q_names[i], data.q_root, out_dir, thumb_size, "query", cap)]
        for j, (g, s) in enumerate(zip(data.topk[i], data.topk_scores[i])):
            if g < 0:
                continue
            cls = "ok" if data.correct[i, j] else "bad"
            gcap = f"#{j + 1} {breakable(data.g_names[g])}<br>{data.score_name} {float(s):.3f}"
            row.append(_tile(data.g_names[g], data.g_root, out_dir, thumb_size, cls, gcap))
        if not data.correct[i].any():  # a failed query: its true match beside the wrong list
            row.append(_truth_tile(data, i, out_dir, thumb_size))
        parts.append(f'<div class="row">{"".join(row)}</div>')
    parts.append("</body></html>\n")
    path = out_dir / "report.html"
    write_text_atomic(path, "\n".join(parts))
    return path


def _rank(first: int) -> str:
    """A 0-based first-match rank as people count (1 = top), or "none"."""
    return "none" if first < 0 else str(first + 1)


def true_matches(data: ReportData, i: int) -> np.ndarray:
    """Gallery rows that are true matches of query ``i`` (its label; without labels, its own row)."""
    if data.g_labels is None:
        return np.array([i], dtype=np.int64) if i < len(data.g_names) else np.zeros(0, np.int64)
    label = int(data.q_labels[i])
    return np.flatnonzero((np.asarray(data.g_labels) == label) & (np.asarray(data.g_labels) >= 0))


def _truth_tile(data: ReportData, i: int, out_dir: Path, size: int) -> str:
    """The true match of a query whose top-K holds none, captioned with its rank."""
    rows = true_matches(data, i)
    fr = int(data.first_rank[i])
    if rows.size == 0:
        return f'<div class="tile truth"><div class="noimg" style="width:{size}px">no true match in the gallery</div></div>'
    g = int(rows[0])
    more = f" (1 of {rows.size})" if rows.size > 1 else ""
    cap = f"true match{more}: {breakable(data.g_names[g])}<br>first true match at rank {_rank(fr)}"
    return _tile(data.g_names[g], data.g_root, out_dir, size, "truth", cap)


def correct_matrix(
    topk: np.ndarray, q_labels: np.ndarray | None, g_labels: np.ndarray | None, protocol: str
) -> np.ndarray:
    """bool [n_q, K]: is each top-K item a true match (same label, not junk or distractor; cvft: row == row)."""
    topk = np.asarray(topk, dtype=np.int64)
    valid = topk >= 0
    if protocol == "cvft" or q_labels is None or g_labels is None:
        return valid & (topk == np.arange(topk.shape[0])[:, None])
    gl = np.asarray(g_labels)[np.where(valid, topk, 0)]
    return valid & (gl == np.asarray(q_labels)[:, None]) & (gl >= 0)  # -1 junk, -2 distractor


def curves_for(
    variants: Sequence[tuple[str, np.ndarray]], n_rankable: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Recall curves for several (label, first ranks) variants."""
    return {label: recall_curve(first, n_rankable) for label, first in variants}
