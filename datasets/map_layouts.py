"""The map layouts' image lists: ``map`` (GeoTIFFs + a folder of photos) and ``uav_visloc``.

Both give the views ``query_drone`` (the photos, with their positions and flights) and
``gallery_satellite`` (the maps' tiles, read through a :class:`~cvgl.datasets.maps.TileSource`).
Labels: gallery tile ``k`` has label ``k``; a photo's label is the first-scale tile that contains its
position with the nearest centre (-1 when its position is unknown or on no tile), so the label-based
protocols and the supervised alignment methods see the photo's own tile as its match.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

import numpy as np
from cvgl.core.errors import UserError
from cvgl.core.keys import DigestMemo
from cvgl.datasets.layouts import ImageList
from cvgl.datasets.map_queries import flight_order, folder_queries
from cvgl.datasets.maps import MapTiles, open_map, tile_maps, tile_of_positions, tiling_params
from cvgl.datasets.positions import Positions

MAP_VIEWS = ("query_drone", "gallery_satellite")


class MapTiling(Protocol):
    """How the maps are cut into gallery tiles (``dataset.tiles``)."""

    size_m: float | None
    stride_m: float | None
    scales: list[float]
    px: int


class MapDataset(Protocol):
    """The dataset settings a map layout reads: the ``dataset`` section of a config has them."""

    layout: str
    root: str | None
    maps: list[str]
    tiles: MapTiling
    query_positions: str | None
    frame_interval_s: float | None
    regions: list[str]


def _map_names(paths: list[Path]) -> list[str]:
    """Each map's part of its tiles' names: the file stem, prefixed by its position when stems repeat."""
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{k:02d}-{s}" for k, s in enumerate(stems)]


def _gallery(
    ds: MapDataset, layout: str, root: Path | None, memo: DigestMemo | None, masks_dir: Path | None
) -> tuple[MapTiles, Path]:
    params = tiling_params(ds.tiles.size_m, ds.tiles.stride_m, ds.tiles.scales, ds.tiles.px)
    if layout == "map":
        if not ds.maps:
            raise UserError("dataset.layout=map needs the maps to tile: dataset.maps=[PATH.tif, …]")
        paths = [Path(p).expanduser() for p in ds.maps]
        if len({p.resolve() for p in paths}) != len(paths):
            raise UserError(f"dataset.maps lists a map twice ({ds.maps}); list each once")
        geos = [open_map(p, n) for p, n in zip(paths, _map_names(paths))]
        return tile_maps(geos, params, memo, masks_dir), paths[0].parent
    from cvgl.datasets.uav_visloc import list_regions, read_corners, region_maps

    assert root is not None
    corners = read_corners(root)
    geos = []
    for region in list_regions(root, ds.regions):
        for p in region_maps(root, region):
            geos.append(open_map(p, p.stem, corners.get(p.stem.lower())))
    return tile_maps(geos, params, memo, masks_dir), root


def _queries(ds: MapDataset, layout: str, root: Path) -> Positions:
    if layout == "map":
        return folder_queries(root, ds.query_positions, [Path(p).expanduser() for p in ds.maps])
    from cvgl.datasets.uav_visloc import list_regions, region_frames

    parts = [region_frames(root, r) for r in list_regions(root, ds.regions)]
    pos = Positions.concat(parts)
    return pos.take(flight_order(pos.names, pos.sequence, pos.time))


def _positions_digest(p: Positions, labels: np.ndarray) -> str:
    """What the query entry's key covers beyond its files: positions, times, flights and labels."""
    h = hashlib.sha256()
    for arr in (p.lat, p.lon, p.time, p.height, p.yaw):
        h.update(np.ascontiguousarray(arr, dtype="<f8").tobytes())
    h.update("\0".join(p.sequence).encode("utf-8", "surrogateescape"))
    h.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    return h.hexdigest()


def map_image_lists(
    ds: MapDataset, views: list[str], memo: DigestMemo | None = None, masks_dir: Path | None = None
) -> list[ImageList]:
    """The image lists of ``views`` for a map layout (``ds.layout`` is ``map`` or ``uav_visloc``).

    ``memo`` memoizes the maps' digests and ``masks_dir`` the nodata check (both in the cache)."""
    layout = ds.layout
    bad = [v for v in views if v not in MAP_VIEWS]
    if bad:
        raise UserError(
            f"dataset.layout={layout} has the views query_drone and gallery_satellite, not {', '.join(bad)}; "
            "use dataset.mode=D2S"
        )
    if ds.frame_interval_s is not None and not (isinstance(ds.frame_interval_s, (int, float)) and ds.frame_interval_s > 0):
        raise UserError(
            f"dataset.frame_interval_s={ds.frame_interval_s!r} must be a positive number of seconds, e.g. 1.0"
        )
    if layout == "uav_visloc" and (ds.maps or ds.query_positions):
        raise UserError(
            "dataset.maps and dataset.query_positions are for dataset.layout=map; UAV-VisLoc brings its own maps "
            "and positions (leave them unset)"
        )
    if not ds.root:
        hint = "the folder of drone photos" if layout == "map" else "the UAV-VisLoc folder"
        raise UserError(f"dataset.root is not set for layout {layout}; set it to {hint} (root=PATH)")
    root = Path(ds.root).expanduser()
    if not root.is_dir():
        raise UserError(f"dataset root {root} is not a folder; set dataset.root (root=PATH)")
    tiles, g_root = _gallery(ds, layout, root, memo, masks_dir)
    out = []
    for v in views:
        if v == "gallery_satellite":
            out.append(
                ImageList(
                    root=g_root,
                    names=tuple(tiles.names),
                    labels=np.arange(len(tiles.names), dtype=np.int64),
                    view=v,
                    key_fields=tiles.key_fields,
                    positions=tiles.positions,
                    tiles=tiles.source,
                )
            )
        else:
            q = _queries(ds, layout, root)
            labels = tile_of_positions(tiles, q.lat, q.lon)
            out.append(
                ImageList(
                    root=root,
                    names=tuple(q.names),
                    labels=labels,
                    view=v,
                    key_fields={"positions": _positions_digest(q, labels)},
                    positions=q,
                )
            )
    return out


__all__ = ["MAP_VIEWS", "map_image_lists"]
