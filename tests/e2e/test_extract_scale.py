"""Extraction at scale: shards in any order, ranks, the writer thread, flat memory, bad input,
DINOv3 facets with and without CLS, VGG16 descriptors and conv maps, auto batch size."""

from __future__ import annotations

from pathlib import Path

import cvgl.extract.runner as runner
import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cvgl.cache.store import CacheStore, EntryWriter
from cvgl.configs.schema import load_config
from cvgl.core.errors import UserError
from cvgl.core.keys import content_key
from cvgl.extract.distributed import extract
from cvgl.extract.models import AUTO_BATCH_CPU, build_model, choose_batch_size, probe_batch_size
from cvgl.extract.ranks import Ranks
from cvgl.extract.roots import image_lists
from cvgl.extract.writer import WRITER_QUEUE, ShardSink, WriterThread
from PIL import Image

# A tiny random DINOv3 (2 blocks, width 32) on 32×32 images: 4 patches, milliseconds per batch.
TINY = [
    "backbone.name=dinov3_vits16",
    "backbone.arch={depth: 2, hidden_size: 32, num_heads: 2}",
    "backbone.layers=[0,1]",
    "backbone.device=cpu",
    "preprocess.resize=32",
    "extract.batch_size=4",
    "extract.shard_rows=8",
    "extract.num_workers=0",
    "extract.dtype=float32",
]


def _folder(root: Path, n: int, size: int = 32, seed: int = 0) -> Path:
    """``n`` random PNGs in the folder layout, 5 labels."""
    rng = np.random.default_rng(seed)
    for k in range(n):
        p = root / str(k % 5) / f"{k:04d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(p)
    return root


def _cfg(root: Path, *extra: str):
    return load_config(None, [*TINY, "layout=folder", f"root={root}", "alias=t", *extra])


def _entries(store: CacheStore) -> dict[str, tuple[np.ndarray, np.ndarray, list[str]]]:
    return {a: store.open(a).read(dtype=None) for a in store.aliases()}


def _assert_same(a: CacheStore, b: CacheStore) -> None:
    ea, eb = _entries(a), _entries(b)
    assert sorted(ea) == sorted(eb) and ea
    for alias in ea:
        assert store_key(a, alias) == store_key(b, alias)
        np.testing.assert_array_equal(ea[alias][0], eb[alias][0], err_msg=alias)
        np.testing.assert_array_equal(ea[alias][1], eb[alias][1])
        assert ea[alias][2] == eb[alias][2]


def store_key(store: CacheStore, alias: str) -> str:
    return store.resolve(alias)


def _rows(n: int, d: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((n, d)).astype(np.float32),
        rng.integers(0, 5, n),
        [f"i/{k:03d}.jpg" for k in range(n)],
    )


# --------------------------------------------------------------------------------------------------
# EntryWriter: given shard indices, several writers, skipped rows


def test_writer_writes_shards_in_any_order_from_several_writers(tmp_path):
    d, lab, names = _rows(55)
    clean = CacheStore(tmp_path / "clean").put_arrays({"kind": "o"}, d, lab, names, shard_rows=10)
    store = CacheStore(tmp_path / "s")
    key = content_key({"kind": "o"})
    kw = dict(shape=(6,), dtype="float32", shard_rows=10, total_rows=55)
    lead = store.writer(key, {"kind": "o"}, **kw)
    stray = lead.dir / "shard-00004.h5.tmp-424242"  # another rank's file in flight
    other = store.writer(key, {"kind": "o"}, cleanup=False, **kw)
    stray.write_bytes(b"being written")
    assert lead.n_shards == 6 and lead.shard_range(5) == (50, 55)
    for w, i in [(other, 5), (lead, 2), (other, 3), (lead, 0)]:
        s, e = w.shard_range(i)
        w.write_shard_rows(i, d[s:e], lab[s:e], names[s:e])
    assert store.writer(key, {"kind": "o"}, cleanup=False, **kw).done_indices == {0, 2, 3, 5}
    assert stray.exists()  # cleanup=False leaves other processes' files alone
    with pytest.raises(UserError, match="lacks shard.*1, 4"):
        lead.finish()
    for w, i in [(other, 1), (other, 4)]:
        s, e = w.shard_range(i)
        w.write_shard_rows(i, d[s:e], lab[s:e], names[s:e])
    lead.finish(alias="o")  # picks up the shards the other writer wrote
    got = store.open("o")
    np.testing.assert_array_equal(got.read()[0], clean.read()[0])
    assert got.names() == names and [s.row_start for s in got.manifest.shards] == [0, 10, 20, 30, 40, 50]
    assert store.verify("o") == {key: []}
    store.writer(key, {"kind": "o"}, **kw)  # a leading writer clears stray temporaries
    assert not stray.exists()


def test_writer_leaves_out_skipped_rows_and_resumes_exactly(tmp_path):
    d, lab, names = _rows(25)
    store = CacheStore(tmp_path)
    key = content_key({"kind": "skip"})
    kw = dict(shape=(6,), dtype="float16", shard_rows=10, total_rows=25)
    w = store.writer(key, {"kind": "skip"}, **kw)
    keep = [k for k in range(10, 20) if k not in (12, 17)]
    w.write_shard_rows(1, d[keep], lab[keep], [names[k] for k in keep], skipped=[names[12], names[17]])
    w.write_shard_rows(0, d[:10], lab[:10], names[:10])
    (w.dir / "shard-00002.h5.part").write_bytes(b"interrupted before its final name")
    w2 = store.writer(key, {"kind": "skip"}, **kw)  # resume: the shard with skipped rows counts as complete
    assert w2.done_indices == {0, 1} and not (w2.dir / "shard-00002.h5.part").exists()
    with h5py.File(w2.dir / "shard-00001.h5") as f:
        assert f.attrs["row_start"] == 10 and f.attrs["input_end"] == 20 and f["descriptors"].shape == (8, 6)
    w2.write_shard_rows(2, d[20:], lab[20:], names[20:])
    m = w2.finish(alias="skip")
    assert m.count == 23 and m.extra["skipped"] == [names[12], names[17]]
    assert [(s.row_start, s.row_end) for s in m.shards] == [(0, 10), (10, 18), (18, 23)]
    e = store.open("skip")
    assert e.names() == [n for k, n in enumerate(names) if k not in (12, 17)]
    np.testing.assert_array_equal(
        e.read()[0], d[[k for k in range(25) if k not in (12, 17)]].astype(np.float16)
    )
    assert store.verify("skip") == {key: []}
    empty = store.writer(content_key({"kind": "e"}), {"kind": "e"}, **{**kw, "total_rows": 2})
    empty.write_shard_rows(0, d[:0], lab[:0], [], skipped=names[:2])
    with pytest.raises(UserError, match="would hold no rows: all 2 inputs were skipped"):
        empty.finish(alias="e", allow_empty=False)
    assert not store.has(empty.key)
    with pytest.raises(ValueError, match="covers 10 rows"):
        store.writer(content_key({"kind": "x"}), {}, **kw).write_shard_rows(0, d[:9], lab[:9], names[:9])


def test_writer_refuses_float16_overflow(tmp_path):
    store = CacheStore(tmp_path)
    w = store.writer(content_key({"k": 1}), {}, shape=(2,), dtype="float16", shard_rows=4, total_rows=2)
    with pytest.raises(UserError, match=r"row 1 \(b\) is NaN or infinite in float16"):
        w.write_shard_rows(0, np.array([[1.0, 2.0], [1e6, 0.0]], np.float32), np.zeros(2), ["a", "b"])


# --------------------------------------------------------------------------------------------------
# Batches, batch size, the writer thread


def test_batches_never_cross_shards_and_auto_batch_probe():
    b = runner.plan_batches([2, 0], shard_rows=5, total=13, batch_size=2)
    assert b == [[10, 11], [12], [0, 1], [2, 3], [4]]
    calls = []

    def run(size: int) -> float:
        calls.append(size)
        if size > 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return size / min(size, 8) * 0.01  # throughput grows up to 8, then flat

    oom = lambda e: isinstance(e, torch.cuda.OutOfMemoryError)  # noqa: E731
    assert probe_batch_size(run, 1024, is_oom=oom) == 8 and calls[-1] == 16
    assert probe_batch_size(lambda s: 0.01, 1024, is_oom=oom, min_gain=0.5) == 1024
    assert probe_batch_size(lambda s: 1 / (s * 4), 64, is_oom=oom) == 64  # capped
    with pytest.raises(ValueError):
        probe_batch_size(lambda s: (_ for _ in ()).throw(ValueError("bug")), 8, is_oom=oom)
    cfg = load_config(None, ["extract.batch_size=auto"])
    assert choose_batch_size(cfg, _FakeModel(), (32, 32), Ranks()) == AUTO_BATCH_CPU
    with pytest.raises(UserError, match="must be an integer or auto"):
        load_config(None, ["extract.batch_size=huge"])


class _FakeModel:
    device = torch.device("cpu")


def test_writer_thread_errors_surface_in_the_caller():
    seen = []

    def consume(item):
        if item == 3:
            raise OSError("disk full")
        seen.append(item)

    with pytest.raises(OSError, match="disk full"):
        with WriterThread(consume, maxsize=2) as w:
            for k in range(100):
                w.put(k)
    assert seen == [0, 1, 2]


# --------------------------------------------------------------------------------------------------
# The runner


@pytest.mark.slow
def test_few_hundred_images_memory_stays_one_shard_per_layer(tmp_path, monkeypatch):
    """Resident memory is bounded by batch and shard, not dataset: the writer never holds more than
    one shard per layer (checked on the sink), the queue to it is bounded, and the rows are right."""
    root = _folder(tmp_path / "ds", 300)
    sinks = []

    class Recording(ShardSink):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            sinks.append(self)

    monkeypatch.setattr(runner, "ShardSink", Recording)
    cfg = _cfg(root, "extract.shard_rows=32", "extract.batch_size=8", "extract.num_workers=2")
    store = CacheStore(tmp_path / "c")
    seen = []
    entries = runner.run_extraction(cfg, store, progress=lambda d, done, total: seen.append((done, total)))
    assert [e.count for e in entries] == [300, 300] and not any(e.reused for e in entries)
    assert seen[-1] == (300, 300)
    [sink] = sinks
    assert all(0 < m <= 32 for m in sink.max_buffered.values())
    assert sink.written == {0: list(range(10)), 1: list(range(10))}
    assert WRITER_QUEUE <= 8
    # Rows equal an independent per-image computation (GeoAlign's recipe, image by image).
    net = build_model(cfg, torch.device("cpu"), "float32").net
    e = store.open("t@1")
    got, labels, names = e.read()
    from cvgl.extract.images import ImageDataset

    images = image_lists(cfg, store)[0]
    ds = ImageDataset(images, resize=32)
    for i in (0, 137, 299):
        tokens = net.forward_layers(ds[i][1][None], [1])[1][0, net.num_prefix_tokens :]
        vec = F.normalize(F.normalize(tokens, dim=-1).clamp(min=1e-6).pow(3).mean(0).pow(1 / 3), dim=0)
        torch.testing.assert_close(torch.from_numpy(got[i]), vec, atol=1e-5, rtol=1e-4)
        assert names[i] == images.names[i] and labels[i] == images.labels[i]
    assert runner.run_extraction(cfg, store)[0].reused  # second run: nothing computed


@pytest.mark.slow
def test_writer_failure_stops_the_run_then_resume_equals_clean_run(tmp_path, monkeypatch):
    root = _folder(tmp_path / "ds", 40)
    cfg = _cfg(root)
    clean = CacheStore(tmp_path / "clean")
    runner.run_extraction(cfg, clean)
    store = CacheStore(tmp_path / "c")
    real = EntryWriter.write_shard_rows
    calls = []

    def failing(self, *a, **kw):
        calls.append(a[0])
        if len(calls) == 5:
            raise OSError("No space left on device")
        return real(self, *a, **kw)

    monkeypatch.setattr(EntryWriter, "write_shard_rows", failing)
    with pytest.raises(OSError, match="No space left"):
        runner.run_extraction(cfg, store)
    monkeypatch.setattr(EntryWriter, "write_shard_rows", real)
    assert not any(store.has(k) for k in store.keys()) and len(list(store.root.rglob("shard-*.h5"))) == 4
    runner.run_extraction(cfg, store)
    _assert_same(clean, store)


@pytest.mark.slow
def test_corrupt_image_stops_with_its_path_then_skip_bad_goes_on(tmp_path):
    root = _folder(tmp_path / "ds", 40)
    victim = root / "2" / "0022.png"  # image 19 in list order: shard 2 (rows 16..23)
    victim.write_bytes(victim.read_bytes()[:60])
    store = CacheStore(tmp_path / "c")
    with pytest.raises(UserError, match=r"cannot decode image 2/0022.png"):
        runner.run_extraction(_cfg(root), store)
    kept = sorted(store.root.rglob("shard-*.h5"))
    assert [p.name for p in kept] == ["shard-00000.h5", "shard-00001.h5"] * 2  # complete shards stay
    stamps = {p: p.stat().st_mtime_ns for p in kept}
    entries = runner.run_extraction(_cfg(root, "extract.skip_bad=true", "extract.num_workers=2"), store)
    assert [e.count for e in entries] == [39, 39]
    assert all(p.stat().st_mtime_ns == stamps[p] for p in kept)  # resumed, not recomputed
    e = store.open("t@1")
    assert e.manifest.extra["skipped"] == ["2/0022.png"] and "2/0022.png" not in e.names()
    assert store.verify() == {k: [] for k in store.keys()}
    # The other rows equal those of the dataset without the bad file.
    victim.unlink()
    clean = CacheStore(tmp_path / "clean")
    runner.run_extraction(_cfg(root), clean)
    a, b = store.open("t@1").read(), clean.open("t@1").read()
    assert a[2] == b[2]
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)


def test_wrong_weights_name_expected_and_found_shapes(tmp_path):
    from cvgl.extract.dinov3 import load_dinov3
    from safetensors.torch import save_file

    root = _folder(tmp_path / "ds", 4)
    small = load_dinov3("dinov3_vits16", arch_overrides={"depth": 2, "hidden_size": 32, "num_heads": 2})
    ckpt = tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in small.model.state_dict().items()}, str(ckpt))
    cfg = _cfg(root, f"weights={ckpt}", "backbone.arch={depth: 2, hidden_size: 64, num_heads: 2}")
    with pytest.raises(
        UserError, match=r"weights do not fit dinov3_vits16: .* is \[.*32\], expected \[.*64\]"
    ):
        runner.run_extraction(cfg, CacheStore(tmp_path / "c"))
    bad = {f"features.{i}.{p}": torch.zeros(1) for i in (0,) for p in ("weight", "bias")}
    torch.save(bad, tmp_path / "vgg.pth")
    cfg = _cfg(
        root,
        "backbone.name=vgg16",
        "backbone.arch={}",
        "layers=[conv5_3]",
        f"weights={tmp_path / 'vgg.pth'}",
        "pooling.name=max",
    )
    with pytest.raises(UserError, match="missing key|has shape"):
        runner.run_extraction(cfg, CacheStore(tmp_path / "c"))
    with pytest.raises(
        UserError, match=r"are not VGG16 layers; use names such as backbone.layers=\[conv5_3\]"
    ):
        runner.run_extraction(
            _cfg(root, "backbone.name=vgg16", "backbone.arch={}"), CacheStore(tmp_path / "c")
        )
    with pytest.raises(UserError, match="not block indices"):
        runner.run_extraction(_cfg(root, "layers=[conv5_3]"), CacheStore(tmp_path / "c"))
    with pytest.raises(UserError, match="pooling.name=none .*vgg16"):
        runner.run_extraction(_cfg(root, "pooling.name=none"), CacheStore(tmp_path / "c"))


@pytest.mark.parametrize("facet", ["query", "value"])
def test_facets_with_and_without_cls_through_pooling(tmp_path, facet):
    root = _folder(tmp_path / "ds", 6)
    store = CacheStore(tmp_path / "c")
    plain = runner.run_extraction(_cfg(root, f"backbone.facet={facet}", "alias=plain"), store)
    cls = runner.run_extraction(
        _cfg(root, f"backbone.facet={facet}", "pooling.use_cls=true", "alias=cls"), store
    )
    assert {e.key for e in plain}.isdisjoint(e.key for e in cls)  # the option is in the key
    cfg = _cfg(root)
    net = build_model(cfg, torch.device("cpu"), "float32").net
    from cvgl.extract.images import ImageDataset

    x = torch.stack([ImageDataset(image_lists(cfg, store)[0], resize=32)[i][1] for i in range(6)])
    t = net.forward_layers(x, [1], facet=facet)[1]  # [6, 1 + 4 registers + 4 patches, 32]

    def gem(tokens):
        return F.normalize(F.normalize(tokens, dim=-1).clamp(min=1e-6).pow(3).mean(1).pow(1 / 3), dim=-1)

    with_cls = torch.cat([t[:, :1], t[:, 5:]], dim=1)  # CLS + patches; registers never pooled
    for alias, tokens in (("plain@1", t[:, 5:]), ("cls@1", with_cls)):
        got = torch.from_numpy(store.open(alias).read()[0])
        torch.testing.assert_close(got, gem(tokens), atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_vgg16_pooled_descriptors_and_conv_maps(tmp_path):
    from cvgl.extract.vgg16 import CVFT_AERIAL_SIZE, CVFT_GROUND_SIZE, load_vgg16

    root = _folder(tmp_path / "ds", 5)
    store = CacheStore(tmp_path / "c")
    vgg = ["backbone.name=vgg16", "backbone.arch={}", "extract.batch_size=2", "extract.shard_rows=4"]
    runner.run_extraction(
        _cfg(root, *vgg, "layers=[conv5_3]", "pooling.name=max", "pooling.local_norm=false"), store
    )
    cfg = _cfg(
        root, *vgg, "layers=[conv4_3, conv5_3]", "pooling.name=none", "extract.dtype=float16", "alias=m"
    )
    entries = runner.run_extraction(cfg, store)
    assert [e.alias for e in entries] == ["m@conv4_3", "m@conv5_3"]
    net = load_vgg16(seed=0)
    from cvgl.extract.images import ImageDataset

    x = torch.stack([ImageDataset(image_lists(cfg, store)[0], resize=32)[i][1] for i in range(5)])
    torch.testing.assert_close(
        torch.from_numpy(store.open("t@conv5_3").read()[0]),
        F.normalize(net.forward_maps(x, "conv5_3").amax(dim=(2, 3)), dim=1),  # global max, L2-normalized
        atol=1e-5,
        rtol=1e-4,
    )
    maps = store.open("m@conv5_3")
    assert (
        maps.shape == (512, 2, 2) and maps.dtype == "float16" and store.open("m@conv4_3").shape == (512, 4, 4)
    )
    torch.testing.assert_close(
        torch.from_numpy(maps.read()[0]), net.forward_maps(x, "conv5_3").half().float(), atol=2e-3, rtol=2e-3
    )
    model = build_model(
        _cfg(root, *vgg, "layers=[conv5_3]", "pooling.name=none"), torch.device("cpu"), "float32"
    )
    assert model.row_shape("conv5_3", CVFT_GROUND_SIZE) == (512, 7, 39)
    assert model.row_shape("conv5_3", CVFT_AERIAL_SIZE) == (512, 16, 16)


@pytest.mark.slow
def test_vgg16_conv_maps_of_cvusa_pairs(tmp_path):
    """CVFT's input to its transport layer: conv5_3 maps of both views of CVUSA pairs, labelled by pair."""
    root = tmp_path / "CVUSA"
    rng = np.random.default_rng(0)
    lines = []
    for k in range(3):
        x = f"{k:07d}"
        for rel, size in ((f"bingmap/19/{x}.jpg", (64, 64)), (f"streetview/panos/{x}.jpg", (160, 32))):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(root / rel)
        lines.append(f"bingmap/19/{x}.jpg,streetview/panos/{x}.jpg,annotations/{x}.png")
    (root / "splits").mkdir()
    (root / "splits" / "val-19zl.csv").write_text("\n".join(lines))
    cfg = load_config(
        None,
        [
            "layout=cvusa",
            f"root={root}",
            "mode=G2A",
            "dataset.split=val",
            "backbone.name=vgg16",
            "layers=[conv5_3]",
            "backbone.device=cpu",
            "pooling.name=none",
            "preprocess.recipe=cvft",
            "preprocess.normalization=caffe_bgr",
            # CVFT's sizes are 112×616 and 256×256; smaller here to keep the test fast.
            "preprocess.resize_by_view={ground: [32, 160], aerial: [32, 32]}",
            "extract.num_workers=0",
            "alias=cv",
        ],
    )
    store = CacheStore(tmp_path / "c")
    entries = runner.run_extraction(cfg, store)
    assert [e.alias for e in entries] == ["cv.ground@conv5_3", "cv.aerial@conv5_3"]
    g, a = store.open("cv.ground@conv5_3"), store.open("cv.aerial@conv5_3")
    assert g.shape == (512, 2, 10) and a.shape == (512, 2, 2)
    assert g.labels().tolist() == a.labels().tolist() == [0, 1, 2]
    assert g.spec["preprocess"] == {"resize": [32, 160], "normalization": "caffe_bgr", "resample": "box"}
    assert g.spec["backbone"]["arch"] == {"pool": "ceil"}


# --------------------------------------------------------------------------------------------------
# Ranks


@pytest.mark.slow
def test_two_ranks_with_torchrun_equal_one_process_and_resume_a_killed_job(tmp_path, monkeypatch):
    """extract.launcher=torchrun runs 2 CPU ranks (gloo); the entries equal a single-process run value
    for value, and the job resumes from the shards an interrupted run left."""
    root = _folder(tmp_path / "ds", 44)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ranks run with one thread each; keep the reference on the same kernels
    try:
        clean = CacheStore(tmp_path / "clean")
        runner.run_extraction(_cfg(root), clean)
        store = CacheStore(tmp_path / "c")
        real = EntryWriter.write_shard_rows
        calls = []

        def killed(self, *a, **kw):
            calls.append(a[0])
            if len(calls) == 4:
                raise KeyboardInterrupt
            return real(self, *a, **kw)

        monkeypatch.setattr(EntryWriter, "write_shard_rows", killed)
        with pytest.raises(KeyboardInterrupt):
            runner.run_extraction(_cfg(root), store)
        monkeypatch.setattr(EntryWriter, "write_shard_rows", real)
    finally:
        torch.set_num_threads(torch_threads)
    stale = next(store.root.glob("entries/*")) / "shard-00003.h5.tmp-99999"
    stale.write_bytes(b"left by the killed job")
    entries = extract(_cfg(root, "extract.launcher=torchrun", "extract.nproc=2"), store)
    assert [e.reused for e in entries] == [False, False] and [e.count for e in entries] == [44, 44]
    _assert_same(clean, store)
    m = store.open("t@0").manifest
    assert m.extra["ranks"] == 2 and len(m.shards) == 6 and not stale.exists()
    assert store.verify() == {k: [] for k in store.keys()}
