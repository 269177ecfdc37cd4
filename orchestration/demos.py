"""The demos: the whole pipeline on synthetic data the tool generates, on a CPU.

:func:`demo_geoalign` (``pipeline demo``) sweeps the alignment methods over drone→satellite
descriptors of a small random DINOv3, then runs them on synthetic descriptors with a known drone
distortion; :func:`demo_cvft` (``pipeline demo cvft``) compares CVFT with its baselines on synthetic
ground–aerial pairs. What they print is drawn through a :class:`DemoUI` the command line provides.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvgl.align.registry import check_config
from cvgl.align.stage import run_alignment
from cvgl.cache.naming import aligned_alias
from cvgl.configs.schema import load_config as _load_config
from cvgl.core.console import metric_cell, metrics_table
from cvgl.core.errors import UserError
from cvgl.datasets.synthetic_cvusa import make_synthetic_cvusa
from cvgl.extract.runner import run_extraction
from cvgl.orchestration.demo_world import WORLD_METHODS, run_descriptor_world
from cvgl.orchestration.sweep import finished, run_sweep
from cvgl.orchestration.sweep_spec import build_sweep
from cvgl.retrieve.runner import run_retrieval


@dataclass
class DemoUI:
    """How a demo talks and where it runs: messages, the stdout console, the cache, run folders."""

    say: Callable[[str], None]
    out: Any  # a rich Console
    store: Callable[[], Any]
    run_stage: Callable[..., Any]
    report_entries: Callable[[list], None]


def load_config(config: str, overrides: list[str]):
    cfg = _load_config(config, overrides)
    check_config(cfg)
    return cfg


# The demo's sweep: raw descriptors, then each alignment method (align.params in configs/demo.yaml).
DEMO_METHODS = ("identity", "isms", "geoalign", "fusion", "emcvgl")
DEMO_NOTE = (
    "The backbone in this demo is a small, randomly initialised DINOv3 (no weights can be downloaded), "
    "run on a synthetic dataset the tool generates: these numbers show that the pipeline works end to end "
    "(extraction cached once, every method trained and evaluated, everything reused on a second run), "
    "not what a trained model reaches, nor how the methods rank on real data."
)
def demo_geoalign(args: list[str], with_world: bool, ui: DemoUI) -> None:
    """Drone→satellite with a small random DINOv3: a sweep over raw, ISMS, GeoAlign stream 1, fusion and
    EM-CVGL, then the same methods on synthetic descriptors with a known drone distortion."""
    say, out = ui.say, ui.out

    from cvgl.configs.schema import split_override
    from rich.table import Table

    # One folder for the whole demo: its run.json at the top, the sweep's table, plot and points
    # below it, and the descriptor world's runs in world/.
    given = load_config("demo", args)
    folder = Path(given.out or Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}").absolute()
    overrides = [a for a in args if split_override(a)[0] != "out"] + [f"out={folder}"]
    cfg = load_config("demo", overrides)
    spec = build_sweep("demo", overrides, [f"align.method=[{','.join(DEMO_METHODS)}]"])

    def go(cfg, store, run, reporter):
        entries = run_extraction(cfg, store, progress=reporter)
        run.record_keys({e.alias: e.key for e in entries})
        if all(e.reused for e in entries):
            say(f"all {len(entries)} descriptor entries reused from the cache: the backbone was not run")
        else:
            ui.report_entries(entries)
        done_before = {p.index for p in spec.points if finished(p)}
        result = run_sweep(spec, store.root, progress=reporter, log=say)
        # A point trained nothing when it was already finished in this folder or its alignment was
        # found in the cache (identity trains nothing at all).
        trained = []
        for p in spec.points:
            info = json.loads((p.folder / "run.json").read_text()) if (p.folder / "run.json").is_file() else {}
            method = p.values["align.method"]
            if method != "identity" and p.index not in done_before and not info.get("align_reused"):
                trained.append(method)
        world = run_descriptor_world(store, folder / "world", WORLD_METHODS, seed=cfg.seed, log=say) if with_world else []
        trained += [f"world:{w.method}" for w in world if w.method != "identity" and not w.reused]
        if not trained:
            say("every alignment reused from the cache: nothing was retrained")
        run.record(
            demo={row["align.method"]: {k: row[k] for k in ("R@1", "R@5", "R@10", "R@1%", "AP")} for row in result.rows},
            world={w.method: w.metrics for w in world},
            reused_all=all(e.reused for e in entries),
            trained=trained,
            sweep=[str(f) for f in result.files],
        )
        return result, world

    result, world_rows = ui.run_stage("demo", cfg, go)
    layers = ", ".join(map(str, cfg.backbone.layers))
    last = cfg.backbone.layers[-1]
    labels = {
        "identity": f"raw (layer {last})",
        "isms": f"ISMS (layers {layers})",
        "geoalign": f"GeoAlign stream 1 (layer {last})",
        "fusion": "fusion: stream 1 ‖ ISMS",
        "emcvgl": f"EM-CVGL (layer {last})",
    }
    table = Table(title="1. random DINOv3 on synthetic images: drone → satellite (u1652 protocol)")
    for c in ("method", "R@1", "R@5", "R@10", "R@1%", "AP", "align s", "status"):
        table.add_column(c, justify="left" if c in ("method", "status") else "right")
    for row in result.rows:
        try:
            n_gallery = json.loads((spec.out / row["run"] / "metrics.json").read_text()).get("n_gallery")
        except (OSError, ValueError):
            n_gallery = None
        cells = [metric_cell(k, row[k], n_gallery) for k in ("R@1", "R@5", "R@10", "R@1%", "AP")]
        t = row["align_s"]
        table.add_row(labels[row["align.method"]], *cells, f"{t:.1f}" if isinstance(t, float) else "–", row["status"])
    out.print(table)
    wtable = Table(title="2. synthetic descriptors with a known drone distortion (align/synthetic.py)")
    for c in ("method", "R@1", "R@5", "R@10", "R@1%", "AP", "align s"):
        wtable.add_column(c, justify="left" if c == "method" else "right")
    for w in world_rows:
        name = labels[w.method].split(" (")[0]
        wtable.add_row(
            name, *(metric_cell(k, w.metrics.get(k), w.metrics.get("n_gallery")) for k in ("R@1", "R@5", "R@10", "R@1%", "AP")),
            "–" if w.method == "identity" else "reused" if w.reused else f"{w.train_s:.1f}",
        )
    if world_rows:
        out.print(wtable)
    out.print(DEMO_NOTE)
    say(f"sweep table, plot and reports: {spec.out / 'sweep.md'}, {spec.out / 'sweep.png'}, {spec.out / 'points'}")
    if result.failed:
        raise UserError(
            f"{result.failed} of {len(result.rows)} demo points failed (status and error in "
            f"{spec.out / 'sweep.csv'}); fix them and rerun the same command: finished points are reused"
        )


DEMO_CVFT_NOTE = (
    "The VGG16 in this demo is randomly initialised (no weights can be downloaded) and the ground–aerial pairs are "
    "synthetic (ground panoramas rendered from aerial tiles by a polar transform): the numbers compare CVFT with its "
    "baselines on a problem with a known spatial correspondence, not what CVFT reaches on CVUSA."
)


def demo_cvft(overrides: list[str], ui: DemoUI) -> None:
    """Ground→aerial with a random VGG16: CVFT against its baselines, both directions."""
    out = ui.out
    base = load_config("demo_cvft", overrides)
    store = ui.store()
    root = store.root / "datasets" / f"synthetic-cvusa-s{base.seed}"
    if not (root / "splits" / "val-19zl.csv").exists():
        make_synthetic_cvusa(
            root, n_pairs=192, train_pairs=128, aerial_size=128, ground_size=(56, 308), seed=base.seed
        )
    common = [*overrides, f"root={root}"]
    cfg = load_config("demo_cvft", common)

    def go(cfg, store, run, reporter):
        train_cfg = load_config(
            "demo_cvft", [*common, "dataset.split=train", "extract.alias=demo_cvft_train"]
        )
        entries = run_extraction(train_cfg, store, progress=reporter) + run_extraction(
            cfg, store, progress=reporter
        )
        ui.report_entries(entries)
        rows = []
        for method in ("cvft", "vgg_conv", "vgg_gp"):
            mcfg = load_config(
                "demo_cvft",
                [
                    *common,
                    f"align.method={method}",
                    "align.train_drone=[demo_cvft_train.ground@conv5_3]",
                    "align.train_satellite=[demo_cvft_train.aerial@conv5_3]",
                ],
            )
            run_alignment(mcfg, store, run, log=reporter.log)
            for q, g in (("ground", "aerial"), ("aerial", "ground")):
                m = run_retrieval(
                    mcfg,
                    store,
                    run,
                    query=aligned_alias(mcfg, q),
                    gallery=aligned_alias(mcfg, g),
                    out_dir=run.path / f"{method}-{q}2{g}",
                )
                rows.append((f"{method} {q}→{g}", m))
        run.record(demo={label: m for label, m in rows}, reused_all=all(e.reused for e in entries))
        return rows

    rows = ui.run_stage("demo", cfg, go)
    out.print(metrics_table(rows))
    out.print(DEMO_CVFT_NOTE)
