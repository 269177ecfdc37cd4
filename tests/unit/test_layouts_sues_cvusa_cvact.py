"""Datasets as they ship: SUES-200, CVUSA, CVACT (a real .mat), University-1652's flat 160k distractors,
the pair directions, and CVFT preprocessing, each on a tiny generated copy in its real layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from cvgl.cache.naming import dataset_views
from cvgl.configs.schema import load_config
from cvgl.core.errors import UserError
from cvgl.datasets.layouts import list_images, view_pair
from cvgl.extract.images import ImageDataset
from cvgl.extract.keys import view_preprocess
from PIL import Image


def _img(path: Path, seed: int, size: tuple[int, int] = (12, 8), mode: str = "RGB") -> Path:
    """A small random image (size = (w, h)) in ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    im = Image.fromarray(arr, "RGB")
    if mode == "P":
        im = im.quantize(16)
    elif mode != "RGB":
        im = im.convert(mode)
    im.save(path, format="TIFF" if mode == "CMYK" else None)
    return path


# --------------------------------------------------------------------------------------------------
# SUES-200: Testing/<altitude>/<view>/<id>/… and Training/<altitude>/{drone,satellite}/<id>/…


@pytest.fixture()
def sues(tmp_path: Path) -> Path:
    root = tmp_path / "SUES-200-512x512"
    for alt in (150, 300):
        t = root / "Testing" / str(alt)
        for loc in ("0121", "0122"):
            for k in range(2):
                _img(t / "query_drone" / loc / f"{k}.jpg", alt + k)
        for loc in ("0001", "0121", "0122"):  # galleries hold all 200 locations (train ones too)
            _img(t / "gallery_satellite" / loc / "0.png", int(loc))
        _img(root / "Training" / str(alt) / "satellite" / "0001" / "0.png", 1)
    return root


def test_sues200_layout_per_altitude(sues: Path):
    q = list_images("sues200", sues, "query_drone", altitude=150)
    assert q.names == (
        "Testing/150/query_drone/0121/0.jpg",
        "Testing/150/query_drone/0121/1.jpg",
        "Testing/150/query_drone/0122/0.jpg",
        "Testing/150/query_drone/0122/1.jpg",
    )
    assert q.labels.tolist() == [121, 121, 122, 122]
    g = list_images("sues200", sues, "gallery_satellite", altitude=300)
    assert g.names[0] == "Testing/300/gallery_satellite/0001/0.png" and g.labels.tolist() == [1, 121, 122]
    t = list_images("sues200", sues, "satellite", split="train", altitude=150)
    assert t.names == ("Training/150/satellite/0001/0.png",)


def test_sues200_errors_name_the_fix(sues: Path):
    with pytest.raises(UserError, match=r"dataset.altitude is not set .* 150, 300"):
        list_images("sues200", sues, "query_drone")
    with pytest.raises(UserError, match="altitude folder .*250.* one of 150, 300"):
        list_images("sues200", sues, "query_drone", altitude=250)
    with pytest.raises(UserError, match="is a split folder; .*dataset.root="):
        list_images("sues200", sues / "Testing", "query_drone", altitude=150)
    with pytest.raises(UserError, match="views found under"):
        list_images("sues200", sues, "query_street", altitude=150)


def test_sues200_config_through_the_runner(sues: Path, tmp_path: Path):
    from cvgl.cache.store import CacheStore
    from cvgl.extract.roots import image_lists

    cfg = load_config(None, ["layout=sues200", f"root={sues}", "dataset.altitude=300"])
    lists = image_lists(cfg, CacheStore(tmp_path / "c"))
    assert [x.view for x in lists] == ["query_drone", "gallery_satellite"]
    assert all("/300/" in n for x in lists for n in x.names)


# --------------------------------------------------------------------------------------------------
# CVUSA: splits/*-19zl.csv, bingmap/19/<x>.jpg, streetview/panos/<x>.jpg


@pytest.fixture()
def cvusa(tmp_path: Path) -> Path:
    root = tmp_path / "CVUSA"
    lines = {"train": [], "val": []}
    for k, x in enumerate(("0000044", "0000003", "0000017")):
        _img(root / "bingmap" / "19" / f"{x}.jpg", k, (16, 16))
        _img(root / "streetview" / "panos" / f"{x}.jpg", 10 + k, (32, 8))
        lines["val" if k else "train"].append(
            f"bingmap/19/{x}.jpg,streetview/panos/{x}.jpg,annotations/{x}.png"
        )
    (root / "splits").mkdir()
    (root / "splits" / "train-19zl.csv").write_text("\n".join(lines["train"]) + "\n")
    # Windows line ends and a trailing blank line, as copies of the file carry.
    (root / "splits" / "val-19zl.csv").write_text("\r\n".join(lines["val"]) + "\r\n\r\n")
    return root


def test_cvusa_pairs_in_csv_order_label_is_pair_index(cvusa: Path):
    g = list_images("cvusa", cvusa, "ground", split="val")
    a = list_images("cvusa", cvusa, "aerial", split="val")
    assert g.names == (
        "streetview/panos/0000003.jpg",
        "streetview/panos/0000017.jpg",
    )  # CSV order, not sorted
    assert a.names == ("bingmap/19/0000003.jpg", "bingmap/19/0000017.jpg")
    assert g.labels.tolist() == a.labels.tolist() == [0, 1]  # query i <-> gallery i
    assert list_images("cvusa", cvusa, "ground", split="test").names == g.names  # test = val
    assert list_images("cvusa", cvusa, "aerial", split="train").names == ("bingmap/19/0000044.jpg",)


def test_cvusa_errors(cvusa: Path):
    with pytest.raises(UserError, match="views are ground and aerial"):
        list_images("cvusa", cvusa, "query_drone", split="val")
    with pytest.raises(UserError, match="use train or val"):
        list_images("cvusa", cvusa, "ground", split="holdout")
    (cvusa / "streetview" / "panos" / "0000017.jpg").unlink()
    with pytest.raises(UserError, match=r"1 of 2 ground images .* missing, e.g. .*0000017.jpg"):
        list_images("cvusa", cvusa, "ground", split="val")
    (cvusa / "splits" / "train-19zl.csv").write_text("just-one-column\n")
    with pytest.raises(UserError, match="line 1"):
        list_images("cvusa", cvusa, "aerial", split="train")
    with pytest.raises(UserError, match="contains splits/"):
        list_images("cvusa", cvusa / "splits", "aerial", split="train")


def test_pair_directions_and_views_from_config(cvusa: Path):
    assert view_pair("G2A", "cvusa") == ("ground", "aerial")
    assert view_pair("a2g", "cvact") == ("aerial", "ground")
    assert view_pair("street2sat", "cvusa") == ("ground", "aerial")
    with pytest.raises(UserError, match="does not apply to layout cvusa.*G2A"):
        view_pair("D2S", "cvusa")
    cfg = load_config(None, ["layout=cvusa", f"root={cvusa}", "mode=G2A", "dataset.split=val"])
    assert dataset_views(cfg) == ["ground", "aerial"]
    assert view_pair("D2S") == ("query_drone", "gallery_satellite")  # other layouts unchanged


# --------------------------------------------------------------------------------------------------
# CVACT: ACT_data.mat (written with scipy.io.savemat), streetview/, satview_polish/


def _cvact(root: Path, *, cell: bool, images_under: str = "") -> list[str]:
    ids = [
        "__-DFIFxvZBCn1873qkqXA",
        "_0Bw0ZIbWw7Vuy4qDbqYcQ",
        "-0wRtwTqq5WJ8bdhi4D5Ug",
        "0A1b2C3d4E5f6G7h8I9j0k",
    ]
    base = root / images_under
    for k, pid in enumerate(ids):
        _img(base / "streetview" / f"{pid}_grdView.jpg", k, (32, 8))
        _img(base / "satview_polish" / f"{pid}_satView_polish.jpg", 10 + k, (16, 16))
    pano = np.array(ids, dtype=object).reshape(-1, 1) if cell else np.array(ids)
    mat = {
        "panoIds": pano,
        "utm": np.zeros((len(ids), 2)),
        "trainSet": {"trainInd": np.array([[1], [2]], dtype=np.float64)},  # MATLAB: 1-based doubles
        "valSet": {"valInd": np.array([[4], [3]], dtype=np.float64)},
    }
    scipy.io.savemat(str(root / "ACT_data.mat"), mat)
    return ids


@pytest.mark.parametrize("cell", [False, True])
def test_cvact_reads_the_mat_file(tmp_path: Path, cell: bool):
    ids = _cvact(tmp_path, cell=cell)
    g = list_images("cvact", tmp_path, "ground", split="val")
    a = list_images("cvact", tmp_path, "aerial", split="val")
    assert g.names == (f"streetview/{ids[3]}_grdView.jpg", f"streetview/{ids[2]}_grdView.jpg")
    assert a.names == (
        f"satview_polish/{ids[3]}_satView_polish.jpg",
        f"satview_polish/{ids[2]}_satView_polish.jpg",
    )
    assert g.labels.tolist() == a.labels.tolist() == [0, 1]
    assert (
        list_images("cvact", tmp_path, "ground", split="train").names[0] == f"streetview/{ids[0]}_grdView.jpg"
    )


def test_cvact_release_layout_and_errors(tmp_path: Path):
    # The release puts ACT_data.mat beside ANU_data_small/: accept the mat in the parent, and
    # images under ANU_data_small/ when the root is the outer folder.
    ids = _cvact(tmp_path, cell=False, images_under="ANU_data_small")
    outer = list_images("cvact", tmp_path, "ground", split="val")
    assert outer.names[0] == f"ANU_data_small/streetview/{ids[3]}_grdView.jpg"
    inner = list_images("cvact", tmp_path / "ANU_data_small", "aerial", split="val")
    assert inner.names[0] == f"satview_polish/{ids[3]}_satView_polish.jpg"
    with pytest.raises(UserError, match="use train or val"):
        list_images("cvact", tmp_path, "ground", split="holdout")
    scipy.io.savemat(str(tmp_path / "ACT_data.mat"), {"panoIds": np.array(ids), "valSet": {"valInd": [[9]]}})
    with pytest.raises(UserError, match=r"valSet.valInd holds indices outside 1..4"):
        list_images("cvact", tmp_path, "ground", split="val")
    with pytest.raises(UserError, match="no trainSet.trainInd"):
        list_images("cvact", tmp_path, "ground", split="train")
    (tmp_path / "ACT_data.mat").write_bytes(b"not a mat file")
    with pytest.raises(UserError, match="cannot read .*ACT_data.mat"):
        list_images("cvact", tmp_path, "ground", split="val")
    empty = tmp_path / "elsewhere" / "inner"
    empty.mkdir(parents=True)
    with pytest.raises(UserError, match="ACT_data.mat not found"):
        list_images("cvact", empty, "ground", split="val")


# --------------------------------------------------------------------------------------------------
# University-1652's extended gallery: a flat folder of distractor tiles without building ids


def test_u1652_flat_distractor_folder_reads_distractor_label(tmp_path: Path):
    from cvgl.datasets.layouts import DISTRACTOR

    root = tmp_path / "University-Release"
    _img(root / "test" / "gallery_satellite" / "0001" / "0001.jpg", 1)
    ext = root / "test" / "gallery_satellite_160k"
    for k, name in enumerate(("f3a9c2.jpg", "00b1d4.jpg", "9e8f77.png")):
        _img(ext / name, 10 + k)
    (ext / "gallery_name.txt").write_text("not an image\n")
    flat = list_images("u1652", root, "gallery_satellite_160k")
    assert flat.names == tuple(
        f"test/gallery_satellite_160k/{n}" for n in ("00b1d4.jpg", "9e8f77.png", "f3a9c2.jpg")
    )
    assert DISTRACTOR == -2 and flat.labels.tolist() == [DISTRACTOR] * 3
    # Tiles dropped next to the building folders: buildings keep their ids, loose tiles come last.
    _img(root / "test" / "gallery_satellite" / "extra_tile.jpg", 5)
    mixed = list_images("u1652", root, "gallery_satellite")
    assert mixed.names[-1] == "test/gallery_satellite/extra_tile.jpg"
    assert mixed.labels.tolist() == [1, DISTRACTOR]
    # In a query view a loose image is unknown, not a distractor of anything.
    _img(root / "test" / "query_drone" / "0001" / "image-01.jpeg", 2)
    _img(root / "test" / "query_drone" / "stray.jpeg", 3)
    assert list_images("u1652", root, "query_drone").labels.tolist() == [1, -1]


def test_distractors_count_as_negatives_and_junk_does_not():
    """A 160k-gallery distractor scored above the true tile costs the query its R@1; junk (-1) is removed."""
    from cvgl.datasets.layouts import DISTRACTOR
    from cvgl.retrieve.metrics import evaluate

    q = np.array([[1.0, 0.0]], np.float32)
    g = np.array([[0.6, 0.8], [0.9, np.sqrt(1 - 0.81)]], np.float32)  # true tile 0.6, other tile 0.9
    for protocol in ("u1652", "geoalign"):
        as_distractor, _ = evaluate(
            q, np.array([1]), g, np.array([1, DISTRACTOR]), protocol, ks=(1, 2), topk=1
        )
        as_junk, _ = evaluate(q, np.array([1]), g, np.array([1, -1]), protocol, ks=(1, 2), topk=1)
        assert (as_distractor["R@1"], as_distractor["R@2"]) == (0.0, 100.0)
        assert as_distractor["AP"] == pytest.approx(50.0 if protocol == "geoalign" else 25.0)
        assert as_junk["R@1"] == 100.0 and as_junk["AP"] == pytest.approx(100.0)


# --------------------------------------------------------------------------------------------------
# Image modes and CVFT preprocessing


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "LA"])
def test_any_mode_becomes_rgb_through_the_cvft_recipe(tmp_path: Path, mode: str):
    """Every Pillow mode reaches the network as 3-channel input, also through CVFT's preprocessing
    (area resize to 112×616, BGR 0..255 minus CVFT's means), which must equal extract.vgg16's own."""
    from cvgl.extract.vgg16 import CVFT_GROUND_SIZE, preprocess

    ext = "tif" if mode == "CMYK" else "png"
    path = _img(tmp_path / "0" / f"a.{ext}", 3, (224, 56), mode)
    lst = list_images("folder", tmp_path, "ground")
    cfg = load_config(None, ["preprocess.recipe=cvft", "preprocess.normalization=caffe_bgr"])
    prep, key_resize = view_preprocess(cfg, "ground")
    assert prep.size == CVFT_GROUND_SIZE and prep.resample == "box" and key_resize == [112, 616]
    ds = ImageDataset(lst, resize=prep.size, resample=prep.resample, normalization=prep.normalization)
    _, x = ds[0]
    with Image.open(path) as im:
        rgb = im.convert("RGBA").convert("RGB") if mode in ("P", "LA", "RGBA") else im.convert("RGB")
        # CVFT's INTER_AREA resize, written out: Pillow's BOX filter to (w, h) = (616, 112).
        area = rgb.resize((CVFT_GROUND_SIZE[1], CVFT_GROUND_SIZE[0]), Image.BOX)
        expected = preprocess(np.asarray(area, dtype=np.uint8), "cvft")[0]
    assert x.shape == (3, 112, 616)
    torch.testing.assert_close(x, expected, rtol=0, atol=0)


def test_cvft_sizes_per_view_and_explicit_overrides():
    cfg = load_config(None, ["preprocess.recipe=cvft"])
    assert view_preprocess(cfg, "aerial")[0].size == (256, 256)
    assert view_preprocess(cfg, "query_street")[0].size == (112, 616)
    assert view_preprocess(cfg, "gallery_satellite")[0].size == (256, 256)
    with pytest.raises(UserError, match="cannot tell whether view 'query_drone'.*resize_by_view"):
        view_preprocess(cfg, "query_drone")
    cfg = load_config(None, ["preprocess.recipe=cvft", "preprocess.resize_by_view={query_drone: 128}"])
    assert view_preprocess(cfg, "query_drone")[0].size == (128, 128)
    cfg = load_config(None, ["preprocess.resize=[20, 30]"])
    prep, key = view_preprocess(cfg, "x")
    assert prep.size == (20, 30) and key == [20, 30] and prep.resample == "bicubic"


def test_distractor_lists_get_their_own_cache_key(tmp_path: Path):
    """Keys cover names, not labels: a 160k gallery cached when its tiles were junk (-1) must not be
    reused now that they are distractors (-2); lists without distractors keep their keys."""
    from cvgl.datasets.layouts import DISTRACTOR, ImageList
    from cvgl.extract.keys import entry_spec

    cfg = load_config(None, [])
    names = ("test/gallery_satellite/0001/a.jpg", "test/gallery_satellite/x.jpg")
    specs = {}
    for tag, labels in (("junk", [1, -1]), ("distractor", [1, DISTRACTOR]), ("other", [1, 2])):
        lst = ImageList(root=tmp_path, names=names, labels=np.array(labels), view="gallery_satellite")
        specs[tag] = entry_spec(cfg, {"name": "b"}, lst, 28, "float32", "d" * 64)
    assert "distractors" in specs["distractor"]["images"]
    assert specs["distractor"] != specs["junk"]
    assert specs["junk"] == specs["other"]  # unchanged scheme: the key is what it always was


def test_a_distractor_query_matches_nothing():
    from cvgl.datasets.layouts import DISTRACTOR
    from cvgl.retrieve.metrics import evaluate

    q = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    g = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32)
    m, res = evaluate(
        q, np.array([DISTRACTOR, 7]), g, np.array([DISTRACTOR, 7, DISTRACTOR]), "u1652", ks=(1,), topk=2
    )
    assert m["R@1"] == 50.0 and res.first_rank.tolist() == [-1, 0]
