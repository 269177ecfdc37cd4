"""``pipeline compare RUN RUN …``: one table of retrieval metrics across run folders.

Each argument is a run folder (its ``metrics.json`` and those one level down, like the demo's ``raw/``
and ``isms/``) or a ``metrics.json`` file. A run whose ``run.json`` says it is not complete (failed,
still running) has no result and is skipped. Every other metrics.json becomes one row: where it came from, the
protocol, direction, entries, sizes, a sweep point's axis values (from its run.json), R@K / R@1% / AP
(on screen "–" for R@1% on a gallery under 100 items; the CSV keeps the number), how the top-K lists were served (index, recall
against exact) and re-ranking (with the metrics without it). :func:`compare_runs` returns the rows, a
Markdown table (best value of each metric in bold) and CSV text; :func:`write_comparison` writes
``comparison.md`` and ``comparison.csv``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path
from typing import Any

from cvgl.core.atomic import write_text_atomic
from cvgl.core.console import metric_cell
from cvgl.core.errors import UserError
from cvgl.core.outputs import new_file_only, writable_folder

MD_FILE = "comparison.md"
CSV_FILE = "comparison.csv"
_INFO = ["run", "part", "status", "protocol", "direction", "query", "gallery", "n_queries", "n_gallery"]
_TAIL = ["topk_source", "ann_recall", "rerank", "AP_without_rerank", "R@1_without_rerank"]


def metrics_files(path: Path) -> list[Path]:
    """The metrics.json files a compare argument stands for (the folder's own first, then its subfolders')."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.exists():
        raise UserError(f"{path} does not exist; give run folders (or metrics.json files) to compare")
    found = ([path / "metrics.json"] if (path / "metrics.json").is_file() else []) + sorted(
        path.glob("*/metrics.json")
    )
    # A sweep folder: every point's run (points/<n>/) and the parts one level below it.
    found += sorted(path.glob("points/*/metrics.json")) + sorted(path.glob("points/*/*/metrics.json"))
    if not found:
        raise UserError(
            f"no metrics.json in {path} or its subfolders; give the run folders of retrieve, run, demo or sweep"
        )
    return found


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} ({e}); is it a metrics.json written by pipeline?") from None
    if not isinstance(data, dict) or "protocol" not in data:
        raise UserError(f"{path} is not a pipeline metrics.json (no 'protocol'); give run folders to compare")
    return data


def _status(run_dir: Path) -> str:
    try:
        return str(json.loads((run_dir / "run.json").read_text()).get("status", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def _k_of(key: str) -> float:
    """K of an ``R@K`` key (R@1% and anything else after every numeric K)."""
    m = re.fullmatch(r"R@(\d+)", key)
    return float(m.group(1)) if m else float("inf")


def compare_runs(paths: list[Path]) -> tuple[list[dict[str, Any]], str, str]:
    """Rows (one per metrics.json), a Markdown table and CSV text comparing the runs in ``paths``."""
    if not paths:
        raise UserError("give at least one run folder to compare, e.g. `pipeline compare runs/a runs/b`")
    rows: list[dict[str, Any]] = []
    metric_keys: set[str] = set()
    axis_keys: list[str] = []  # a sweep point's axes (run.json's sweep_point), in the sweep's order
    skipped: dict[str, str] = {}
    for arg in paths:
        arg = Path(arg)
        if arg.is_dir() and (arg / "run.json").exists() and _status(arg) != "complete":
            # A run that failed or is still running has no result, whatever files its folder holds.
            skipped[str(arg)] = _status(arg) or "unknown"
            continue
        for f in metrics_files(arg):
            run_dir = arg if arg.is_dir() else f.parent
            part = os.path.relpath(f.parent, run_dir) if arg.is_dir() else "."
            status_dir = run_dir if (run_dir / "run.json").exists() else f.parent
            status = _status(status_dir)
            if (status_dir / "run.json").exists() and status != "complete":
                # A run that failed or is still running has no result, whatever files its folder holds.
                skipped[str(arg)] = status or "unknown"
                continue
            m = _read(f)
            row: dict[str, Any] = {
                "run": str(arg),
                "part": part,
                "status": status,
                **{k: m.get(k, "") for k in _INFO[3:]},
            }
            point = _sweep_point(f.parent) or _sweep_point(f.parent.parent)
            row.update(point)
            axis_keys.extend(k for k in point if k not in axis_keys)
            for k, v in m.items():
                if (k.startswith("R@") or k == "AP") and isinstance(v, (int, float)):
                    row[k] = float(v)
                    metric_keys.add(k)
            ann = m.get("ann") if isinstance(m.get("ann"), dict) else {}
            rec = next((v for k, v in ann.items() if k.startswith("recall@")), "")
            row["topk_source"] = ann.get("index") or ("rerank" if "rerank" in m else "exact")
            row["ann_recall"] = rec
            rr = m.get("rerank") if isinstance(m.get("rerank"), dict) else {}
            row["rerank"] = (
                f"k1={rr.get('k1')},k2={rr.get('k2')},lambda={rr.get('lambda_value')}" if rr else "none"
            )
            wo = m.get("without_rerank") if isinstance(m.get("without_rerank"), dict) else {}
            row["AP_without_rerank"] = wo.get("AP", "")
            row["R@1_without_rerank"] = wo.get("R@1", "")
            rows.append(row)
    if not rows:
        run, status = next(iter(skipped.items()))
        raise UserError(
            f"no complete run to compare: {run} is {status!r} (run.json); rerun it, or give complete runs"
        )
    metrics = sorted((k for k in metric_keys if k != "AP"), key=lambda k: (_k_of(k), k))
    metrics += ["AP"] if "AP" in metric_keys else []
    columns = _INFO[:2] + axis_keys + _INFO[2:] + metrics + _TAIL
    for row in rows:
        for c in columns:
            row.setdefault(c, "")
    markdown = _markdown(rows, columns, metrics, axis_keys)
    if skipped:
        markdown += "\nSkipped (not complete): " + ", ".join(f"{r} ({st})" for r, st in skipped.items()) + "\n"
    return rows, markdown, _csv(rows, columns)


def _sweep_point(run_dir: Path) -> dict[str, str]:
    """The axis values of a sweep point's run (``sweep_point`` in its run.json); {} for other runs."""
    try:
        point = json.loads((run_dir / "run.json").read_text()).get("sweep_point")
    except (OSError, ValueError, AttributeError):
        return {}
    return {str(k): str(v) for k, v in point.items()} if isinstance(point, dict) else {}


def _fmt(column: str, v: Any, row: dict[str, Any] | None = None) -> str:
    if column.startswith("R@") or column == "AP":
        return metric_cell(column, v, (row or {}).get("n_gallery")) if isinstance(v, float) else str(v)
    if isinstance(v, float):
        return f"{v:.4f}" if column == "ann_recall" else f"{v:.2f}"
    return str(v)


def _markdown(rows: list[dict[str, Any]], columns: list[str], metrics: list[str], axis_keys: list[str]) -> str:
    best = {k: max((r[k] for r in rows if isinstance(r[k], float)), default=None) for k in metrics}
    hidden = {"query", "gallery"}
    if axis_keys and all(r["part"] == "." or any(r[a] != "" for a in axis_keys) for r in rows):
        hidden.add("part")  # a sweep's points are named by their axis values, not points/<n>
    shown = [c for c in columns if c not in hidden and any(r[c] != "" for r in rows)]
    lines = [
        "| " + " | ".join(shown) + " |",
        "|" + "|".join("---:" if c in metrics else "---" for c in shown) + "|",
    ]
    for r in rows:
        cells = []
        for c in shown:
            text = _fmt(c, r[c], r).replace("|", "\\|")
            if c in metrics and text != "–" and isinstance(r[c], float) and len(rows) > 1 and r[c] == best[c]:
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def write_comparison(markdown: str, csv_text: str, out_dir: Path, *, overwrite: bool = False) -> list[Path]:
    """Write ``comparison.md`` and ``comparison.csv`` into ``out_dir`` (created); returns their paths.

    The rule for outputs (core/outputs.py): both must be new files unless ``overwrite``
    (``compare --overwrite``), only regular files are replaced, and a folder that cannot be written is
    one line; everything is checked before either file is written.
    """
    out_dir = writable_folder(Path(out_dir), what="--out")
    targets = [(out_dir / MD_FILE, markdown), (out_dir / CSV_FILE, csv_text)]
    for p, _ in targets:
        new_file_only(p, option="--out", overwrite_option="--overwrite", overwrite=overwrite)
    written = []
    for p, text in targets:
        write_text_atomic(p, text)
        written.append(p)
    return written
