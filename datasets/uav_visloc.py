"""UAV-VisLoc as it ships: region folders of drone frames with GPS, one large satellite map per region.

Layout (names relative to ``dataset.root``)::

    satellite_ coordinates_range.csv    (also without the space) mapname,LT_lat_map,LT_lon_map,
                                        RB_lat_map,RB_lon_map,region: each map's WGS84 corners
    01/satellite01.tif                  the region's map (region 09: satellite09_<r>-<c>.tif pieces,
                                        1-based row and column)
    01/01.csv                           num,filename,date,lat,lon,height,Omega,Kappa,Phi1,Phi2
                                        (region 07: the first six columns only)
    01/drone/01_0001.JPG …

A map's georeference is the TIFF's own when it carries one, else its corners from the range CSV
(pixel ↔ lat/lon linear between the left-top and right-bottom corners). A frame's position is its
CSV row's lat/lon, ``height`` its height, ``Phi1`` its yaw, ``date`` its time when that parses (else
the frames of the region are in name order). Each region is one sequence, named after its folder.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

from cvgl.core.errors import UserError
from cvgl.datasets.map_queries import parse_coordinate, parse_time, photo_positions, _read_rows
from cvgl.datasets.positions import Positions

RANGE_CSV_NAMES = ("satellite_ coordinates_range.csv", "satellite_coordinates_range.csv")
_PIECE = re.compile(r"satellite(\d+)_(\d+)-(\d+)\.tiff?$", re.IGNORECASE)


def region_name(value: object) -> str:
    """``01`` for 1, "1" or "01" (YAML reads ``[01, 02]`` as integers); other names as given."""
    s = str(value).strip()
    return f"{int(s):02d}" if s.isdigit() else s


def read_corners(root: Path) -> dict[str, tuple[float, float, float, float]]:
    """``{map file stem (lower case): (LT lat, LT lon, RB lat, RB lon)}`` from the root's range CSV;
    empty when the root has none."""
    path = next((root / n for n in RANGE_CSV_NAMES if (root / n).is_file()), None)
    if path is None:
        return {}
    header, rows = _read_rows(path)
    need = ("mapname", "lt_lat_map", "lt_lon_map", "rb_lat_map", "rb_lon_map")
    missing = [c for c in need if c not in header]
    if missing:
        raise UserError(
            f"coordinate-range file {path} lacks column(s) {', '.join(missing)}; expected the UAV-VisLoc header "
            "mapname,LT_lat_map,LT_lon_map,RB_lat_map,RB_lon_map,region"
        )
    ix = [header.index(c) for c in need]
    out = {}
    for n, row in enumerate(rows, start=2):
        cells = row + [""] * (len(header) - len(row))
        where = f"{path} line {n}"
        name = Path(cells[ix[0]].strip()).stem.lower()
        vals = (
            parse_coordinate(cells[ix[1]], "lat", where),
            parse_coordinate(cells[ix[2]], "lon", where),
            parse_coordinate(cells[ix[3]], "lat", where),
            parse_coordinate(cells[ix[4]], "lon", where),
        )
        if not all(math.isfinite(v) for v in vals):
            raise UserError(f"{where}: map {name} has an empty corner; fill in all four corner values")
        out[name] = vals
    return out


def region_maps(root: Path, region: str) -> list[Path]:
    """The map files of a region: ``satelliteNN.tif``, else its pieces in (row, column) order."""
    folder = root / region
    whole = [folder / f"satellite{region}{ext}" for ext in (".tif", ".TIF", ".tiff")]
    found = next((p for p in whole if p.is_file()), None)
    if found is not None:
        return [found]
    pieces = []
    for p in folder.iterdir():
        m = _PIECE.fullmatch(p.name)
        if m and p.is_file() and region_name(m.group(1)) == region:
            pieces.append((int(m.group(2)), int(m.group(3)), p))
    if not pieces:
        raise UserError(
            f"region {region} has no map: expected {folder / f'satellite{region}.tif'} or its pieces "
            f"satellite{region}_<r>-<c>.tif; check dataset.root and dataset.regions"
        )
    return [p for _, _, p in sorted(pieces)]


def list_regions(root: Path, regions: Sequence[object]) -> list[str]:
    """The selected regions (``dataset.regions``), or every numbered region folder of the root."""
    if regions:
        out = [region_name(r) for r in regions]
        for r in out:
            if not (root / r).is_dir():
                have = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.isdigit())
                raise UserError(
                    f"region folder {root / r} does not exist (found: {', '.join(have) or 'none'}); fix "
                    "dataset.regions"
                )
        if len(set(out)) != len(out):
            raise UserError(f"dataset.regions lists a region twice ({list(regions)}); list each once")
        return out
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.isdigit())
    if not found:
        raise UserError(
            f"no region folders (01 … 11) under {root}; set dataset.root to the UAV-VisLoc folder"
        )
    return found


def _optional_number(cells: list[str], col: dict[str, int], key: str) -> float:
    """A frame list's numeric cell, NaN when the column is absent or the cell is not a number."""
    if key not in col:
        return math.nan
    try:
        v = float(cells[col[key]].strip())
    except ValueError:
        return math.nan
    return v if math.isfinite(v) else math.nan


def region_frames(root: Path, region: str) -> Positions:
    """The drone frames of one region with their CSV positions (names ``NN/drone/<file>``)."""
    drone = root / region / "drone"
    if not drone.is_dir():
        raise UserError(f"region {region} has no drone folder {drone}; check dataset.root")
    from cvgl.datasets.map_queries import IMAGE_SUFFIXES

    files = sorted(p.name for p in drone.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"region {region}'s drone folder {drone} holds no frames; check dataset.root")
    names = [f"{region}/drone/{f}" for f in files]
    csv_path = root / region / f"{region}.csv"
    if not csv_path.is_file():
        raise UserError(f"region {region} has no frame list {csv_path}; it holds the frames' positions")
    header, rows = _read_rows(csv_path)
    for need in ("filename", "lat", "lon"):
        if need not in header:
            raise UserError(
                f"frame list {csv_path} lacks the column {need}; expected the UAV-VisLoc header "
                "num,filename,date,lat,lon,height[,Omega,Kappa,Phi1,Phi2]"
            )
    col = {c: header.index(c) for c in ("filename", "lat", "lon", "date", "height", "phi1") if c in header}
    by_file = {f: n for f, n in zip(files, names)}
    known: dict[str, tuple[float, float, float, float, float]] = {}
    unmatched = []
    for n, row in enumerate(rows, start=2):
        cells = row + [""] * (len(header) - len(row))
        where = f"{csv_path} line {n}"
        f = Path(cells[col["filename"]].strip().replace("\\", "/")).name
        name = by_file.get(f)
        if name is None:
            unmatched.append(f)
            continue
        if name in known:
            raise UserError(f"{where}: frame {f} has a second row; keep one row per frame")

        t = parse_time(cells[col["date"]]) if "date" in col else math.nan
        known[name] = (
            parse_coordinate(cells[col["lat"]], "lat", where),
            parse_coordinate(cells[col["lon"]], "lon", where),
            math.nan if t is None else t,
            _optional_number(cells, col, "height"),
            _optional_number(cells, col, "phi1"),
        )
    if unmatched:
        shown = ", ".join(unmatched[:3]) + (" …" if len(unmatched) > 3 else "")
        raise UserError(
            f"frame list {csv_path} names {len(unmatched)} frame(s) not in {drone} ({shown}); restore the frames "
            "or remove those rows"
        )
    return photo_positions(root, names, known, [region] * len(names), source=str(csv_path))


__all__ = ["RANGE_CSV_NAMES", "list_regions", "read_corners", "region_frames", "region_maps", "region_name"]
