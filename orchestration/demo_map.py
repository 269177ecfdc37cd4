"""``pipeline demo map``: a drone flight located on a synthetic georeferenced map, in metres.

The data come from :mod:`datasets.synthetic_map` (a ~2 km² UTM GeoTIFF built from the synthetic world
generator, and a flight of 100 rendered drone frames with known positions and times), generated once
under the cache root. The map is tiled as a gallery (``dataset.layout=map``), the frames are the
queries, and each method runs through the real stages (extraction, alignment, ``protocol=map``
retrieval with ``retrieve.locate.sequence=hmm``), each in a run folder of its own below the demo's:
raw descriptors (``identity``) and ISMS, an unsupervised alignment that trains on the map's tiles and
the flight's frames without their positions. Every entry is keyed by content, so a second demo reuses
the data, the descriptors and the alignments.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cvgl.cache.store import CacheStore
from cvgl.core.keys import content_key

# The synthetic data: a 1.4 km × 1.4 km map at 1 m/px (1.96 km²), 100 frames 20 m apart (10 m/s, 2 s).
DATA = dict(seed=0, blocks=5, block_px=280, mpp=1.0, n_frames=100, frame_px=128, speed_mps=10.0, interval_s=2.0)
# Tiles of 128 m (about a frame's ground footprint) every 64 m, fed to the backbone at 128 px.
TILES = ("dataset.tiles.size_m=128", "dataset.tiles.stride_m=64", "dataset.tiles.px=128")
METHODS = ("identity", "isms")
LABELS = {"identity": "raw", "isms": "ISMS"}


@dataclass
class MapDemoRow:
    """One method's result: per-frame and smoothed metrics of one protocol=map run."""

    method: str
    metrics: dict
    run_dir: Path
    reused: bool  # the aligned entries came from the cache (nothing trained)


def demo_data(store: CacheStore, seed: int = 0) -> dict:
    """Generate (or reuse) the demo's map and flight under ``<cache>/datasets/``; returns its summary."""
    from cvgl.datasets.synthetic_map import make_synthetic_map

    params = {**DATA, "seed": seed}
    root = store.root / "datasets" / f"synthetic-map-{content_key(params)[:16]}"
    return make_synthetic_map(root, **params)


def map_overrides(data: dict) -> list[str]:
    """The config overrides that point a run at the demo's map and flight."""
    return [
        "dataset.layout=map",
        f"dataset.maps=[{data['map']}]",
        f"dataset.root={data['frames']}",
        f"dataset.query_positions={data['positions']}",
        *TILES,
        "protocol=map",
        "retrieve.locate.sequence=hmm",
        "retrieve.locate.k=10",
        "retrieve.locate.max_speed_mps=10",  # the flight's true speed
        "retrieve.report_queries=12",
        "extract.alias=demo_map",
        "name=demo_map",
    ]


def run_map_demo(
    store: CacheStore,
    out: Path,
    overrides: Sequence[str],
    *,
    methods: Sequence[str] = METHODS,
    log: Callable[[str], None] | None = None,
    progress=None,  # noqa: ANN001 - the command line's reporter (extraction progress), or None
) -> list[MapDemoRow]:
    """Generate the data, extract once, then align and locate with each method in ``out/<method>/``."""
    from cvgl.align.stage import run_alignment
    from cvgl.configs.schema import load_config
    from cvgl.core.run_folder import RunFolder
    from cvgl.extract.runner import run_extraction
    from cvgl.retrieve.runner import run_retrieval

    base = load_config("demo", list(overrides))
    data = demo_data(store, base.seed)
    if log:
        log(
            f"synthetic map: {data['map_m']:.0f} m × {data['map_m']:.0f} m ({data['area_km2']} km², {data['crs']}), "
            f"flight of {data['n_frames']} frames over {data['flight_m']:.0f} m; data in {data['root']}"
        )
    common = [*map_overrides(data), *overrides]
    rows = []
    for method in methods:
        cfg = load_config("demo", [*common, f"align.method={method}", f"out={out / method}"])
        run = RunFolder(cfg, "run", cache_root=store.root)
        try:
            entries = run_extraction(cfg, store, progress=progress)
            run.record_keys({e.alias: e.key for e in entries})
            t0 = time.perf_counter()
            aligned = run_alignment(cfg, store, run)
            align_s = time.perf_counter() - t0
            metrics = run_retrieval(cfg, store, run)
        except BaseException as e:
            run.fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
            raise
        reused = all(a.reused for a in aligned)
        run.record(timings={"align_s": align_s}, align_reused=bool(aligned) and reused)
        run.finish()
        rows.append(MapDemoRow(method, metrics, run.path, reused))
        if log:
            what = "reused" if reused or not aligned else f"trained in {align_s:.1f} s"
            log(f"{LABELS.get(method, method)}: alignment {what}; map.png in {run.path}")
    return rows


TABLE_COLUMNS = ("R@1", "R@5", "R@10", "median m", "mean m", "MA@50m", "MA@100m")


def table_rows(rows: Sequence[MapDemoRow]) -> list[tuple[str, list[str]]]:
    """(label, cells) per method and localization (per frame, then the flight smoothed by Viterbi)."""
    out = []
    for r in rows:
        m = r.metrics
        name = LABELS.get(r.method, r.method)
        for label, prefix in ((f"{name}, per frame", ""), (f"{name}, flight (hmm)", "seq.")):
            cells = []
            for c in TABLE_COLUMNS:
                key = {"median m": "dist_m_median", "mean m": "dist_m_mean"}.get(c, c)
                v = m.get(prefix + key, m.get(key) if c.startswith("R@") else None)
                cells.append(f"{v:.1f}" if isinstance(v, (int, float)) else "–")
            out.append((label, cells))
    return out


MAP_DEMO_NOTE = (
    "The backbone in this demo is a small, randomly initialised DINOv3 (no weights can be downloaded) and the "
    "map and flight are synthetic: the numbers show that the whole path works (a georeferenced map tiled as a "
    "gallery, frames located in metres, the flight smoothed, everything reused on a second run), not what a "
    "trained model reaches."
)


def demo_map(overrides: list[str], *, say: Callable[[str], None], out, run_stage: Callable) -> None:  # noqa: ANN001
    """``pipeline demo map``: run the demo in a run folder (``run_stage``: the command line's), print the table.

    ``out``: a rich Console; ``run_stage(stage, cfg, fn)`` runs ``fn(cfg, store, run, reporter)`` in a run
    folder with progress, as the command line's other demos do.
    """
    from cvgl.configs.schema import load_config, split_override
    from rich.table import Table

    given = load_config("demo", overrides)
    folder = Path(given.out or Path("runs") / f"demo-map-{time.strftime('%Y%m%d-%H%M%S')}").absolute()
    rest = [a for a in overrides if split_override(a)[0] != "out"]
    cfg = load_config("demo", [*rest, f"out={folder}", "name=demo_map"])

    def go(cfg, store, run, reporter):  # noqa: ANN001, ANN202
        rows = run_map_demo(store, folder, rest, log=say, progress=reporter)
        run.record(demo_map={r.method: r.metrics for r in rows}, reused_all=all(r.reused for r in rows))
        return rows

    rows = run_stage("demo", cfg, go)
    table = Table(title="drone flight on a synthetic map: position error in metres (protocol=map)")
    for c in ("method", *TABLE_COLUMNS):
        table.add_column(c, justify="left" if c == "method" else "right")
    for label, cells in table_rows(rows):
        table.add_row(label, *cells)
    out.print(table)
    out.print(MAP_DEMO_NOTE)
