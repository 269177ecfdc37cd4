"""Alignment methods as a registry: a new method is one file, align.params is checked when the config
loads (before any extraction), imported entries align without a backbone section, and one rule
reads a view's role from its name."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cvgl.datasets.view_roles import pair_roles, view_kind

from tests.helpers import ROOT, cli, one_error_line

DRIVER = r"""
import json, sys
import numpy as np
import center  # the README's method file: importing it registers align.method=center
from cvgl import pipeline
from cvgl.cache.importers import import_arrays
from cvgl.cache.store import CacheStore
from cvgl.core.errors import UserError

store = CacheStore(sys.argv[1])
rng = np.random.default_rng(0)
for alias, n in (("imp.drone", 12), ("imp.sat", 6)):
    x = rng.standard_normal((n, 8)).astype(np.float32) + 3.0
    import_arrays(store, x, np.arange(n) % 6, [f"{alias}/{i}" for i in range(n)], alias=alias, source={})
given = ["align.method=center", "align.query=[imp.drone]", "align.gallery=[imp.sat]", "out=run"]
try:
    pipeline.load_config(None, [*given, "align.params={alpah: 0.5}"])
    refused = ""
except UserError as e:
    refused = str(e)
cfg = pipeline.load_config(None, [*given, "align.params={alpha: 0.5}"])
res = pipeline.align(cfg, cache_dir=sys.argv[1])
again = pipeline.align(cfg, cache_dir=sys.argv[1])
print(json.dumps({
    "refused": refused,
    "aligned": [[a.alias, a.key, a.count, a.reused] for a in res.aligned],
    "again": [[a.alias, a.key, a.reused] for a in again.aligned],
}))
"""


def _readme_method_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("**Adding a method.**", 1)[1].split("\n**", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the README's 'Adding a method' has no python example"
    return blocks[0]


@pytest.mark.slow
def test_readme_method_example_registers_trains_and_aligns_imported_entries_without_backbone(tmp_path):
    (tmp_path / "center.py").write_text(_readme_method_example(), encoding="utf-8")
    (tmp_path / "driver.py").write_text(DRIVER, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]), "OMP_NUM_THREADS": "1"}
    cache = tmp_path / "cache"
    p = subprocess.run(
        [sys.executable, "driver.py", str(cache)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    # align.params is checked against the method's own dataclass when the config loads
    assert "unknown align.params key 'alpah'" in out["refused"] and "did you mean 'alpha'" in out["refused"]
    # one entry per view and the default backbone.layers ([26, 28]): the entries given are the layers
    assert {a for a, _, _, _ in out["aligned"]} == {
        "experiment.center.query_drone",
        "experiment.center.gallery_satellite",
    }
    assert not any(r for *_, r in out["aligned"]) and all(r for *_, r in out["again"])
    assert sorted(k for _, k, _ in out["again"]) == sorted(k for _, k, _, _ in out["aligned"])

    from cvgl.cache.store import CacheStore

    store = CacheStore(cache)
    raw = {
        v: store.open(a).read()[0]
        for v, a in (("query_drone", "imp.drone"), ("gallery_satellite", "imp.sat"))
    }
    mean = 0.5 * np.concatenate([raw["gallery_satellite"], raw["query_drone"]]).mean(axis=0)
    for view, x in raw.items():
        got = store.open(f"experiment.center.{view}").read()[0]
        want = (x - mean) / np.linalg.norm(x - mean, axis=1, keepdims=True)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "complete" and info["alignment"]["method"] == "center"


def _nothing_extracted(cache: Path) -> bool:
    entries = cache / "entries"
    return not (cache / "datasets").exists() and (not entries.exists() or not any(entries.iterdir()))


@pytest.mark.slow
def test_unknown_params_key_fails_when_the_config_loads_before_any_extraction(tmp_path):
    cache = tmp_path / "cache"
    p = cli("run", "demo", "align.method=geoalign", "align.params={lrr: 0.1}", cache=cache, cwd=tmp_path)
    line = one_error_line(p)
    assert "'lrr'" in line and "did you mean 'lr'" in line
    assert _nothing_extracted(cache)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_unknown_method_names_the_closest_registered_one(tmp_path):
    cache = tmp_path / "cache"
    line = one_error_line(cli("extract", "demo", "align.method=fuson", cache=cache, cwd=tmp_path))
    assert "unknown align.method 'fuson'" in line and "did you mean 'fusion'" in line
    assert _nothing_extracted(cache)


@pytest.mark.slow
def test_cvft_variant_contradicting_the_method_is_refused_at_load(tmp_path):
    line = one_error_line(
        cli(
            "align",
            "demo_cvft",
            "align.method=vgg_gp",
            "align.params={variant: cvft}",
            cache=tmp_path / "c",
            cwd=tmp_path,
        )
    )
    assert "contradicts align.method='vgg_gp'" in line


@pytest.mark.slow
def test_sweep_with_a_bad_params_key_is_refused_before_anything_runs(tmp_path):
    cache = tmp_path / "cache"
    p = cli(
        "sweep",
        "demo",
        "align.method=geoalign",
        "align.params={epoch: 2}",
        "out=sw",
        "--grid",
        "seed=[0,1]",
        cache=cache,
        cwd=tmp_path,
    )
    assert "did you mean 'epochs'" in one_error_line(p)
    assert not (tmp_path / "sw" / "sweep.csv").exists()
    assert _nothing_extracted(cache)


# ------------------------------------------------------------------------------------ view roles


@pytest.mark.parametrize(
    "query,gallery,roles",
    [
        ("query_drone", "gallery_satellite", ("ground", "aerial")),
        ("query_satellite", "gallery_drone", ("aerial", "ground")),
        ("query_street", "gallery_satellite", ("ground", "aerial")),
        ("query_drone", "gallery_street", ("ground", "aerial")),  # D2G: the drone query is the adapted branch
        ("ground", "aerial", ("ground", "aerial")),  # CVUSA / CVACT
        ("aerial", "ground", ("aerial", "ground")),
        ("ground", "satellite", ("ground", "aerial")),  # VIGOR
        ("satellite", "ground", ("aerial", "ground")),
        ("dro", "sat", ("ground", "aerial")),  # GeoAlign's feature folders
        ("sat", "dro", ("aerial", "ground")),
        ("drone", "google", ("ground", "aerial")),  # a name that says nothing takes the other role
        ("images", "gallery_satellite", ("ground", "aerial")),
        ("images", "other", ("ground", "aerial")),  # neither says: the query is the ground side
    ],
)
def test_one_rule_gives_each_view_of_a_pair_its_branch(query, gallery, roles):
    assert pair_roles(query, gallery) == roles


def test_view_kind_reads_drone_ground_and_aerial_words():
    assert [
        view_kind(v) for v in ("query_drone", "gallery_street", "pano_0", "gallery_satellite", "aerial")
    ] == [
        "drone",
        "ground",
        "ground",
        "aerial",
        "aerial",
    ]
    assert view_kind("google") is None and view_kind("images") is None
