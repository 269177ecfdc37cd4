"""Query photos located on maps: a folder of frames, their positions (CSV or EXIF GPS), their flights.

Frames of one folder are one sequence (a flight), named after the folder; frames directly in the
query root take the root's name. Within a sequence, rows are in flight order: by time when every
frame of it has one, else by name. Positions come from a CSV (``dataset.query_positions``, columns
``name,lat,lon`` and optionally ``time,height,yaw``) or, without one, from each photo's EXIF GPS.

Rules for the CSV:

* ``name`` is the photo's path relative to the query root, or its bare file name when that is
  unique among the photos;
* a name that matches no photo, a repeated name, or a lat/lon that is not a number or out of range
  (|lat| > 90, |lon| > 180) is refused; an empty lat/lon cell means "position unknown";
* photos without a row are kept, with an unknown position, and named in one warning: they are
  still located, they add no metrics;
* ``time`` is seconds (any number), or a date-time (ISO 8601, or EXIF's ``YYYY:MM:DD HH:MM:SS``;
  without a zone it is taken as UTC).
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cvgl.core.errors import UserError
from cvgl.datasets.positions import Positions

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


def list_photos(root: Path) -> list[str]:
    """Photo paths relative to ``root`` (POSIX, sorted), in ``root`` and every visible sub-folder."""
    out = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        rel = Path(d).relative_to(root)
        for f in sorted(files):
            if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES:
                out.append((rel / f).as_posix())
    return sorted(out)


_DATETIME_FORMATS = ("%Y:%m:%d %H:%M:%S", "%Y/%m/%d %H:%M:%S", "%Y/%m/%d %H:%M", "%Y-%m-%d %H:%M")


def parse_time(text: str) -> float | None:
    """Seconds from a number or a date-time string; None when the text is neither. Empty → NaN."""
    s = text.strip()
    if not s:
        return math.nan
    try:
        v = float(s)
        return v if math.isfinite(v) else None
    except ValueError:
        pass
    t = None
    try:
        t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        for fmt in _DATETIME_FORMATS:
            base, _, frac = s.partition(".")
            try:
                t = dt.datetime.strptime(base, fmt)
            except ValueError:
                continue
            if frac.isdigit():
                t = t + dt.timedelta(seconds=float("0." + frac))
            break
    if t is None:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.timestamp()


def parse_coordinate(text: str, kind: str, where: str) -> float:
    """A latitude (``kind='lat'``) or longitude in degrees; empty → NaN; anything else invalid refused."""
    s = text.strip()
    if not s:
        return math.nan
    try:
        v = float(s)
    except ValueError:
        v = math.nan
        bad = True
    else:
        bad = not math.isfinite(v)
    limit = 90.0 if kind == "lat" else 180.0
    if bad or abs(v) > limit:
        raise UserError(
            f"{where}: {kind} {s!r} is not a {'latitude' if kind == 'lat' else 'longitude'} in degrees "
            f"(a number within ±{limit:g}); fix that cell"
        )
    return v


def _number(text: str, what: str, where: str) -> float:
    s = text.strip()
    if not s:
        return math.nan
    try:
        v = float(s)
    except ValueError:
        raise UserError(f"{where}: {what} {s!r} is not a number; fix that cell or leave it empty") from None
    return v if math.isfinite(v) else math.nan


def _read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header (lower-cased, stripped) and rows of a CSV; a BOM is dropped."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [r for r in csv.reader(fh) if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read positions file {path} ({e}); give a UTF-8 CSV") from None
    if not rows:
        raise UserError(f"positions file {path} is empty; give a header name,lat,lon and one row per photo")
    return [c.strip().lower() for c in rows[0]], rows[1:]


def read_positions_csv(path: Path, photos: Sequence[str]) -> dict[str, tuple[float, float, float, float, float]]:
    """``{photo: (lat, lon, time, height, yaw)}`` for the photos the CSV names (see the module rules)."""
    header, rows = _read_rows(path)
    missing = [c for c in ("name", "lat", "lon") if c not in header]
    if missing:
        raise UserError(
            f"positions file {path} lacks column(s) {', '.join(missing)} (header: {','.join(header)}); "
            "give a header name,lat,lon[,time,height,yaw]"
        )
    col = {c: header.index(c) for c in ("name", "lat", "lon", "time", "height", "yaw") if c in header}
    by_rel = set(photos)
    by_base: dict[str, list[str]] = {}
    for p in photos:
        by_base.setdefault(p.rsplit("/", 1)[-1], []).append(p)
    out: dict[str, tuple[float, float, float, float, float]] = {}
    unmatched: list[str] = []
    for n, row in enumerate(rows, start=2):
        where = f"{path} line {n}"
        cells = row + [""] * (len(header) - len(row))
        name = cells[col["name"]].strip().replace("\\", "/")
        while name.startswith("./"):
            name = name[2:]
        photo = name if name in by_rel else None
        if photo is None and len(by_base.get(name, [])) == 1:
            photo = by_base[name][0]
        if photo is None:
            unmatched.append(name)
            continue
        if photo in out:
            raise UserError(f"{where}: photo {photo} has a second row; keep one row per photo")
        lat = parse_coordinate(cells[col["lat"]], "lat", where)
        lon = parse_coordinate(cells[col["lon"]], "lon", where)
        t = math.nan
        if "time" in col:
            parsed = parse_time(cells[col["time"]])
            if parsed is None:
                raise UserError(
                    f"{where}: time {cells[col['time']].strip()!r} is neither seconds nor a date-time "
                    "(e.g. 2024-05-01T10:32:07); fix that cell or leave it empty"
                )
            t = parsed
        h = _number(cells[col["height"]], "height", where) if "height" in col else math.nan
        y = _number(cells[col["yaw"]], "yaw", where) if "yaw" in col else math.nan
        out[photo] = (lat, lon, t, h, y)
    if unmatched:
        shown = ", ".join(repr(u) for u in unmatched[:3]) + (" …" if len(unmatched) > 3 else "")
        raise UserError(
            f"positions file {path} names {len(unmatched)} photo(s) not found under the query folder ({shown}); "
            "fix the names (paths relative to the query folder, or bare file names) or remove those rows"
        )
    return out


# EXIF tags (Pillow's getexif): the GPS IFD and its fields, the Exif IFD's capture time.
_GPS_IFD, _EXIF_IFD = 0x8825, 0x8769
_GPS_LAT_REF, _GPS_LAT, _GPS_LON_REF, _GPS_LON, _GPS_ALT_REF, _GPS_ALT, _GPS_DIR = 1, 2, 3, 4, 5, 6, 17
_DATETIME_ORIGINAL, _SUBSEC_ORIGINAL, _DATETIME = 36867, 37521, 306


def _dms(value) -> float:
    try:
        d, m, s = (float(v) for v in value)
    except (TypeError, ValueError, ZeroDivisionError):
        return math.nan
    return d + m / 60.0 + s / 3600.0


def exif_position(path: Path, name: str) -> tuple[float, float, float, float, float]:
    """(lat, lon, time, height, yaw) from a photo's EXIF; NaN for what it lacks."""
    from PIL import Image

    lat = lon = t = h = y = math.nan
    try:
        with Image.open(path) as im:
            exif = im.getexif()
            gps = exif.get_ifd(_GPS_IFD)
            sub = exif.get_ifd(_EXIF_IFD)
    except Exception:  # noqa: BLE001 - an unreadable photo is reported by extraction; here: no position
        return lat, lon, t, h, y
    if _GPS_LAT in gps and _GPS_LON in gps:
        lat, lon = _dms(gps[_GPS_LAT]), _dms(gps[_GPS_LON])
        if str(gps.get(_GPS_LAT_REF, "N")).strip().upper().startswith("S"):
            lat = -lat
        if str(gps.get(_GPS_LON_REF, "E")).strip().upper().startswith("W"):
            lon = -lon
        if not (math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180):
            raise UserError(
                f"photo {name} has EXIF GPS {lat}, {lon}, not a valid latitude/longitude; fix its EXIF or "
                "give positions in dataset.query_positions=CSV"
            )
    if _GPS_ALT in gps:
        try:
            h = float(gps[_GPS_ALT])
        except (TypeError, ValueError, ZeroDivisionError):
            h = math.nan
        if gps.get(_GPS_ALT_REF) in (1, b"\x01"):
            h = -h
    if _GPS_DIR in gps:
        try:
            y = float(gps[_GPS_DIR])
        except (TypeError, ValueError, ZeroDivisionError):
            y = math.nan
    stamp = sub.get(_DATETIME_ORIGINAL) or exif.get(_DATETIME)
    if isinstance(stamp, str):
        parsed = parse_time(stamp)
        if parsed is not None and math.isfinite(parsed):
            subsec = str(sub.get(_SUBSEC_ORIGINAL, "")).strip()
            t = parsed + (float("0." + subsec) if subsec.isdigit() else 0.0)
    return lat, lon, t, h, y


def sequence_of(name: str, root_name: str) -> str:
    """A photo's sequence: its folder relative to the query root; the root's own name for loose photos."""
    return name.rsplit("/", 1)[0] if "/" in name else root_name


def flight_order(names: Sequence[str], sequence: Sequence[str], time: np.ndarray) -> np.ndarray:
    """Row order: sequences by name; within one, by time when all its frames have one, else by name."""
    order: list[int] = []
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(sequence):
        groups.setdefault(s, []).append(i)
    for s in sorted(groups):
        idx = sorted(groups[s], key=lambda i: names[i])
        if all(np.isfinite(time[i]) for i in idx):
            idx = sorted(idx, key=lambda i: (time[i], names[i]))
        order.extend(idx)
    return np.asarray(order, dtype=np.int64)


def photo_positions(
    root: Path,
    photos: Sequence[str],
    known: dict[str, tuple[float, float, float, float, float]],
    sequences: Sequence[str],
    *,
    source: str,
) -> Positions:
    """Positions of ``photos`` in list order; photos absent from ``known`` get NaN, named in one warning."""
    n = len(photos)
    vals = np.full((n, 5), np.nan)
    absent = []
    for i, p in enumerate(photos):
        if p in known:
            vals[i] = known[p]
        else:
            absent.append(p)
    if absent:
        shown = ", ".join(absent[:3]) + (" …" if len(absent) > 3 else "")
        warnings.warn(
            f"{len(absent)} of {n} photos have no position in {source} ({shown}); they are located but add "
            "no metrics",
            UserWarning,
            stacklevel=2,
        )
    return Positions(
        names=list(photos),
        lat=vals[:, 0],
        lon=vals[:, 1],
        footprint=np.full((n, 4, 2), np.nan),
        time=vals[:, 2],
        height=vals[:, 3],
        yaw=vals[:, 4],
        sequence=list(sequences),
    )


def folder_queries(root: Path, positions_csv: str | None, exclude: Sequence[Path] = ()) -> Positions:
    """The query photos under ``root`` with their positions, in flight order (see the module docstring).

    ``exclude``: files that are not photos even if they lie under ``root`` (the maps, when a user keeps
    them beside the frames)."""
    skip = {Path(p).resolve() for p in exclude}
    photos = [p for p in list_photos(root) if (root / p).resolve() not in skip]
    if not photos:
        raise UserError(
            f"no photos (.jpg, .png, .tif, …) under the query folder {root}; set dataset.root to the folder of "
            "drone frames"
        )
    if positions_csv:
        csv_path = Path(positions_csv).expanduser()
        if not csv_path.is_file():
            raise UserError(f"positions file {csv_path} does not exist; fix dataset.query_positions=PATH")
        known = read_positions_csv(csv_path, photos)
        source = str(csv_path)
    else:
        known = {}
        for p in photos:
            pos = exif_position(root / p, p)
            if math.isfinite(pos[0]) or math.isfinite(pos[2]):
                known[p] = pos
        source = "their EXIF GPS (give dataset.query_positions=CSV)"
    seqs = [sequence_of(p, root.resolve().name) for p in photos]
    pos = photo_positions(root, photos, known, seqs, source=source)
    return pos.take(flight_order(pos.names, pos.sequence, pos.time))


__all__ = [
    "exif_position",
    "flight_order",
    "folder_queries",
    "list_photos",
    "parse_coordinate",
    "parse_time",
    "photo_positions",
    "read_positions_csv",
]
