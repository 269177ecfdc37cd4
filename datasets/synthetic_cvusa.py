"""A synthetic ground↔aerial dataset in CVUSA's on-disk layout, with a known spatial correspondence.

Layout written under ``root`` (as CVUSA ships it)::

    bingmap/19/<x>.jpg          aerial tile, square
    streetview/panos/<x>.jpg    ground "panorama" rendered from that tile
    annotations/<x>.png         the tile's class map (0 field, 1 road, 2 building, 3 tree, 4 roof edge)
    splits/train-19zl.csv       lines ``bingmap/19/<x>.jpg,streetview/panos/<x>.jpg,annotations/<x>.png``
    splits/val-19zl.csv
    synthetic.json              the generation parameters and the polar convention

``<x>`` is a 7-digit zero-padded number. Aerial tiles are drawn with numpy + Pillow: Voronoi crop
fields with oriented row texture, a road through the centre (street-view cameras stand on roads)
plus a few more, buildings with shadows, and trees. Each panorama is a polar resampling of its
tile (:func:`polar_sample_coords`): column ``j`` looks along azimuth ``θ = 2π (j + ½) / W``, measured
clockwise from south, so the middle column faces north (the convention of CVUSA's north-aligned
panoramas and of SAFA's polar transform); row ``i`` is radius ``r = (S/2)·(H − i − ½)/H``, so the
top of the panorama is the tile's border (far) and the bottom its centre (near). Brightness,
colour, blur and pixel noise differ per view. Deterministic by ``seed``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cvgl.core.atomic import write_text_atomic
from cvgl.core.errors import UserError
from cvgl.datasets.synthetic import generate_atomically, generation_lock, refuse_foreign
from PIL import Image, ImageDraw, ImageFilter

TRAIN_CSV = "splits/train-19zl.csv"
VAL_CSV = "splits/val-19zl.csv"

_FIELD_COLOURS = np.array(
    [[96, 128, 56], [122, 150, 70], [150, 140, 80], [170, 150, 100], [80, 110, 60], [140, 120, 70],
     [110, 100, 70], [160, 170, 90]],
    dtype=np.float32,
)  # fmt: skip
_ROOF_COLOURS = [(150, 60, 50), (120, 120, 130), (180, 170, 160), (90, 90, 100), (170, 110, 70)]


@dataclass(frozen=True)
class SyntheticCVUSA:
    """Where :func:`make_synthetic_cvusa` wrote things (paths absolute)."""

    root: Path
    train_csv: Path
    val_csv: Path
    n_train: int
    n_val: int


def polar_sample_coords(ground_size: tuple[int, int], aerial_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Aerial ``(row, col)`` float coordinates that panorama pixel ``(i, j)`` shows, each ``[H, W]``.

    Azimuth ``θ = 2π (j + ½)/W`` clockwise from south (centre column = north); radius
    ``r = (S/2)(H − i − ½)/H`` (top row = far). ``row = S/2 + r cos θ``, ``col = S/2 − r sin θ``.
    """
    h, w = ground_size
    s = float(aerial_size)
    r = (s / 2.0) * (h - np.arange(h) - 0.5) / h
    theta = 2.0 * np.pi * (np.arange(w) + 0.5) / w
    rows = s / 2.0 + r[:, None] * np.cos(theta)[None, :]
    cols = s / 2.0 - r[:, None] * np.sin(theta)[None, :]
    return rows, cols


def _bilinear(img: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Sample ``img [S, S, C]`` at float pixel-centre coordinates, clamping at the border."""
    s0, s1 = img.shape[:2]
    y = np.clip(rows - 0.5, 0, s0 - 1)
    x = np.clip(cols - 0.5, 0, s1 - 1)
    y0 = np.minimum(np.floor(y).astype(np.int64), s0 - 2)
    x0 = np.minimum(np.floor(x).astype(np.int64), s1 - 2)
    fy = (y - y0)[..., None]
    fx = (x - x0)[..., None]
    top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
    bottom = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled bilinearly."""
    grid = rng.uniform(-1, 1, size=(cells + 1, cells + 1, 1)).astype(np.float32)
    coords = (np.arange(size) + 0.5) * (cells / size)
    rows, cols = np.meshgrid(coords, coords, indexing="ij")
    return _bilinear(grid, rows + 0.5, cols + 0.5)[..., 0]


def _draw_tile(rng: np.random.Generator, s: int) -> tuple[np.ndarray, np.ndarray]:
    """One aerial tile ``[S, S, 3] uint8`` and its class map ``[S, S] uint8``."""
    # Fields: nearest-seed (Voronoi) regions, each with a crop colour and oriented row stripes.
    k = int(rng.integers(6, 14))
    seeds = rng.uniform(0, s, size=(k, 2)).astype(np.float32)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    d2 = (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2
    region = d2.argmin(axis=0)
    colours = _FIELD_COLOURS[rng.integers(0, len(_FIELD_COLOURS), size=k)]
    angle = rng.uniform(0, np.pi, size=k)
    freq = rng.uniform(0.15, 0.6, size=k) * (256.0 / s)
    phase = yy * np.cos(angle)[region] + xx * np.sin(angle)[region]
    stripes = 0.5 + 0.5 * np.sin(phase * freq[region])
    img = colours[region] * (0.8 + 0.25 * stripes[..., None])
    img *= (1.0 + 0.12 * _smooth_noise(rng, s, 6))[..., None]
    base = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    labels = Image.new("L", (s, s), 0)
    draw, ldraw = ImageDraw.Draw(base), ImageDraw.Draw(labels)

    # Roads: one through the centre at a random angle, then a few anywhere.
    width = max(2, s // 28)
    for r in range(int(rng.integers(2, 4))):
        a = rng.uniform(0, np.pi)
        cy, cx = (s / 2, s / 2) if r == 0 else tuple(rng.uniform(0.1 * s, 0.9 * s, size=2))
        dy, dx = np.sin(a) * s * 1.5, np.cos(a) * s * 1.5
        line = [(cx - dx, cy - dy), (cx + dx, cy + dy)]
        grey = int(rng.integers(85, 125))
        draw.line(line, fill=(grey, grey, grey + 5), width=width)
        ldraw.line(line, fill=1, width=width)
    # Buildings: rotated rectangles with a shadow cast to the south-east, off the centre road.
    for _ in range(int(rng.integers(3, 9))):
        cy, cx = rng.uniform(0.08 * s, 0.92 * s, size=2)
        if abs(cy - s / 2) < s * 0.08 and abs(cx - s / 2) < s * 0.08:
            continue
        hh, hw = rng.uniform(0.03 * s, 0.09 * s, size=2)
        a = rng.uniform(0, np.pi / 2)
        ca, sa = np.cos(a), np.sin(a)
        corners = [(cx + u * hw * ca - v * hh * sa, cy + u * hw * sa + v * hh * ca) for u, v in
                   ((-1, -1), (1, -1), (1, 1), (-1, 1))]  # fmt: skip
        off = 0.02 * s
        draw.polygon([(x + off, y + off) for x, y in corners], fill=(40, 45, 40))
        draw.polygon(
            corners, fill=_ROOF_COLOURS[int(rng.integers(0, len(_ROOF_COLOURS)))], outline=(60, 60, 60)
        )
        ldraw.polygon(corners, fill=2, outline=4)
    # Trees: dark round crowns.
    for _ in range(int(rng.integers(5, 25))):
        cy, cx = rng.uniform(0, s, size=2)
        rad = rng.uniform(0.01 * s, 0.03 * s)
        box = [cx - rad, cy - rad, cx + rad, cy + rad]
        g = int(rng.integers(55, 85))
        draw.ellipse(box, fill=(g - 25, g, g - 30))
        ldraw.ellipse(box, fill=3)
    return np.asarray(base), np.asarray(labels)


def _render_ground(rng: np.random.Generator, tile: np.ndarray, ground_size: tuple[int, int]) -> np.ndarray:
    """The panorama of ``tile`` with its own exposure, colour cast, blur and noise."""
    rows, cols = polar_sample_coords(ground_size, tile.shape[0])
    pano = _bilinear(tile.astype(np.float32), rows, cols)
    gain = rng.uniform(0.8, 1.2)
    cast = rng.uniform(-12, 12, size=3).astype(np.float32)
    # Distance haze: far rows (top) drift toward a pale grey, as they do in real panoramas.
    haze = (1.0 - (np.arange(ground_size[0]) + 0.5) / ground_size[0])[:, None, None] * 0.35
    pano = (pano * gain + cast) * (1 - haze) + 190.0 * haze
    pano = np.clip(pano, 0, 255).astype(np.uint8)
    pano = np.asarray(Image.fromarray(pano).filter(ImageFilter.GaussianBlur(radius=0.8)), dtype=np.float32)
    pano += rng.normal(0.0, 6.0, size=pano.shape)
    return np.clip(pano, 0, 255).astype(np.uint8)


MARKER = "synthetic.json"
_GENERATOR = "extract.synthetic_cvusa"
_NAMES = frozenset({MARKER, MARKER + ".tmp", "bingmap", "streetview", "annotations", "splits"})


def _write_atomic(path: Path, text: str) -> None:
    # The temporary name is one the generated folder may hold (``_NAMES``).
    write_text_atomic(path, text, tmp=path.with_name(path.name + ".tmp"))


def _read_marker(root: Path) -> dict | None:
    try:
        content = json.loads((root / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) and content.get("generator") == _GENERATOR else None


def _is_ours(folder: Path) -> bool:
    return _read_marker(folder) is not None


def make_synthetic_cvusa(
    root: str | Path,
    *,
    n_pairs: int = 128,
    train_pairs: int = 96,
    aerial_size: int = 256,
    ground_size: tuple[int, int] = (112, 616),
    seed: int = 0,
) -> SyntheticCVUSA:
    """Write ``n_pairs`` ground/aerial pairs in CVUSA's layout; the first ``train_pairs`` are training.

    Sizes default to CVFT's network inputs (real CVUSA: 750×750 tiles, 224×1232 panoramas; pass those
    to exercise the resizing). The dataset is written into a temporary folder beside ``root`` and
    renamed into place once complete (``synthetic.json`` says ``"complete": true``, written last), under
    a lock: a concurrent call waits and then reuses it. A complete dataset with the same parameters is
    reused; one with other parameters is replaced; a non-empty folder without the marker is refused.
    """
    if n_pairs < 2 or not 0 < train_pairs < n_pairs:
        raise UserError(
            f"n_pairs={n_pairs}, train_pairs={train_pairs}: need 0 < train_pairs < n_pairs; fix the sizes"
        )
    if aerial_size < 16 or min(ground_size) < 8:
        raise UserError(
            f"aerial_size={aerial_size}, ground_size={ground_size} are too small; use ≥ 16 and ≥ 8"
        )
    root = Path(root).resolve()
    params = {
        "generator": _GENERATOR,
        "seed": seed,
        "n_pairs": n_pairs,
        "train_pairs": train_pairs,
        "aerial_size": aerial_size,
        "ground_size": list(ground_size),
    }
    refuse_foreign(root, _is_ours, _NAMES)
    with generation_lock(root):
        done = _read_marker(root)
        if not (
            done is not None
            and done.get("complete")
            and all(done.get(k) == v for k, v in params.items())
            and (root / VAL_CSV).is_file()
        ):
            generate_atomically(
                root,
                lambda work: _build(work, params, tuple(ground_size)),
                is_ours=_is_ours,
                names=_NAMES,
                marker=MARKER,
            )
    return SyntheticCVUSA(root, root / TRAIN_CSV, root / VAL_CSV, train_pairs, n_pairs - train_pairs)


def _build(root: Path, params: dict, ground_size: tuple[int, int]) -> None:
    """Write the pairs of :func:`make_synthetic_cvusa` into ``root``; the marker first and, complete, last."""
    n_pairs, train_pairs = params["n_pairs"], params["train_pairs"]
    aerial_size, seed = params["aerial_size"], params["seed"]
    marker = {
        **params,
        "polar": "column j: azimuth 2π(j+½)/W clockwise from south (centre = north); "
        "row i: radius (S/2)(H−i−½)/H (top = far)",
    }
    _write_atomic(root / MARKER, json.dumps({**marker, "complete": False}, indent=2))
    for sub in ("bingmap/19", "streetview/panos", "annotations", "splits"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n_pairs):
        rng = np.random.default_rng([seed, i])
        name = f"{i + 1:07d}"
        tile, labels = _draw_tile(rng, aerial_size)
        tile_noisy = np.clip(tile + rng.normal(0.0, 4.0, size=tile.shape), 0, 255).astype(np.uint8)
        pano = _render_ground(rng, tile, ground_size)
        Image.fromarray(tile_noisy).save(root / f"bingmap/19/{name}.jpg", quality=90)
        Image.fromarray(pano).save(root / f"streetview/panos/{name}.jpg", quality=90)
        Image.fromarray(labels).save(root / f"annotations/{name}.png")
        lines.append(f"bingmap/19/{name}.jpg,streetview/panos/{name}.jpg,annotations/{name}.png\n")
    _write_atomic(root / TRAIN_CSV, "".join(lines[:train_pairs]))
    _write_atomic(root / VAL_CSV, "".join(lines[train_pairs:]))
    _write_atomic(root / MARKER, json.dumps({**marker, "complete": True}, indent=2))
