"""``protocol=map``: locate every frame on the map, score it in metres, smooth whole flights, draw it.

Writes into the output folder: ``metrics.json`` (through the runner), ``locations.csv``, ``map.png``
and, with ``retrieve.report``, ``report.html`` with the worst frames beside their top-K tiles (cropped
from the map raster). The query entry's positions (``positions.h5``) give the truth, the flights and
their times; the gallery entry's give each tile's centre and footprint. Aligned entries read their
parents' positions.
"""

from __future__ import annotations

import html
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from cvgl.cache.manifest import read_manifest
from cvgl.cache.positions import entry_positions
from cvgl.cache.store import CacheStore, Entry
from cvgl.configs.schema import Config
from cvgl.core.atomic import write_text_atomic
from cvgl.core.errors import UserError
from cvgl.datasets.maps import MapGeo, open_map
from cvgl.retrieve.footprints import contains, tile_radius_m
from cvgl.retrieve.locate import map_metrics, outside_warning, write_locations
from cvgl.retrieve.metrics import topk_lists
from cvgl.retrieve.sequences import smooth_flights

_SEQ_KEYS = ("dist_m_mean", "dist_m_median")


def map_files(store: CacheStore, entry: Entry, cfg: Config) -> list[MapGeo]:
    """The maps a gallery entry was tiled from, opened (headers only): its manifest's ``extra.maps``
    (or its parents'; each a path or ``{"path", "name", "corners"}``), else ``dataset.maps``. Maps that
    are gone or unreadable are left out (the picture then lacks them)."""
    manifest = entry.manifest
    found: list[Any] = []
    for _ in range(8):
        maps = manifest.extra.get("maps")
        if maps:
            found = list(maps)
            break
        if not manifest.parents:
            break
        try:
            manifest = read_manifest(store.entry_dir(manifest.parents[0]))
        except (OSError, ValueError, KeyError, TypeError):
            break
        if manifest is None:
            break
    if not found and cfg.dataset.layout == "uav_visloc" and cfg.dataset.root:
        found = _visloc_maps(Path(cfg.dataset.root), cfg.dataset.regions)
    if not found:
        found = list(getattr(cfg.dataset, "maps", None) or [])
    out = []
    for m in found:
        info = m if isinstance(m, dict) else {"path": m}
        p = Path(str(info.get("path") or info.get("file") or "")).expanduser()
        if not p.is_file():
            continue
        try:
            out.append(open_map(p, str(info.get("name") or p.stem), info.get("corners")))
        except UserError:
            continue
    return out


def _visloc_maps(root: Path, regions: list[str]) -> list[dict[str, Any]]:
    """A UAV-VisLoc folder's maps with their corners from the root's CSV (none when it cannot be read)."""
    from cvgl.datasets.uav_visloc import list_regions, read_corners, region_maps

    try:
        corners = read_corners(root)
        return [
            {"path": str(p), "name": p.stem, "corners": corners.get(p.stem.lower())}
            for r in list_regions(root, regions)
            for p in region_maps(root, r)
        ]
    except UserError:
        return []


def run_map_protocol(
    cfg: Config,
    store: CacheStore,
    qe: Entry,
    ge: Entry,
    q_desc: np.ndarray,
    q_names: list[str],
    gallery_chunks: Any,
    out_dir: Path,
    *,
    device: str,
) -> dict[str, Any]:
    """Metrics of ``protocol=map`` (percent and metres) and the files beside them; see the module docstring."""
    rc = cfg.retrieve
    lc = rc.locate
    g_pos = entry_positions(store, ge)
    if g_pos is None or not np.isfinite(g_pos.footprint).all(axis=(1, 2)).any():
        raise UserError(
            f"gallery {ge.label} holds no tile footprints (positions.h5); protocol=map needs a gallery of map "
            "tiles: extract it with dataset.layout=map or dataset.layout=uav_visloc"
        )
    q_pos = entry_positions(store, qe)
    n_q = len(q_names)
    if q_pos is None:
        true_lat = true_lon = np.full(n_q, np.nan)
        sequence, times = [""] * n_q, np.full(n_q, np.nan)
    else:
        true_lat, true_lon = q_pos.lat, q_pos.lon
        sequence, times = q_pos.sequence, q_pos.time
    ks = tuple(int(k) for k in rc.ks)
    need = max(max(ks), lc.k, rc.topk or 10)
    topk = min(need, ge.count)
    if lc.k > ge.count:
        raise UserError(
            f"gallery {ge.label} has {ge.count} tiles but retrieve.locate.k={lc.k}; set retrieve.locate.k to at "
            f"most {ge.count}"
        )
    if lc.sequence == "hmm":  # before the expensive pass: flights without times need frame_interval_s
        from cvgl.retrieve.sequences import step_seconds

        for rows in _flight_rows(sequence, times, q_names):
            step_seconds(times[rows], getattr(cfg.dataset, "frame_interval_s", None), sequence[rows[0]])
    res = topk_lists(q_desc, gallery_chunks, topk=topk, device=device)
    common = dict(ks=ks, ma_metres=rc.ma_metres, sdm_scale=rc.sdm_scale)
    metrics, ev = map_metrics(
        res.topk, res.topk_scores, g_pos.lat, g_pos.lon, g_pos.footprint, true_lat, true_lon,
        method=lc.method, k=lc.k, temperature=lc.temperature, **common,
    )
    metrics = {"protocol": "map", "n_queries": n_q, "n_gallery": int(ge.count), **metrics}
    metrics["locate"] = {"method": lc.method, "k": lc.k, "temperature": lc.temperature, "sequence": lc.sequence}
    warn = outside_warning(ev.n_outside, metrics["n_with_truth"])
    if warn:
        warnings.warn(warn, stacklevel=2)
    seq = None
    if lc.sequence == "hmm":
        radius = tile_radius_m(g_pos.footprint, g_pos.lat, g_pos.lon)
        s_lat, s_lon, _ = smooth_flights(
            res.topk, res.topk_scores, g_pos.lat, g_pos.lon, radius, sequence, times, q_names,
            k=lc.k, max_speed=lc.max_speed_mps, temperature=lc.temperature,
            frame_interval_s=getattr(cfg.dataset, "frame_interval_s", None),
        )
        s_metrics, s_ev = map_metrics(
            res.topk, res.topk_scores, g_pos.lat, g_pos.lon, g_pos.footprint, true_lat, true_lon,
            est=(s_lat, s_lon), **common,
        )
        for key, v in s_metrics.items():
            if key in _SEQ_KEYS or key.startswith("MA@"):
                metrics[f"seq.{key}"] = v
        metrics["locate"]["max_speed_mps"] = lc.max_speed_mps
        seq = (s_lat, s_lon, s_ev.error_m)
    g_names = ge.names()
    write_locations(
        out_dir / "locations.csv", q_names, ev.est_lat, ev.est_lon, res.topk_scores[:, 0], ev.error_m,
        res.topk, g_names, seq=seq,
    )
    maps = map_files(store, ge, cfg)
    from cvgl.retrieve.map_plot import write_map_png

    write_map_png(
        out_dir / "map.png", maps, true_lat, true_lon, ev.est_lat, ev.est_lon, ev.error_m,
        flights=_flight_rows(sequence, times, q_names), seq=None if seq is None else (seq[0], seq[1]),
        title=f"{qe.label} -> {ge.label}: {lc.method}" + (" + hmm" if seq else ""),
    )
    metrics["files"] = {"locations": "locations.csv", "map": "map.png"}
    if rc.report:
        write_map_report(out_dir, metrics, q_names, qe, ge, store, g_pos, maps, res.topk, res.topk_scores,
                         ev.error_m, true_lat, true_lon, n_frames=rc.report_queries, thumb=rc.thumb_size)
        metrics["files"]["report"] = "report.html"
    return metrics


def _flight_rows(sequence: list[str], times: np.ndarray, names: list[str]) -> list[np.ndarray]:
    from cvgl.retrieve.sequences import flight_order

    return flight_order(sequence, times, names)


def write_map_report(
    out_dir: Path,
    metrics: dict[str, Any],
    q_names: list[str],
    qe: Entry,
    ge: Entry,
    store: CacheStore,
    g_pos: Any,
    maps: list[MapGeo],
    topk: np.ndarray,
    scores: np.ndarray,
    error_m: np.ndarray,
    true_lat: np.ndarray,
    true_lon: np.ndarray,
    *,
    n_frames: int,
    thumb: int,
) -> Path:
    """``report.html``: the metrics, map.png, and the worst frames (largest error) beside their top-K tiles."""
    from cvgl.retrieve.image_roots import image_root
    from cvgl.retrieve.map_plot import crop_tile
    from cvgl.retrieve.reports import _CSS, _thumb

    q_root = image_root(store, qe.manifest)
    tiles_dir = out_dir / "tiles"
    err = np.where(np.isfinite(error_m), error_m, -1.0)
    worst = np.argsort(-err, kind="stable")[: max(0, n_frames)]
    keys = [k for k in metrics if k.startswith(("R@", "MA@", "SDM@", "dist_m"))]
    smoothed = any(k.startswith("seq.") for k in metrics)

    def cell(v: Any) -> str:
        return f"<td>{v:.2f}</td>" if isinstance(v, (int, float)) else "<td>–</td>"

    head = "<tr><th></th><th>per frame</th>" + ("<th>flight (hmm)</th>" if smoothed else "") + "</tr>"
    table = head + "".join(
        f"<tr><th>{html.escape(k)}</th>{cell(metrics[k])}" + (cell(metrics.get(f"seq.{k}")) if smoothed else "") + "</tr>"
        for k in keys
    )
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(qe.label)} on {html.escape(ge.label)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(qe.label)} located on {html.escape(ge.label)} (protocol map)</h1>",
        f"<p>{metrics['n_queries']} frames, {metrics['n_gallery']} tiles; {metrics['n_evaluated']} frames with a "
        f"true position inside the maps. Distances in metres.</p>",
        f'<table class="m">{table}</table>',
        '<p><img src="map.png" alt="map with tracks" style="max-width:100%;width:760px"></p>',
        f"<h2>{worst.size} frames, largest error first</h2><p>Blue: the frame. Green border: a tile whose "
        "footprint contains the frame's true position; red: one that does not.</p>",
    ]
    for i in worst:
        src = None if q_root is None else _thumb(q_root / q_names[i], out_dir, thumb)
        e = "no truth" if err[i] < 0 else f"error {error_m[i]:.1f} m"
        cap = f'<div class="cap">{html.escape(q_names[i])}<br>{e}</div>'
        img = f'<img src="{src}" alt="{html.escape(q_names[i])}">' if src else f'<div class="noimg" style="width:{thumb}px">{html.escape(q_names[i])}</div>'
        row = [f'<div class="tile query">{img}{cap}</div>']
        for j, (g, s) in enumerate(zip(topk[i], scores[i])):
            if g < 0:
                continue
            name = f"tile_{int(g)}.jpg"
            path = tiles_dir / name
            if not path.exists():
                crop = crop_tile(maps, g_pos.footprint[g], thumb)
                if crop is not None:
                    tiles_dir.mkdir(parents=True, exist_ok=True)
                    crop.save(path, format="JPEG", quality=85)
            ok = bool(contains(g_pos.footprint[g : g + 1], true_lat[i : i + 1], true_lon[i : i + 1])[0])
            cls = "ok" if ok else "bad"
            gcap = f'<div class="cap">#{j + 1} {html.escape(g_pos.names[g])}<br>score {float(s):.3f}</div>'
            gimg = f'<img src="tiles/{name}">' if path.exists() else f'<div class="noimg" style="width:{thumb}px">{html.escape(g_pos.names[g])}</div>'
            row.append(f'<div class="tile {cls}">{gimg}{gcap}</div>')
        parts.append(f'<div class="row">{"".join(row)}</div>')
    parts.append("</body></html>\n")
    out = out_dir / "report.html"
    write_text_atomic(out, "\n".join(parts))
    return out

