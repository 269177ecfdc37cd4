"""The layout registry: the schema accepts exactly the registry's layouts, in the order messages list
them, and every image layout's reader lists a tiny dataset in that layout."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
from cvgl.configs.schema import DatasetConfig, load_config
from cvgl.core.errors import UserError
from cvgl.datasets.layouts import LAYOUTS, REGISTRY, ImageList, list_images
from cvgl.datasets.layouts.registry import LAYOUT_NAMES, MAP_LAYOUTS, PAIR_LAYOUTS, default_mode

from tests.cli.test_vigor import _make_vigor
from tests.unit.test_datasets import u1652  # noqa: F401  (fixture)
from tests.unit.test_layouts_sues_cvusa_cvact import _cvact, cvusa, sues  # noqa: F401  (fixtures)


def test_the_schema_accepts_exactly_the_registry_layouts_in_their_order():
    assert LAYOUT_NAMES == (
        "u1652", "folder", "synthetic", "sues200", "cvusa", "cvact", "geoalign_release", "vigor", "denseuav",
        "map", "uav_visloc",
    )  # fmt: skip
    (layout,) = [f for f in dataclasses.fields(DatasetConfig) if f.name == "layout"]
    assert tuple(layout.metadata["choices"]) == LAYOUT_NAMES
    for name in LAYOUT_NAMES:
        cfg = load_config(None, [f"dataset.layout={name}"])
        assert cfg.dataset.layout == name and cfg.dataset.mode == default_mode(name)
    with pytest.raises(UserError, match="dataset.layout='bogus' is not one of " + ", ".join(LAYOUT_NAMES)):
        load_config(None, ["dataset.layout=bogus"])
    with pytest.raises(UserError, match="did you mean dataset.layout=u1652"):
        load_config(None, ["dataset.layout=u1562"])


def test_what_the_registry_says_of_each_layout():
    assert LAYOUTS == tuple(n for n in LAYOUT_NAMES if REGISTRY[n].reader is not None)
    assert PAIR_LAYOUTS == ("cvusa", "cvact") and MAP_LAYOUTS == ("map", "uav_visloc")
    assert {n: default_mode(n) for n in LAYOUT_NAMES if default_mode(n) != "D2S"} == {
        "cvusa": "G2A",
        "cvact": "G2A",
        "vigor": "G2S",
    }
    # A layout without a reader is not read as image folders: the message lists those that are.
    for name in set(LAYOUT_NAMES) - set(LAYOUTS):
        with pytest.raises(UserError, match=f"unknown dataset.layout '{name}'; choose one of u1652, folder"):
            list_images(name, ".", "query_drone")


def _cvact_sample(tmp_path: Path) -> Path:
    root = tmp_path / "CVACT"
    root.mkdir()
    _cvact(root, cell=False)
    return root


def _vigor_sample(tmp_path: Path) -> Path:
    _make_vigor(tmp_path / "VIGOR")
    return tmp_path / "VIGOR"


# Per image layout: a tiny dataset in it (from the layout tests' builders), the view to list and
# list_images' keywords. DenseUAV ships as University-1652 does; a folder dataset is one view folder.
SAMPLES: dict[str, tuple[Callable[[pytest.FixtureRequest, Path], Path], str, dict]] = {
    "u1652": (lambda req, tmp: req.getfixturevalue("u1652"), "query_drone", {}),
    "folder": (lambda req, tmp: req.getfixturevalue("u1652") / "test" / "query_drone", "images", {}),
    "sues200": (lambda req, tmp: req.getfixturevalue("sues"), "query_drone", {"altitude": 150}),
    "cvusa": (lambda req, tmp: req.getfixturevalue("cvusa"), "ground", {"split": "val"}),
    "cvact": (lambda req, tmp: _cvact_sample(tmp), "aerial", {"split": "val"}),
    "vigor": (lambda req, tmp: _vigor_sample(tmp), "ground", {"area": "cross"}),
    "denseuav": (lambda req, tmp: req.getfixturevalue("u1652"), "gallery_satellite", {}),
}


def test_every_image_layout_has_a_sample():
    assert set(SAMPLES) == set(LAYOUTS)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_image_layout_reader_lists_a_tiny_dataset(
    layout: str, request: pytest.FixtureRequest, tmp_path: Path
):
    build, view, kw = SAMPLES[layout]
    root = build(request, tmp_path)
    images = list_images(layout, root, view, **kw)
    assert isinstance(images, ImageList) and images.view == view and len(images) > 0
    assert len(images.labels) == len(images.names)
    assert all((root / n).is_file() for n in images.names)
