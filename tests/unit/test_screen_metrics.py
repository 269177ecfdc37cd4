"""What the screen shows of the metrics: R@1% as "–" when ⌊G/100⌋ = 0; compare's sweep axis columns."""

from __future__ import annotations

import json
from pathlib import Path

from cvgl.configs.schema import PROTOCOLS
from cvgl.core.console import metric_cell
from cvgl.retrieve.compare import compare_runs
from cvgl.retrieve.metrics import ALL_PROTOCOLS, POSITION_PROTOCOLS


def test_r1_percent_is_a_dash_on_screen_when_one_percent_of_the_gallery_is_not_one_item():
    assert metric_cell("R@1%", 12.5, 99) == "–"
    assert metric_cell("R@1%", 12.5, 100) == "12.50"
    assert metric_cell("R@1", 12.5, 60) == "12.50"  # only R@1% depends on the gallery size
    assert metric_cell("AP", None, 60) == "–"


def test_the_config_accepts_exactly_the_protocols_metrics_implements():
    # The rank protocols and the position ones (retrieve/metrics.py): `--help` lists PROTOCOLS.
    assert set(PROTOCOLS) == set(ALL_PROTOCOLS) | set(POSITION_PROTOCOLS)


def _point(sweep: Path, n: int, values: dict, r1: float, n_gallery: int) -> None:
    folder = sweep / "points" / f"{n:03d}"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"status": "complete", "sweep_point": values}))
    metrics = {"protocol": "u1652", "n_queries": 8, "n_gallery": n_gallery, "R@1": r1, "R@1%": 50.0, "AP": r1}
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_compare_on_a_sweep_folder_names_points_by_their_axis_values(tmp_path):
    sweep = tmp_path / "sw"
    _point(sweep, 0, {"align.method": "isms", "seed": "0"}, 30.0, 60)
    _point(sweep, 1, {"align.method": "geoalign", "seed": "0"}, 40.0, 60)
    rows, md, csv_text = compare_runs([sweep])
    header = md.splitlines()[0]
    assert "| align.method | seed |" in header and "part" not in header
    assert "points/000" not in md and "| isms | 0 |" in md and "| geoalign | 0 |" in md
    assert [r["align.method"] for r in rows] == ["isms", "geoalign"]
    # R@1% of a 60-item gallery: "–" on screen, the number in the CSV.
    r1p = header.split(" | ").index("R@1%")
    assert all(line.split(" | ")[r1p].strip() == "–" for line in md.splitlines()[2:4])
    assert csv_text.splitlines()[0].split(",")[:4] == ["run", "part", "align.method", "seed"]
    assert ",50.0," in csv_text.splitlines()[1]
