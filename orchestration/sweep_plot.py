"""``sweep.png``: the sweep's metrics drawn to fit its axes (Pillow only, like the recall curves).

* ``seed`` is never an x-axis: it is the replicate axis. Each bar or marker is the mean over the
  seeds of one setting, with an error bar of ± the sample standard deviation (none for one seed).
* The first other axis is the x-axis. A categorical one (method names, layer lists, strings) gets
  grouped bars; a numeric one (every value an int or a float) gets lines with markers, placed by value.
* A second axis (and any further ones, combined) is the series: one bar per group or one line each,
  with a legend.
* One panel per metric, each with a title, an x-axis label and a y label.
* Everything is drawn at three times the size and scaled down (Lanczos), so lines, markers and text
  are antialiased.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvgl.core.atomic import atomic_path
from PIL import Image, ImageDraw, ImageFont

PLOT_METRICS = ("R@1", "R@5", "AP")
SERIES_COLORS = ["#1f5fbf", "#e07000", "#2a9d2a", "#b02050", "#7040b0", "#606060", "#00a0a0", "#a0a000"]
SCALE = 3  # supersampling factor: drawn at 3x, scaled down with Lanczos


@dataclass
class Cell:
    """One (x value, series) setting: mean and sample std of a metric over its seeds."""

    mean: float
    std: float
    n: int


def is_numeric(values: Sequence[Any]) -> bool:
    """True when every value is an int or a float (bools and strings are categories)."""
    return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _label(v: Any) -> str:
    text = v if isinstance(v, str) else str(v)
    return text if len(text) <= 22 else text[:21] + "…"


def summarize(
    rows: list[dict[str, Any]], x_axis: str | None, series_axes: list[str], metric: str
) -> tuple[list[Any], list[tuple], dict[tuple[Any, tuple], Cell]]:
    """(x values, series keys, cells): mean ± sample std of ``metric`` over every row of a setting
    (the seeds), from the complete rows only."""
    xs = list(dict.fromkeys(r[x_axis] for r in rows)) if x_axis else [""]
    series = list(dict.fromkeys(tuple(r[a] for a in series_axes) for r in rows))
    cells: dict[tuple[Any, tuple], Cell] = {}
    for x in xs:
        for s in series:
            vals = [
                float(r[metric])
                for r in rows
                if (x_axis is None or r[x_axis] == x)
                and tuple(r[a] for a in series_axes) == s
                and isinstance(r.get(metric), (int, float))
                and r.get("status", "complete") == "complete"
            ]
            if vals:
                mean = sum(vals) / len(vals)
                var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1) if len(vals) > 1 else 0.0
                cells[(x, s)] = Cell(mean, math.sqrt(var), len(vals))
    return xs, series, cells


def write_sweep_plot(
    path: Path,
    axis_keys: list[str],
    rows: list[dict[str, Any]],
    values: dict[str, list[Any]] | None = None,
    metrics: tuple[str, ...] = PLOT_METRICS,
) -> Path:
    """Draw ``sweep.png`` from the sweep's table rows (one per point; axis columns hold display values).

    ``values`` maps an axis to its raw values (to tell numeric axes from categorical ones); without it
    an axis is numeric when every display value parses as a number.
    """
    values = values or {}
    others = [a for a in axis_keys if a != "seed"]
    x_axis = others[0] if others else None
    series_axes = others[1:]
    numeric = False
    if x_axis is not None:
        raw = values.get(x_axis) or [r[x_axis] for r in rows]
        numeric = is_numeric([_number(v) for v in raw])
    n_seeds = len({r.get("seed") for r in rows}) if "seed" in axis_keys else 1
    s = SCALE
    pw, ph = 760 * s, 340 * s
    img = Image.new("RGB", (pw, ph * len(metrics)), "white")
    draw = ImageDraw.Draw(img)
    for n, metric in enumerate(metrics):
        xs, series, cells = summarize(rows, x_axis, series_axes, metric)
        _panel(draw, n * ph, pw, ph, metric, x_axis, series_axes, xs, series, cells, numeric, n_seeds)
    out = img.resize((pw // s, ph * len(metrics) // s), Image.Resampling.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        out.save(tmp, format="PNG")
    return path


def _number(v: Any) -> Any:
    """A display value back as a number when it is one ("0.001" → 0.001); else as it is."""
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            try:
                return float(v)
            except ValueError:
                return v
    return v


def _panel(
    draw: ImageDraw.ImageDraw,
    y0: int,
    pw: int,
    ph: int,
    metric: str,
    x_axis: str | None,
    series_axes: list[str],
    xs: list[Any],
    series: list[tuple],
    cells: dict[tuple[Any, tuple], Cell],
    numeric: bool,
    n_seeds: int,
) -> None:
    s = SCALE
    font, small = _font(15 * s), _font(12 * s)
    legend_w = 190 * s if series_axes else 0
    left, right, top, bottom = 70 * s, 24 * s + legend_w, 40 * s, 62 * s
    x_lo, x_hi, y_lo, y_hi = left, pw - right, y0 + top, y0 + ph - bottom
    tops = [c.mean + c.std for c in cells.values()]
    y_max = 100.0 if not tops or max(tops) > 50 else 50.0 if max(tops) > 20 else 20.0

    def y_of(v: float) -> float:
        return y_hi - max(0.0, min(v, y_max)) / y_max * (y_hi - y_lo)

    step = y_max / 5
    for k in range(6):
        y = y_of(k * step)
        draw.line([(x_lo, y), (x_hi, y)], fill="#e4e4e4", width=s)
        draw.text((x_lo - 8 * s, y), f"{k * step:g}", fill="black", font=small, anchor="rm")
    replicate = f"mean ± std over {n_seeds} seeds" if n_seeds > 1 else "one seed"
    title = f"{metric} vs {x_axis}" if x_axis else metric
    draw.text((pw / 2 - legend_w / 2, y0 + 12 * s), f"{title} ({replicate})", fill="black", font=font, anchor="mt")
    _vertical_text(draw, (16 * s, (y_lo + y_hi) / 2), f"{metric} (%)", small)
    x_title = x_axis or ""


    if numeric and len(xs) > 1:
        nums = [float(_number(x)) for x in xs]
        lo, hi = min(nums), max(nums)
        log = lo > 0 and hi / lo >= 20  # e.g. learning rates: spread by order of magnitude
        t = [(math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo)) if log else (v - lo) / (hi - lo) for v in nums]
        pos = [x_lo + 30 * s + ti * (x_hi - x_lo - 60 * s) for ti in t]
        x_title += " (log scale)" if log else ""
        for x, px in zip(xs, pos):
            draw.line([(px, y_hi), (px, y_hi + 5 * s)], fill="black", width=s)
            draw.text((px, y_hi + 8 * s), _label(x), fill="black", font=small, anchor="mt")
        for si, key in enumerate(series):
            color = SERIES_COLORS[si % len(SERIES_COLORS)]
            pts = [(px, cells[(x, key)]) for x, px in sorted(zip(xs, pos), key=lambda p: p[1]) if (x, key) in cells]
            if len(pts) > 1:
                draw.line([(px, y_of(c.mean)) for px, c in pts], fill=color, width=2 * s, joint="curve")
            for px, c in pts:
                _error_bar(draw, px, c, y_of, color, 5 * s)
                r = 4 * s
                draw.ellipse([px - r, y_of(c.mean) - r, px + r, y_of(c.mean) + r], fill=color, outline="white")
    else:  # categorical (or a single value): grouped bars
        group_w = (x_hi - x_lo) / max(1, len(xs))
        bar_w = min(60 * s, 0.8 * group_w / max(1, len(series)))
        for xi, x in enumerate(xs):
            cx = x_lo + (xi + 0.5) * group_w
            draw.text((cx, y_hi + 8 * s), _label(x), fill="black", font=small, anchor="mt")
            for si, key in enumerate(series):
                c = cells.get((x, key))
                if c is None:
                    continue
                color = SERIES_COLORS[si % len(SERIES_COLORS)]
                bx = cx + (si - (len(series) - 1) / 2) * bar_w
                draw.rectangle([bx - 0.45 * bar_w, y_of(c.mean), bx + 0.45 * bar_w, y_hi], fill=color)
                _error_bar(draw, bx, c, y_of, "black", 0.2 * bar_w)
    draw.text(((x_lo + x_hi) / 2, y_hi + 44 * s), x_title, fill="black", font=small, anchor="mm")
    draw.rectangle([x_lo, y_lo, x_hi, y_hi], outline="black", width=s)
    if series_axes:
        lx = x_hi + 16 * s
        draw.text((lx, y_lo), ", ".join(series_axes), fill="black", font=small, anchor="lt")
        for si, key in enumerate(series):
            ly = y_lo + (26 + 20 * si) * s
            color = SERIES_COLORS[si % len(SERIES_COLORS)]
            draw.rectangle([lx, ly - 5 * s, lx + 22 * s, ly + 5 * s], fill=color)
            draw.text((lx + 28 * s, ly), _label(", ".join(map(str, key))), fill="black", font=small, anchor="lm")


def _vertical_text(draw: ImageDraw.ImageDraw, center: tuple[float, float], text: str, font) -> None:
    """``text`` turned 90° counter-clockwise, centred on ``center`` (the y-axis label)."""
    box = draw.textbbox((0, 0), text, font=font)
    w, h = box[2] - box[0] + 4, box[3] - box[1] + 4
    label = Image.new("L", (w, h), 0)
    ImageDraw.Draw(label).text((2 - box[0], 2 - box[1]), text, fill=255, font=font)
    label = label.rotate(90, expand=True)
    x, y = int(center[0] - label.width / 2), int(center[1] - label.height / 2)
    draw._image.paste(Image.new("RGB", label.size, "black"), (x, y), label)  # type: ignore[attr-defined]


def _error_bar(draw: ImageDraw.ImageDraw, x: float, c: Cell, y_of, color: str, half: float) -> None:
    """± one standard deviation around the mean (nothing to draw for a single seed)."""
    if c.n < 2 or c.std == 0:
        return
    s = SCALE
    top, bot = y_of(c.mean + c.std), y_of(c.mean - c.std)
    draw.line([(x, top), (x, bot)], fill=color, width=s)
    draw.line([(x - half, top), (x + half, top)], fill=color, width=s)
    draw.line([(x - half, bot), (x + half, bot)], fill=color, width=s)
