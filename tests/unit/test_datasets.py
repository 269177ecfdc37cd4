"""Image lists (University-1652 and folder layouts) and image decoding/preprocessing."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from cvgl.core.errors import UserError
from cvgl.datasets.layouts import LAYOUTS, ImageList, list_images, unify_label_names, view_pair
from cvgl.extract.images import IMAGENET_MEAN, IMAGENET_STD, ImageDataset, collate, iter_batches, parse_resize
from PIL import Image, ImageFile


def _save(path: Path, img: Image.Image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def _rgb(seed: int, size: tuple[int, int] = (12, 10)) -> Image.Image:
    """A random RGB image, size (w, h)."""
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr, mode="RGB")


@pytest.fixture()
def u1652(tmp_path: Path) -> Path:
    """A tiny dataset in the real University-1652 layout, with the clutter real copies carry."""
    root = tmp_path / "University-1652"
    qd = root / "test" / "query_drone"
    _save(qd / "0002" / "image-02.jpeg", _rgb(1))
    _save(qd / "0002" / "image-01.jpeg", _rgb(2))
    _save(qd / "0010" / "image-01.png", _rgb(3))
    _save(qd / "0001" / "image-01.JPG", _rgb(4), format="JPEG")
    (qd / "0001" / "notes.txt").write_text("not an image")
    (qd / "0001" / "._image-01.jpeg").write_bytes(b"macOS resource fork, not an image")
    (qd / ".cache").mkdir()
    (qd / "Thumbs.db").write_bytes(b"")
    _save(root / "test" / "gallery_satellite" / "0001" / "0001.jpg", _rgb(5))
    _save(root / "test" / "gallery_satellite" / "0003" / "0003.jpg", _rgb(6))
    _save(root / "train" / "satellite" / "0007" / "0007.jpg", _rgb(7))
    return root


# --------------------------------------------------------------------------------------------------
# list_images: University-1652


def test_layouts_registered():
    assert LAYOUTS == ("u1652", "folder", "sues200", "cvusa", "cvact", "vigor", "denseuav")


def test_u1652_names_labels_order(u1652: Path):
    lst = list_images("u1652", u1652, "query_drone")
    assert isinstance(lst, ImageList)
    assert lst.names == (
        "test/query_drone/0001/image-01.JPG",
        "test/query_drone/0002/image-01.jpeg",
        "test/query_drone/0002/image-02.jpeg",
        "test/query_drone/0010/image-01.png",
    )
    assert lst.labels.dtype == np.int64
    assert lst.labels.tolist() == [1, 2, 2, 10]
    assert len(lst) == 4 and lst.view == "query_drone" and lst.root == u1652
    assert lst.path(0) == u1652 / "test/query_drone/0001/image-01.JPG"
    assert lst.label_names == ()
    with pytest.raises(ValueError):
        lst.labels[0] = 5  # immutable ground truth


def test_u1652_train_split_and_str_root(u1652: Path):
    lst = list_images("u1652", str(u1652), "satellite", split="train")
    assert lst.names == ("train/satellite/0007/0007.jpg",)
    assert lst.labels.tolist() == [7]


def test_u1652_root_missing(tmp_path: Path):
    missing = tmp_path / "nope"
    with pytest.raises(UserError, match="dataset.root=") as e:
        list_images("u1652", missing, "query_drone")
    assert str(missing) in str(e.value)


def test_u1652_view_missing_lists_views(u1652: Path):
    with pytest.raises(UserError) as e:
        list_images("u1652", u1652, "query_street")
    msg = str(e.value)
    assert str(u1652 / "test" / "query_street") in msg
    assert "gallery_satellite" in msg and "query_drone" in msg
    assert "\n" not in msg


def test_u1652_root_pointing_at_split(u1652: Path):
    with pytest.raises(UserError) as e:
        list_images("u1652", u1652 / "test", "query_drone")
    assert f"dataset.root={u1652}" in str(e.value)


def test_u1652_split_missing(u1652: Path, tmp_path: Path):
    other = tmp_path / "other"
    (other / "something").mkdir(parents=True)
    with pytest.raises(UserError) as e:
        list_images("u1652", other, "query_drone")
    assert str(other / "test" / "query_drone") in str(e.value) and "something" in str(e.value)


def test_u1652_no_images(tmp_path: Path):
    view = tmp_path / "ds" / "test" / "query_drone"
    (view / "0001").mkdir(parents=True)
    (view / "0001" / "readme.txt").write_text("x")
    with pytest.raises(UserError, match="no images") as e:
        list_images("u1652", tmp_path / "ds", "query_drone")
    assert str(view) in str(e.value)


def test_u1652_non_integer_building(u1652: Path):
    bad = u1652 / "test" / "query_drone" / "building_a"
    _save(bad / "x.jpg", _rgb(9))
    with pytest.raises(UserError) as e:
        list_images("u1652", u1652, "query_drone")
    assert str(bad) in str(e.value)


def test_unknown_layout_and_bad_names(u1652: Path):
    with pytest.raises(UserError, match="u1652, folder"):
        list_images("cvusa2", u1652, "query_drone")
    with pytest.raises(UserError, match="plain folder name"):
        list_images("u1652", u1652, "../query_drone")


def test_root_is_a_file(tmp_path: Path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        list_images("u1652", f, "query_drone")


# --------------------------------------------------------------------------------------------------
# list_images: folder layout


def test_folder_integer_labels(tmp_path: Path):
    _save(tmp_path / "10" / "b.png", _rgb(1))
    _save(tmp_path / "10" / "a.png", _rgb(2))
    _save(tmp_path / "2" / "z.webp", _rgb(3), format="WEBP", lossless=True)
    _save(tmp_path / "-1" / "junk.bmp", _rgb(4))
    lst = list_images("folder", tmp_path, "gallery")
    # Integer folders sort by number ("2" before "10"), then by file name.
    assert lst.names == ("-1/junk.bmp", "2/z.webp", "10/a.png", "10/b.png")
    assert lst.labels.tolist() == [-1, 2, 10, 10]
    assert lst.label_names == () and lst.view == "gallery"


def test_folder_named_labels_and_unify(tmp_path: Path):
    q, g = tmp_path / "q", tmp_path / "g"
    _save(q / "paris" / "1.png", _rgb(1))
    _save(q / "berlin" / "1.png", _rgb(2))
    _save(g / "rome" / "1.png", _rgb(3))
    _save(g / "paris" / "1.png", _rgb(4))
    _save(g / "berlin" / "1.png", _rgb(5))
    ql = list_images("folder", q, "query")
    gl = list_images("folder", g, "gallery")
    assert ql.names == ("berlin/1.png", "paris/1.png") and ql.labels.tolist() == [0, 1]
    assert ql.label_names == ("berlin", "paris")
    assert gl.label_names == ("berlin", "paris", "rome") and gl.labels.tolist() == [0, 1, 2]
    uq, ug = unify_label_names([ql, gl])
    assert uq.labels.tolist() == [0, 1] and ug.labels.tolist() == [0, 1, 2]
    # A vocabulary that differs in order is remapped by name, not position.
    _save(q / "aachen" / "1.png", _rgb(6))
    uq, ug = unify_label_names([list_images("folder", q, "query"), gl])
    assert [uq.label_names[i] for i in uq.labels] == ["aachen", "berlin", "paris"]
    assert [ug.label_names[i] for i in ug.labels] == ["berlin", "paris", "rome"]


def test_folder_loose_images(tmp_path: Path):
    _save(tmp_path / "a.png", _rgb(1))
    with pytest.raises(UserError, match="label folders") as e:
        list_images("folder", tmp_path, "query")
    assert str(tmp_path) in str(e.value)


def test_view_pair():
    assert view_pair("D2S") == ("query_drone", "gallery_satellite")
    assert view_pair("s2d") == ("query_satellite", "gallery_drone")
    assert view_pair("street2sat") == ("query_street", "gallery_satellite")
    assert view_pair("S2G") == ("query_satellite", "gallery_street")
    with pytest.raises(UserError, match="D2S"):
        view_pair("up2down")


# --------------------------------------------------------------------------------------------------
# Decoding and preprocessing


def _raw(lst: ImageList, **kw) -> ImageDataset:
    """A dataset without normalization, so values are plain /255 RGB."""
    return ImageDataset(lst, mean=None, std=None, **kw)


def _as_u8(t: torch.Tensor) -> np.ndarray:
    return np.rint(t.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def test_mode_conversion(tmp_path: Path):
    rng = np.random.default_rng(0)
    h, w = 6, 8
    expected: dict[str, np.ndarray] = {}

    gray = rng.integers(0, 256, (h, w), dtype=np.uint8)
    _save(tmp_path / "0" / "l.png", Image.fromarray(gray, mode="L"))
    expected["0/l.png"] = np.repeat(gray[..., None], 3, axis=2)

    rgba = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    _save(tmp_path / "0" / "rgba.png", Image.fromarray(rgba, mode="RGBA"))
    expected["0/rgba.png"] = rgba[..., :3]  # alpha dropped, colour kept

    la = rng.integers(0, 256, (h, w, 2), dtype=np.uint8)
    _save(tmp_path / "0" / "la.png", Image.fromarray(la, mode="LA"))
    expected["0/la.png"] = np.repeat(la[..., :1], 3, axis=2)

    # CMYK with K = 0: every CMYK->RGB formula agrees on R,G,B = 255 - C,M,Y.
    cmy = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    cmyk = np.concatenate([cmy, np.zeros((h, w, 1), np.uint8)], axis=2)
    _save(tmp_path / "0" / "cmyk.tif", Image.fromarray(cmyk, mode="CMYK"))
    expected["0/cmyk.tif"] = 255 - cmy

    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    idx = rng.integers(0, 256, (h, w), dtype=np.uint8)
    p = Image.fromarray(idx, mode="P")
    p.putpalette(palette.reshape(-1).tolist())
    _save(tmp_path / "0" / "p.png", p)
    expected["0/p.png"] = palette[idx]
    _save(tmp_path / "0" / "ptrans.png", p, transparency=3)
    expected["0/ptrans.png"] = palette[idx]

    deep = rng.integers(0, 65536, (h, w), dtype=np.uint16)
    _save(tmp_path / "0" / "i16.png", Image.fromarray(deep))
    # 16-bit scaled to 8-bit, not clipped at 255 (which would make the image white).
    expected["0/i16.png"] = np.repeat(np.rint(deep / 65535 * 255).astype(np.uint8)[..., None], 3, axis=2)

    lst = list_images("folder", tmp_path, "x")
    ds = _raw(lst)
    for i, name in enumerate(lst.names):
        j, t = ds[i]
        assert j == i and t.dtype == torch.float32 and t.shape == (3, h, w), name
        np.testing.assert_array_equal(_as_u8(t), expected[name], err_msg=name)


def test_resize_and_normalize_match_direct_computation(tmp_path: Path):
    img = _rgb(3, size=(40, 30))
    _save(tmp_path / "1" / "a.png", img)
    lst = list_images("folder", tmp_path, "x")
    mean = np.array(IMAGENET_MEAN, np.float32)
    std = np.array(IMAGENET_STD, np.float32)

    def direct(size_wh: tuple[int, int] | None) -> np.ndarray:
        im = img if size_wh is None else img.resize(size_wh, Image.Resampling.BICUBIC)
        x = np.asarray(im, np.float32) / np.float32(255)
        return ((x - mean) / std).transpose(2, 0, 1)

    _, native = ImageDataset(lst)[0]
    assert native.shape == (3, 30, 40)
    np.testing.assert_allclose(native.numpy(), direct(None), atol=1e-6)
    _, square = ImageDataset(lst, resize=16)[0]
    assert square.shape == (3, 16, 16)
    np.testing.assert_allclose(square.numpy(), direct((16, 16)), atol=1e-6)
    _, rect = ImageDataset(lst, resize=(20, 24))[0]  # (h, w)
    assert rect.shape == (3, 20, 24)
    np.testing.assert_allclose(rect.numpy(), direct((24, 20)), atol=1e-6)
    _, custom = ImageDataset(lst, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))[0]
    np.testing.assert_allclose(custom.numpy(), native_raw(lst) * 2 - 1, atol=1e-6)


def native_raw(lst: ImageList) -> np.ndarray:
    return _raw(lst)[0][1].numpy()


def test_bad_preprocess_settings(tmp_path: Path):
    _save(tmp_path / "1" / "a.png", _rgb(1))
    lst = list_images("folder", tmp_path, "x")
    for bad in (0, -3, True, "512", (1, 2, 3), (10, 0)):
        with pytest.raises(UserError, match="preprocess.resize"):
            ImageDataset(lst, resize=bad)  # type: ignore[arg-type]
    assert parse_resize([7, 9]) == (7, 9)
    with pytest.raises(UserError, match="std"):
        ImageDataset(lst, std=(0.2, 0.0, 0.2))
    with pytest.raises(UserError, match="3 values"):
        ImageDataset(lst, mean=(0.5, 0.5))
    with pytest.raises(UserError, match="both"):
        ImageDataset(lst, mean=None)


def _truncated_dataset(root: Path) -> ImageList:
    for k in range(4):
        _save(root / "1" / f"ok{k}.jpg", _rgb(k, size=(32, 32)), quality=95)
    full = root / "1" / "ok0.jpg"
    bad = root / "2" / "broken.jpg"
    bad.parent.mkdir()
    data = full.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    return list_images("folder", root, "x")


def test_truncated_jpeg_names_file(tmp_path: Path):
    lst = _truncated_dataset(tmp_path)
    ds = ImageDataset(lst, resize=16)
    i = lst.names.index("2/broken.jpg")
    with pytest.raises(UserError) as e:
        ds[i]
    msg = str(e.value)
    assert "2/broken.jpg" in msg and "--skip-bad" in msg and "\n" not in msg
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    # Garbage that is not an image at all is reported the same way.
    (tmp_path / "1" / "ok1.jpg").write_bytes(b"definitely not a jpeg")
    with pytest.raises(UserError, match="1/ok1.jpg"):
        ds[lst.names.index("1/ok1.jpg")]


def test_skip_bad_drops_items(tmp_path: Path):
    lst = _truncated_dataset(tmp_path)
    ds = ImageDataset(lst, resize=16, skip_bad=True)
    i = lst.names.index("2/broken.jpg")
    assert ds[i] == (i, None)
    idx, images = collate([ds[j] for j in range(len(ds))])
    assert idx.tolist() == [j for j in range(len(ds)) if j != i]
    assert images is not None and images.shape == (len(ds) - 1, 3, 16, 16)
    idx, images = collate([ds[i]])
    assert idx.numel() == 0 and images is None


def test_collate_different_sizes(tmp_path: Path):
    _save(tmp_path / "1" / "a.png", _rgb(1, size=(10, 10)))
    _save(tmp_path / "1" / "b.png", _rgb(2, size=(12, 10)))
    ds = ImageDataset(list_images("folder", tmp_path, "x"))
    with pytest.raises(UserError, match=r"different sizes \(10x10 vs 10x12\); set preprocess.resize=N"):
        collate([ds[0], ds[1]])
    idx, images = collate([ImageDataset(ds.images, resize=8)[k] for k in range(2)])
    assert idx.tolist() == [0, 1] and images is not None and images.shape == (2, 3, 8, 8)


def test_dataloader_workers_match(tmp_path: Path):
    for k in range(7):
        _save(tmp_path / str(k % 3) / f"{k}.png", _rgb(k, size=(20 + k, 18)))
    ds = ImageDataset(list_images("folder", tmp_path, "x"), resize=(12, 14))
    ds2 = pickle.loads(pickle.dumps(ds))  # what spawn-started workers receive
    assert torch.equal(ds2[3][1], ds[3][1])
    serial = list(iter_batches(ds, batch_size=3, num_workers=0))
    parallel = list(iter_batches(ds, batch_size=3, num_workers=2))
    assert len(serial) == len(parallel) == 3
    for (i0, x0), (i1, x1) in zip(serial, parallel, strict=True):
        assert torch.equal(i0, i1) and torch.equal(x0, x1)
    assert torch.cat([i for i, _ in serial]).tolist() == list(range(7))


def test_worker_error_stays_one_line(tmp_path: Path):
    lst = _truncated_dataset(tmp_path)
    ds = ImageDataset(lst, resize=16)
    with pytest.raises(UserError) as e:
        list(iter_batches(ds, batch_size=2, num_workers=2))
    msg = str(e.value)
    assert "\n" not in msg and "2/broken.jpg" in msg and msg.startswith("cannot decode image")
