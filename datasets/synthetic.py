"""A small synthetic dataset in the University-1652 layout, for the demo and the tests.

No real dataset can be shipped or downloaded here, yet the whole pipeline (listing, decoding, caching,
alignment, retrieval) must be exercised on data where retrieval is meaningful. So each "place" is a
procedurally generated aerial scene (fields, roads, buildings with shadows, water, trees), its
satellite tile is the north-up centre crop, and its drone views are oblique perspective renderings of
the same scene (rotation, foreshortening, zoom, haze, illumination, blur, noise). Matching a drone
view to its tile is therefore possible but not trivial, like the real task.

Everything is drawn from numpy generators seeded by ``(seed, purpose, id)``, and JPEGs are written
with fixed settings, so the same arguments give byte-identical files.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import io
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from cvgl.core.atomic import fsync_dir, write_text_atomic
from cvgl.core.diskspace import disk_full_is_user_error
from cvgl.core.errors import UserError
from PIL import Image, ImageDraw, ImageFilter

# Written at the dataset root: it lets a rerun recognise (and safely replace) its own earlier output,
# and tells readers whether generation finished ("complete": true is written last).
MARKER = "synthetic-u1652.json"
JPEG_QUALITY = 90
T = TypeVar("T")
_FORMAT_VERSION = 1

# Seed-stream purposes: a separate stream per purpose keeps one part of the generator from shifting
# the random numbers another part sees.
_IDS, _WORLD, _VIEW = 0, 1, 2

# Land-cover colours (RGB in 0..1): crops, dry grass, bare soil, forest, meadow, orchard.
_FIELD_COLOURS = np.array(
    [
        [0.33, 0.47, 0.20],
        [0.62, 0.57, 0.36],
        [0.50, 0.40, 0.29],
        [0.14, 0.27, 0.14],
        [0.44, 0.58, 0.30],
        [0.28, 0.36, 0.18],
    ]
)
_ROOF_COLOURS = np.array(
    [
        [0.78, 0.78, 0.76],
        [0.55, 0.27, 0.20],
        [0.35, 0.35, 0.38],
        [0.85, 0.82, 0.70],
        [0.30, 0.40, 0.55],
        [0.60, 0.50, 0.45],
    ]
)


def _rng(seed: int, purpose: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, purpose, *keys])


def _smooth_noise(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a coarse random grid upsampled bicubically (cheap Perlin stand-in)."""
    coarse = (rng.random((cells, cells)) * 255).astype(np.uint8)
    up = Image.fromarray(coarse, mode="L").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(up, dtype=np.float32) * np.float32(1 / 255)


def _to_u8(arr: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(arr * np.float32(255.0)), 0, 255).astype(np.uint8)


def _bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, n: int = 24) -> list[tuple[float, float]]:
    t = np.linspace(0.0, 1.0, n)[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
    return [(float(x), float(y)) for x, y in pts]


def _rect(cx: float, cy: float, w: float, h: float, angle: float) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    pts = []
    for dx, dy in ((-w, -h), (w, -h), (w, h), (-w, h)):
        pts.append((cx + (dx * c - dy * s) / 2, cy + (dx * s + dy * c) / 2))
    return pts


def _make_world(rng: np.random.Generator, world: int, tile: int) -> Image.Image:
    """One aerial scene of ``world`` x ``world`` pixels; the place of interest is at its centre."""
    px = tile / 128.0  # feature sizes are designed at 128 px tiles and scale with the tile
    axis = np.arange(world, dtype=np.float32)
    yy, xx = axis[:, None], axis[None, :]  # broadcast instead of full grids: half the memory traffic

    # Fields: a Voronoi partition, each cell a land-cover colour (tinted per place) with plough stripes.
    # Squared distances are separable, so one add per pixel and seed builds them.
    k = int(rng.integers(5, 12))
    seeds = rng.random((k, 2)).astype(np.float32) * world
    dx2 = (axis[None, :] - seeds[:, 0, None]) ** 2
    dy2 = (axis[None, :] - seeds[:, 1, None]) ** 2
    cell = np.argmin(dy2[:, :, None] + dx2[:, None, :], axis=0)
    # Multiplicative tint: an additive one turns dark greens purple.
    tint = 1.0 + np.clip(rng.normal(0.0, 0.07, 3), -0.15, 0.15)
    colours = _FIELD_COLOURS[rng.integers(0, len(_FIELD_COLOURS), k)] * tint + rng.normal(0, 0.03, (k, 3))
    phi = rng.uniform(0, math.pi, k)
    # Per-field stripe parameters folded into one phase: 2*pi*(x cos + y sin)/period.
    fx = (2 * math.pi * np.cos(phi) / (rng.uniform(3.0, 9.0, k) * px)).astype(np.float32)
    fy = (2 * math.pi * np.sin(phi) / (rng.uniform(3.0, 9.0, k) * px)).astype(np.float32)
    amp = rng.uniform(0.0, 0.07, k).astype(np.float32)
    stripes = 1.0 + amp[cell] * np.sin(xx * fx[cell] + yy * fy[cell])
    shade = stripes * (0.88 + 0.24 * _smooth_noise(rng, 7, world))
    img = colours.astype(np.float32)[cell] * shade[..., None]

    # Water: a lake from thresholded smooth noise, sometimes.
    if rng.random() < 0.45:
        level = _smooth_noise(rng, 5, world)
        mask = level > np.quantile(level, rng.uniform(0.78, 0.93))
        water = np.array([0.10, 0.20, 0.27]) + rng.normal(0, 0.02, 3)
        ripple = 1.0 + 0.05 * (_smooth_noise(rng, 40, world) - 0.5)
        img[mask] = water[None] * ripple[mask][:, None]

    canvas = Image.fromarray(_to_u8(img), mode="RGB")
    draw = ImageDraw.Draw(canvas)
    centre = np.array([world / 2, world / 2])

    # Roads: gently curved strokes passing near the centre, so drone views of the place contain them.
    road_angles = []
    for _ in range(int(rng.integers(1, 4))):
        ang = rng.uniform(0, math.pi)
        road_angles.append(ang)
        through = centre + rng.normal(0, 0.22 * tile, 2)
        direction = np.array([math.cos(ang), math.sin(ang)]) * world
        bend = rng.normal(0, 0.25 * tile, 2)
        pts = _bezier(through - direction, through + bend, through + direction)
        grey = rng.uniform(0.32, 0.55)
        colour = tuple(int(v * 255) for v in (grey, grey, grey * rng.uniform(0.95, 1.08)))
        draw.line(pts, fill=colour, width=max(2, int(rng.uniform(2.5, 5.5) * px)))

    # Buildings: rectangles aligned with a road, cast shadows in one sun direction per place, plus a
    # larger landmark at the centre (University-1652 views are centred on a building).
    sun = rng.uniform(0, 2 * math.pi)
    shadow_off = np.array([math.cos(sun), math.sin(sun)]) * rng.uniform(1.5, 4.0) * px
    shadows = Image.new("L", canvas.size, 0)
    sdraw = ImageDraw.Draw(shadows)
    boxes = []
    n_build = int(rng.integers(4, 18))
    for b in range(n_build + 1):
        if b == 0:
            cx, cy = centre + rng.normal(0, 0.03 * tile, 2)
            w, h = rng.uniform(16, 30, 2) * px
        else:
            cx, cy = centre + rng.normal(0, 0.45 * tile, 2)
            w, h = rng.uniform(4, 13, 2) * px
        ang = road_angles[int(rng.integers(0, len(road_angles)))] + rng.normal(0, 0.08)
        roof = _ROOF_COLOURS[int(rng.integers(0, len(_ROOF_COLOURS)))] + rng.normal(0, 0.04, 3)
        boxes.append((cx, cy, w, h, ang, roof, b == 0))
        sdraw.polygon(_rect(cx + shadow_off[0], cy + shadow_off[1], w, h, ang), fill=255)
    # Trees: dark blobs with their own shadows.
    trees = []
    for _ in range(int(rng.integers(2, 8))):
        base = centre + rng.normal(0, 0.6 * tile, 2)
        for _ in range(int(rng.integers(3, 12))):
            tx, ty = base + rng.normal(0, 5 * px, 2)
            r = rng.uniform(1.2, 3.2) * px
            trees.append((tx, ty, r))
            sx, sy = tx + shadow_off[0] * 0.7, ty + shadow_off[1] * 0.7
            sdraw.ellipse((sx - r, sy - r, sx + r, sy + r), fill=255)
    shade = np.asarray(shadows, dtype=np.float32)[..., None] / 255.0
    arr = np.asarray(canvas, dtype=np.float32) * (1.0 - 0.45 * shade)
    canvas = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(canvas)
    for cx, cy, w, h, ang, roof, landmark in boxes:
        draw.polygon(_rect(cx, cy, w, h, ang), fill=tuple(_to_u8(roof).tolist()))
        if landmark:
            # A ridge line and an inner court make the landmark distinctive from above.
            inner = _rect(cx, cy, w * 0.45, h * 0.45, ang)
            draw.polygon(inner, fill=tuple(_to_u8(roof * 0.7).tolist()))
            ridge = _rect(cx, cy, w, 0.0, ang)
            draw.line([ridge[0], ridge[1]], fill=tuple(_to_u8(roof * 1.15).tolist()), width=max(1, int(px)))
    tree_colour = tuple(_to_u8(np.array([0.10, 0.22, 0.09]) + rng.normal(0, 0.02, 3)).tolist())
    for tx, ty, r in trees:
        draw.ellipse((tx - r, ty - r, tx + r, ty + r), fill=tree_colour)
    return canvas


def _satellite_tile(world_img: Image.Image, rng: np.random.Generator, tile: int) -> Image.Image:
    """The north-up centre crop, with sensor grain so flat areas are not perfectly flat."""
    lo = (world_img.size[0] - tile) // 2
    crop = np.asarray(world_img.crop((lo, lo, lo + tile, lo + tile)), dtype=np.float32)
    arr = crop + np.float32(2.0) * rng.standard_normal((tile, tile, 3), dtype=np.float32)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="RGB")


def _perspective_coeffs(dst: np.ndarray, src: np.ndarray) -> tuple[float, ...]:
    """Coefficients for ``Image.transform(PERSPECTIVE)``: maps output points ``dst`` to input ``src``."""
    a = np.zeros((8, 8))
    rhs = np.zeros(8)
    for i, ((x, y), (u, v)) in enumerate(zip(dst, src, strict=True)):
        a[2 * i] = [x, y, 1, 0, 0, 0, -x * u, -y * u]
        a[2 * i + 1] = [0, 0, 0, x, y, 1, -x * v, -y * v]
        rhs[2 * i], rhs[2 * i + 1] = u, v
    return tuple(float(c) for c in np.linalg.solve(a, rhs))


def _drone_view(world_img: Image.Image, rng: np.random.Generator, tile: int) -> Image.Image:
    """An oblique, rotated, re-lit rendering of the scene centre, ``tile`` x ``tile`` pixels."""
    world = world_img.size[0]
    half = tile / 2
    zoom = rng.uniform(0.6, 0.95)
    tilt = rng.uniform(0.1, 0.45)  # 0 = nadir; larger = more oblique, far side more compressed
    theta = rng.uniform(0, 2 * math.pi)
    # Clipped so the footprint always stays inside the world (see world size in make_synthetic_u1652).
    shift = np.clip(rng.normal(0, 0.04 * tile, 2), -0.1 * tile, 0.1 * tile)
    # Ground footprint in the camera frame (image up = far): a trapezoid wider and longer at the top.
    far_w, near_w = zoom * half * (1 + tilt), zoom * half * (1 - tilt)
    far_y, near_y = -zoom * half * (1 + 0.8 * tilt), zoom * half * (1 - 0.5 * tilt)
    quad = np.array([[-far_w, far_y], [far_w, far_y], [near_w, near_y], [-near_w, near_y]])
    c, s = math.cos(theta), math.sin(theta)
    quad = quad @ np.array([[c, s], [-s, c]]) + world / 2 + shift
    out = np.array([[0, 0], [tile, 0], [tile, tile], [0, tile]], dtype=np.float64)
    view = world_img.transform(
        (tile, tile),
        Image.Transform.PERSPECTIVE,
        _perspective_coeffs(out, quad),
        resample=Image.Resampling.BILINEAR,  # the blur below hides the difference to bicubic
    )

    # Illumination and atmosphere: gamma, exposure, per-channel white balance, a light gradient, and
    # haze that grows towards the far (top) edge.
    # Gamma through a 256-entry lookup table: far cheaper than a per-pixel power.
    lut = (np.arange(256, dtype=np.float32) / 255) ** np.float32(rng.uniform(0.85, 1.2))
    arr = lut[np.asarray(view)]
    gain = (rng.uniform(0.8, 1.2) * (1 + rng.normal(0, 0.05, 3))).astype(np.float32)
    ramp = np.linspace(-0.5, 0.5, tile, dtype=np.float32)
    psi = rng.uniform(0, 2 * math.pi)
    light = 1 + np.float32(rng.uniform(0, 0.25)) * (
        ramp[None, :] * np.float32(math.cos(psi)) + ramp[:, None] * np.float32(math.sin(psi))
    )
    haze = np.float32(rng.uniform(0.0, 0.3)) * (0.5 - ramp[:, None, None]) ** 1.5
    arr = arr * (light[..., None] * gain * (1 - haze)) + np.array([0.72, 0.78, 0.84], np.float32) * haze
    view = Image.fromarray(_to_u8(arr), mode="RGB")
    view = view.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.2, 1.0))))
    sigma = np.float32(rng.uniform(1.5, 5.0))
    arr = np.asarray(view, dtype=np.float32) + sigma * rng.standard_normal((tile, tile, 3), dtype=np.float32)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="RGB")


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    # Fixed quality and chroma subsampling, no optimisation pass, no metadata: reproducible bytes.
    img.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=2, optimize=False)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _write_marker(root: Path, content: dict[str, Any]) -> None:
    # The temporary name is one the generated folder may hold (``_U1652_NAMES``).
    text = json.dumps(content, indent=2, sort_keys=True) + "\n"
    write_text_atomic(root / MARKER, text, tmp=root / (MARKER + ".tmp"))


def _read_marker(root: Path) -> dict[str, Any] | None:
    try:
        content = json.loads((root / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def synthetic_summary(root: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The summary of a complete synthetic dataset at ``root``, or None if there is none (or it is partial)."""
    content = _read_marker(Path(root).expanduser())
    if content is None or not content.get("complete"):
        return None
    summary = content.get("summary")
    return {"root": str(Path(root).expanduser()), **summary} if isinstance(summary, dict) else None


# -- generating a dataset folder safely --------------------------------------------------------------
# A generated dataset appears at its root in one rename, complete (marker written last inside it), so a
# reader never sees half of it; generation holds a lock, so two processes never write one root, and the
# second reuses what the first made; only folders carrying the generator's marker are ever deleted.


def _abs(root: Path) -> Path:
    """``root`` as an absolute path without resolving symlinks (its parent and name locate lock and temp)."""
    path = Path(os.path.abspath(root))
    if not path.name:
        raise UserError(f"{root} cannot hold a generated dataset; choose a folder below it")
    return path


@contextlib.contextmanager
def generation_lock(root: Path) -> Iterator[None]:
    """Exclusive lock on generating ``root`` (an fcntl lock file beside it); a second process waits here."""
    path = _abs(root)
    with disk_full_is_user_error(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _remove_if_generated(folder: Path, is_ours: Callable[[Path], bool], marker: str) -> None:
    """Delete ``folder`` only if it carries the generator's marker, or holds nothing but its temporary."""
    if folder.is_symlink() or not folder.is_dir():
        return
    if is_ours(folder):
        shutil.rmtree(folder, ignore_errors=True)
        return
    for name in os.listdir(folder):
        if name == marker + ".tmp":  # killed while writing the first marker: nothing else was written
            (folder / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()  # only if empty


def refuse_foreign(root: Path, is_ours: Callable[[Path], bool], names: frozenset[str]) -> None:
    """Refuse a ``root`` that is a file, or a non-empty folder this generator did not write (alone)."""
    if root.exists() and not root.is_dir():
        raise UserError(f"synthetic dataset root {root} is a file; choose a folder path")
    if not root.is_dir() or not any(root.iterdir()):
        return
    if not is_ours(root):
        raise UserError(
            f"{root} is not empty and holds no synthetic dataset made by this tool; choose an empty "
            "or new folder for the synthetic data"
        )
    foreign = sorted(set(os.listdir(root)) - names)
    if foreign:
        raise UserError(
            f"{root} holds a synthetic dataset plus files the generator did not write ({', '.join(foreign[:3])}); "
            "move them out, or choose another folder, before generating it again"
        )


def generate_atomically(
    root: Path,
    build: Callable[[Path], T],
    *,
    is_ours: Callable[[Path], bool],
    names: frozenset[str],
    marker: str,
) -> T:
    """``build(folder)`` into a fresh temporary folder beside ``root``, then rename it to ``root``.

    Call under :func:`generation_lock`. ``build`` writes the marker first (incomplete) and last
    (complete). An earlier dataset at ``root`` is replaced only if it carries the marker and holds only
    ``names``. Any failure removes the temporary folder; a full disk is one line naming ``root``.
    """
    path = _abs(root)
    refuse_foreign(path, is_ours, names)
    # Leftovers of killed generations of this root (the lock says none is running): remove ours only.
    pattern = glob.escape(path.name)
    for stale in [*path.parent.glob(f".{pattern}.tmp-*"), *path.parent.glob(f".{pattern}.old-*")]:
        _remove_if_generated(stale, is_ours, marker)
    work = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        with disk_full_is_user_error(path):
            work.mkdir()
            result = build(work)
            # Publishing a whole folder is a directory rename (not configs.atomic's file write): the
            # parent directory is fsynced below so the rename survives a power cut.
            if path.is_dir() and any(path.iterdir()):
                old = path.parent / f".{path.name}.old-{os.getpid()}"
                os.rename(path, old)
                os.rename(work, path)
                _remove_if_generated(old, is_ours, marker)
            else:
                if path.is_dir():
                    path.rmdir()
                os.rename(work, path)
            fsync_dir(path.parent)
    except BaseException:
        _remove_if_generated(work, is_ours, marker)
        raise
    return result


def _is_u1652(folder: Path) -> bool:
    content = _read_marker(folder)
    return content is not None and isinstance(content.get("params"), dict)


_U1652_NAMES = frozenset({MARKER, MARKER + ".tmp", "test", "train"})


def make_synthetic_u1652(
    root: str | os.PathLike[str],
    *,
    n_locations: int = 40,
    n_distractors: int = 20,
    views_per_location: int = 6,
    size: int = 128,
    seed: int = 0,
    train_locations: int = 0,
) -> dict[str, Any]:
    """Write a deterministic synthetic University-1652-style dataset under ``root``.

    Layout (``<id>`` = 4-digit building number, drawn at random per seed so distractors interleave with
    the query ids as in the real dataset)::

        test/gallery_satellite/<id>/<id>.jpg        locations + distractors, one tile each
        test/query_satellite/<id>/<id>.jpg          locations (same bytes as in the gallery)
        test/query_drone/<id>/image-XX.jpeg         locations, ``views_per_location`` each
        test/gallery_drone/<id>/image-XX.jpeg       locations + distractors
        train/satellite/<id>/<id>.jpg, train/drone/<id>/image-XX.jpeg   when train_locations > 0

    Train places are disjoint from test places. The dataset is written into a temporary folder beside
    ``root`` and renamed into place, complete, under a lock: a second process asking for the same
    dataset meanwhile waits, then reuses it. A complete dataset already at ``root`` with the same
    parameters is reused as it is (same bytes, and same mtimes, hence the same cache keys); one with
    other parameters is replaced; any other non-empty folder is refused.

    Returns:
        A summary: ``root``, the parameters, ``query_ids``, ``distractor_ids``, ``train_ids`` (lists of
        id strings) and ``counts`` (images per view folder, e.g. ``"test/query_drone": 240``).
    """
    params = {
        "n_locations": n_locations,
        "n_distractors": n_distractors,
        "views_per_location": views_per_location,
        "size": size,
        "seed": seed,
        "train_locations": train_locations,
    }
    for name, value in params.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise UserError(f"synthetic {name}={value!r} must be an integer")
    minimum = {"n_locations": 1, "views_per_location": 1, "size": 32}
    for name, value in params.items():
        low = minimum.get(name, 0)
        if value < low:
            raise UserError(f"synthetic {name}={value} must be at least {low}")
    n_total = n_locations + n_distractors + train_locations
    if n_total > 9999:
        raise UserError(f"synthetic dataset asks for {n_total} places but 4-digit ids allow 9999; use fewer")

    root_path = Path(root).expanduser()
    refuse_foreign(root_path, _is_u1652, _U1652_NAMES)
    with generation_lock(root_path):
        done = _read_marker(root_path)
        if (
            done is not None
            and done.get("complete")
            and done.get("version") == _FORMAT_VERSION
            and done.get("params") == params
            and isinstance(done.get("summary"), dict)
        ):
            # Made meanwhile by another process (or earlier): identical arguments give identical files.
            return {"root": str(root_path), **done["summary"]}
        stored = generate_atomically(
            root_path,
            lambda work: _build_u1652(work, params),
            is_ours=_is_u1652,
            names=_U1652_NAMES,
            marker=MARKER,
        )
    return {"root": str(root_path), **stored}


def _build_u1652(work: Path, params: dict[str, int]) -> dict[str, Any]:
    """Write the dataset of :func:`make_synthetic_u1652` into ``work``; returns the stored summary."""
    n_locations, n_distractors = params["n_locations"], params["n_distractors"]
    views_per_location, size, seed = params["views_per_location"], params["size"], params["seed"]
    train_locations = params["train_locations"]
    n_total = n_locations + n_distractors + train_locations
    _write_marker(work, {"complete": False, "version": _FORMAT_VERSION, "params": params})

    ids = _rng(seed, _IDS).choice(np.arange(1, 10000), size=n_total, replace=False)
    train_ids = sorted(int(i) for i in ids[:train_locations])
    query_ids = sorted(int(i) for i in ids[train_locations : train_locations + n_locations])
    distractor_ids = sorted(int(i) for i in ids[train_locations + n_locations :])

    # The farthest footprint corner of a drone view lies 0.95 * size from the centre, plus a shift of
    # at most 0.1 * size per axis (0.15 diagonally): a half-width of 9/8 * size keeps every view inside.
    world_size = 9 * size // 4
    digits = max(2, len(str(views_per_location)))
    counts: dict[str, int] = {}

    def place(pid: int) -> tuple[bytes, list[bytes]]:
        """(tile JPEG, drone-view JPEGs) of one place; depends only on (seed, id)."""
        rng = _rng(seed, _WORLD, pid)
        world = _make_world(rng, world_size, size)
        tile = _satellite_tile(world, rng, size)
        views = [
            _jpeg(_drone_view(world, _rng(seed, _VIEW, pid, v), size)) for v in range(views_per_location)
        ]
        return _jpeg(tile), views

    def put(split: str, view: str, pid: int, tile: bytes | None, views: list[bytes] | None) -> None:
        key = f"{split}/{view}"
        bid = f"{pid:04d}"
        folder = work / split / view / bid
        if tile is not None:
            _write(folder / f"{bid}.jpg", tile)
            counts[key] = counts.get(key, 0) + 1
        if views is not None:
            for v, data in enumerate(views, start=1):
                _write(folder / f"image-{v:0{digits}d}.jpeg", data)
            counts[key] = counts.get(key, 0) + len(views)

    for pid in query_ids:
        tile, views = place(pid)
        put("test", "gallery_satellite", pid, tile, None)
        put("test", "query_satellite", pid, tile, None)
        put("test", "query_drone", pid, None, views)
        put("test", "gallery_drone", pid, None, views)
    for pid in distractor_ids:
        tile, views = place(pid)
        put("test", "gallery_satellite", pid, tile, None)
        put("test", "gallery_drone", pid, None, views)
    for pid in train_ids:
        tile, views = place(pid)
        put("train", "satellite", pid, tile, None)
        put("train", "drone", pid, None, views)

    summary: dict[str, Any] = {
        **params,
        "query_ids": [f"{i:04d}" for i in query_ids],
        "distractor_ids": [f"{i:04d}" for i in distractor_ids],
        "train_ids": [f"{i:04d}" for i in train_ids],
        "counts": dict(sorted(counts.items())),
    }
    # The marker records the summary without the absolute root, so identical arguments give identical
    # bytes wherever the dataset is written. Written last: it says the dataset is complete.
    _write_marker(work, {"complete": True, "version": _FORMAT_VERSION, "params": params, "summary": summary})
    return summary
