"""sweep.png fits its axes: bars for categories, lines for numbers, seeds as error bars, antialiased."""

from __future__ import annotations

import numpy as np
import pytest
from cvgl.orchestration.sweep_plot import SERIES_COLORS, is_numeric, summarize, write_sweep_plot
from PIL import Image

BLUE, ORANGE = (0x1F, 0x5F, 0xBF), (0xE0, 0x70, 0x00)


def _rows(axis: str, values, seeds=(0, 1, 2), series: dict | None = None, spread: float = 2.0):
    rows = []
    for n, v in enumerate(values):
        for s in seeds:
            for k, sv in (series or {None: None}).items():
                r = {axis: str(v), "seed": str(s), "status": "complete"}
                if k:
                    r[k] = str(sv)
                base = 20 + 5 * n + (8 if sv == 40 else 0)
                r.update({"R@1": base + spread * (s - 1), "R@5": base + 30, "AP": base + 5})
                rows.append(r)
    return rows


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3).astype(int)


def _count(px: np.ndarray, rgb, tol: int = 12) -> int:
    return int((np.abs(px - rgb).sum(1) < tol).sum())


def test_seed_is_the_replicate_axis_mean_and_sample_std():
    rows = _rows("align.method", ["isms", "geoalign"])
    xs, series, cells = summarize(rows, "align.method", [], "R@1")
    assert xs == ["isms", "geoalign"] and series == [()]
    c = cells[("isms", ())]
    assert c.n == 3 and c.mean == pytest.approx(20.0) and c.std == pytest.approx(2.0)  # sample std of 18, 20, 22
    failed = [dict(r, status="failed", **{"R@1": ""}) if r["seed"] == "2" else r for r in rows]
    assert summarize(failed, "align.method", [], "R@1")[2][("isms", ())].n == 2


def test_numeric_axes_are_told_from_categorical_ones():
    assert is_numeric([0.001, 3e-4]) and is_numeric([10, 20])
    assert not is_numeric(["isms", "geoalign"]) and not is_numeric([[26, 28], [28]]) and not is_numeric([True])


def test_categorical_axis_gets_bars_numeric_axis_gets_lines(tmp_path):
    bars = write_sweep_plot(tmp_path / "bars.png", ["align.method", "seed"], _rows("align.method", ["a", "b", "c"]))
    lines = write_sweep_plot(
        tmp_path / "lines.png", ["align.isms.lr", "seed"], _rows("align.isms.lr", [0.001, 0.002, 0.003]),
        {"align.isms.lr": [0.001, 0.002, 0.003]},
    )
    pb, pl = _pixels(bars), _pixels(lines)
    assert Image.open(bars).size == (760, 3 * 340)  # one panel per metric (R@1, R@5, AP)
    # Bars fill areas in the series colour; a line with markers covers far fewer pixels, but is there.
    assert _count(pb, BLUE) > 5 * _count(pl, BLUE) and _count(pl, BLUE) > 300
    # Antialiased: the scaled-down drawing has many intermediate shades (aliased lines would have a few).
    for px in (pb, pl):
        assert len(np.unique(px, axis=0)) > 150


def test_error_bars_show_the_spread_over_seeds(tmp_path):
    flat = write_sweep_plot(tmp_path / "flat.png", ["align.method", "seed"], _rows("align.method", ["a"], spread=0))
    spread = write_sweep_plot(tmp_path / "spread.png", ["align.method", "seed"], _rows("align.method", ["a"], spread=6))
    dark = lambda p: int((_pixels(p).sum(1) < 150).sum())  # noqa: E731
    assert dark(spread) > dark(flat) + 50


def test_a_second_axis_is_drawn_as_series(tmp_path):
    rows = _rows("align.isms.lr", [0.001, 0.01], series={"align.isms.epochs": 20} | {"x": None})
    rows = [r for r in rows if "align.isms.epochs" in r]
    rows += [dict(r, **{"align.isms.epochs": "40", "R@1": r["R@1"] + 8}) for r in rows]
    p = write_sweep_plot(
        tmp_path / "two.png", ["align.isms.lr", "align.isms.epochs", "seed"], rows,
        {"align.isms.lr": [0.001, 0.01], "align.isms.epochs": [20, 40]},
    )
    px = _pixels(p)
    assert SERIES_COLORS[:2] == ["#1f5fbf", "#e07000"]
    assert _count(px, BLUE) > 200 and _count(px, ORANGE) > 200  # one line per epochs value, and the legend
