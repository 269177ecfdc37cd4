"""CVFT head, Sinkhorn, loss, trainer (determinism, resume, shard-wise order) and synthetic CVUSA."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cvgl.align.cvft import (
    CVFT,
    FeatureTransport,
    SameConv2d,
    build_model,
    flatten_hwc,
    resize_bilinear_tf,
    sinkhorn_log,
    soft_margin_triplet_loss,
)
from cvgl.align.train_cvft import CVFTConfig, encode_aerial, encode_ground, epoch_order, train_cvft
from cvgl.core.errors import UserError
from cvgl.datasets.synthetic_cvusa import make_synthetic_cvusa, polar_sample_coords
from PIL import Image

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


# ------------------------------------------------------------------------------------ model shapes
@pytest.mark.parametrize("ground_hw", [(7, 39), (7, 38)])
def test_cvft_maps_from_cvft_inputs_give_4096_d_unit_descriptors(ground_hw):
    g = torch.relu(torch.randn(3, 512, *ground_hw))
    a = torch.relu(torch.randn(3, 512, 16, 16))
    for variant, dim in (("cvft", 4096), ("vgg_conv", 4096), ("vgg_gp", 512)):
        model = build_model(variant)
        with torch.no_grad():
            gd, ad = model(g, a)
        assert gd.shape == ad.shape == (3, dim)
        torch.testing.assert_close(gd.norm(dim=1), torch.ones(3))
        torch.testing.assert_close(ad.norm(dim=1), torch.ones(3))
    assert build_model("cvft").transport_matrix(g).shape == (3, 64, 64)


def test_wrong_map_shapes_are_user_errors():
    model = build_model("cvft")
    with pytest.raises(UserError, match="ground maps"):
        model.ground(torch.zeros(1, 256, 7, 39))
    with pytest.raises(UserError, match="16×16"):
        model.aerial(torch.zeros(1, 512, 14, 14))
    with pytest.raises(UserError, match="variant"):
        build_model("cvm_net")


def test_same_conv_pads_like_tensorflow_and_resize_is_tf1_legacy_bilinear():
    conv = SameConv2d(2, 3, kernel=3, stride=2, generator=torch.Generator().manual_seed(0))
    x = torch.randn(1, 2, 16, 7)
    # TF 'SAME', stride 2, k 3: 16 rows → pad (0, 1); 7 columns → pad (1, 1).
    want = F.conv2d(F.pad(x, (1, 1, 0, 1)), conv.weight, conv.bias, stride=2)
    torch.testing.assert_close(conv(x), want)
    assert conv(x).shape[-2:] == (8, 4)
    # TF1 resize_bilinear (align_corners=False): source = dst · in/out, upper neighbour clamped.
    src = torch.randn(1, 1, 4, 20)
    out = resize_bilinear_tf(src, (8, 8))
    for y in range(8):
        for x_ in range(8):
            sy, sx = y * 4 / 8, x_ * 20 / 8
            y0, x0 = int(math.floor(sy)), int(math.floor(sx))
            y1, x1 = min(y0 + 1, 3), min(x0 + 1, 19)
            fy, fx = sy - y0, sx - x0
            v = src[0, 0]
            ref = (v[y0, x0] * (1 - fx) + v[y0, x1] * fx) * (1 - fy) + (
                v[y1, x0] * (1 - fx) + v[y1, x1] * fx
            ) * fy
            assert abs(float(out[0, 0, y, x_] - ref)) < 1e-5


# ----------------------------------------------------------------------------------------- Sinkhorn
def test_sinkhorn_output_is_doubly_stochastic():
    logits = 2.0 * torch.randn(5, 24, 24, generator=torch.Generator().manual_seed(0))
    p = sinkhorn_log(logits, n_iters=20)
    assert (p >= 0).all()
    torch.testing.assert_close(p.sum(dim=-2), torch.ones(5, 24), atol=1e-5, rtol=0)  # columns: last step
    torch.testing.assert_close(p.sum(dim=-1), torch.ones(5, 24), atol=1e-3, rtol=0)  # rows: converged
    # Sharper logits need more iterations; the normalization still converges.
    sharp = sinkhorn_log(1.5 * logits, n_iters=100)
    torch.testing.assert_close(sharp.sum(dim=-1), torch.ones(5, 24), atol=1e-5, rtol=0)
    torch.testing.assert_close(sinkhorn_log(logits, 20, return_log=True).exp(), p)
    with pytest.raises(UserError, match="square"):
        sinkhorn_log(torch.zeros(3, 4))


def test_reference_identity_bias_suppresses_the_identity_at_init():
    """fc bias = I and logits = −100·fc: the diagonal is pushed *down*, T ≈ (J − I)/(n − 1)."""
    n = 16
    zeros = torch.zeros(2, 8, 4, 4)  # zero features: the 1×1-conv branch sees only its bias
    ref = FeatureTransport(8, n)
    with torch.no_grad():
        ref.fc.weight.zero_()  # isolate what the bias alone implies
    t_ref = ref.transport_matrix(zeros)
    torch.testing.assert_close(t_ref, ((torch.ones(n, n) - torch.eye(n)) / (n - 1)).expand(2, n, n))
    # The opposite sign would start from the identity; a zero bias from the uniform plan.
    flipped = FeatureTransport(8, n, logit_scale=100.0)
    uniform = FeatureTransport(8, n, bias_init="uniform")
    with torch.no_grad():
        flipped.fc.weight.zero_()
        uniform.fc.weight.zero_()
    torch.testing.assert_close(flipped.transport_matrix(zeros), torch.eye(n).expand(2, n, n))
    torch.testing.assert_close(uniform.transport_matrix(zeros), torch.full((2, n, n), 1.0 / n))
    # With the real random weights and real-shaped maps, the diagonal is still ≈ e^-100.
    model = CVFT(seed=0)
    with torch.no_grad():
        t = model.transport_matrix(torch.relu(torch.randn(2, 512, 7, 39)))
    assert float(t.diagonal(dim1=1, dim2=2).max()) < 1e-30


def _train_transport_on_permutation(perm: np.ndarray, bias_init: str, seed: int) -> float:
    """Fit a FeatureTransport so that transported ground = aerial; share of rows whose argmax is perm."""
    n, c = len(perm), 16
    gen = torch.Generator().manual_seed(seed)
    model = FeatureTransport(c, n, bias_init=bias_init, generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    p = torch.as_tensor(perm)
    # Pairs share a common pattern, so negatives are close and the loss keeps asking for exactness.
    base = torch.randn(1, c, 4, 4, generator=gen)

    def batch(b: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        g = base + 0.5 * torch.randn(b, c, 4, 4, generator=gen)
        a = torch.empty(b, c, n)
        a[:, :, p] = g.flatten(2)  # ground position i lands on aerial position perm[i]
        return g, (a + 0.05 * torch.randn(a.shape, generator=gen)).view_as(g)

    for _ in range(200):
        g, a = batch()
        loss = soft_margin_triplet_loss(
            F.normalize(flatten_hwc(a), dim=1), F.normalize(flatten_hwc(model(g)), dim=1)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        t = model.transport_matrix(batch(64)[0]).mean(0)
    return float((t.argmax(dim=1).numpy() == perm).mean())


@pytest.mark.slow
def test_trained_transport_recovers_a_known_permutation():
    rng = np.random.default_rng(0)
    # The reference init can never select a diagonal entry (see above): use a derangement for it.
    perm = rng.permutation(16)
    while (perm == np.arange(16)).any():
        perm = rng.permutation(16)
    assert _train_transport_on_permutation(perm, "reference", seed=0) >= 0.9
    # From the uniform init every position is reachable, fixed points included.
    perm = np.random.default_rng(0).permutation(16)
    assert (perm == np.arange(16)).any()
    assert _train_transport_on_permutation(perm, "uniform", seed=0) >= 0.9


# --------------------------------------------------------------------------------------------- loss
def test_loss_matches_direct_loop():
    gen = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(6, 10, generator=gen), dim=1)
    g = F.normalize(torch.randn(6, 10, generator=gen), dim=1)
    b, w = 6, 10.0
    g2s = s2g = 0.0
    for i in range(b):
        for j in range(b):
            d_ij = 2 - 2 * float(a[i] @ g[j])
            d_jj = 2 - 2 * float(a[j] @ g[j])
            d_ii = 2 - 2 * float(a[i] @ g[i])
            g2s += math.log(1 + math.exp(w * (d_jj - d_ij)))
            s2g += math.log(1 + math.exp(w * (d_ii - d_ij)))
    want = (g2s + s2g) / (2 * b * (b - 1))
    assert abs(float(soft_margin_triplet_loss(a, g, w)) - want) < 1e-5
    # Perfectly separated pairs leave only the constant diagonal terms, log 2 / (B − 1).
    eye = torch.eye(6)
    assert abs(float(soft_margin_triplet_loss(eye, eye)) - math.log(2) / 5) < 1e-6


# ------------------------------------------------------------------------------------------ trainer
def _toy_maps(n: int = 40, c: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    aerial = torch.relu(torch.randn(n, c, 8, 8, generator=gen))
    ground = torch.relu(torch.randn(n, c, 4, 10, generator=gen))
    ground[:, :, :, :8] += aerial[:, :, ::2, :]  # some signal the head can learn to match
    return ground, aerial


def _fns(ground: torch.Tensor, aerial: torch.Tensor, log: list | None = None):
    def gfn(idx):
        if log is not None:
            log.append(np.asarray(idx).copy())
        return ground[torch.as_tensor(idx)]

    return gfn, lambda idx: aerial[torch.as_tensor(idx)].numpy()  # arrays work as well as tensors


def _cfg(**kw) -> CVFTConfig:
    base = dict(epochs=3, batch_size=8, lr=1e-3, channels=8, shard_rows=10, buffer_shards=2)
    base.update(kw)
    return CVFTConfig(**base)


def test_training_is_deterministic_by_seed_and_learns():
    ground, aerial = _toy_maps()
    m1, h1 = train_cvft(*_fns(ground, aerial), 40, _cfg(), seed=1)
    m2, h2 = train_cvft(*_fns(ground, aerial), 40, _cfg(prefetch=False), seed=1)
    m3, _ = train_cvft(*_fns(ground, aerial), 40, _cfg(), seed=2)
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not torch.equal(s1["grd_conv.weight"], s3["grd_conv.weight"])
    assert [r["loss"] for r in h1] == [r["loss"] for r in h2]
    assert [r["epoch"] for r in h1] == [1, 2, 3] and h1[0]["steps"] == 5 and h1[0]["pairs_per_s"] > 0
    assert h1[-1]["loss"] < h1[0]["loss"]


def test_resume_from_saved_state_equals_uninterrupted_run(tmp_path):
    ground, aerial = _toy_maps()
    full, full_hist = train_cvft(*_fns(ground, aerial), 40, _cfg(), seed=5)
    saved = []

    def save(state):
        torch.save(state, tmp_path / f"state-{state['epoch']}.pt")
        saved.append(state["epoch"])

    # "Interrupted" after epoch 1, then resumed from what was written to disk.
    train_cvft(*_fns(ground, aerial), 40, _cfg(epochs=1), seed=5, save_state=save)
    state = torch.load(tmp_path / "state-1.pt", weights_only=True)
    seen = []
    resumed, hist = train_cvft(
        *_fns(ground, aerial), 40, _cfg(), seed=5, state=state, on_epoch=lambda r: seen.append(r["epoch"])
    )
    assert saved == [1] and seen == [2, 3]
    a, b = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in hist] == [r["loss"] for r in full_hist]
    with pytest.raises(UserError, match="lr"):
        train_cvft(*_fns(ground, aerial), 40, _cfg(lr=1e-2), seed=5, state=state)
    with pytest.raises(UserError, match="seed"):
        train_cvft(*_fns(ground, aerial), 40, _cfg(), seed=6, state=state)


def test_batches_are_sorted_and_drawn_from_few_shards():
    ground, aerial = _toy_maps(n=80)
    log: list[np.ndarray] = []
    train_cvft(*_fns(ground, aerial, log), 80, _cfg(epochs=1), seed=0)
    batches = log[1:]  # the first call is the shape probe
    assert sorted(np.concatenate(batches).tolist()) == list(range(80))
    for idx in batches:
        assert (np.diff(idx) > 0).all()
        assert len(np.unique(idx // 10)) <= 2 * 2  # a batch spans at most two windows of 2 shards

    rng = np.random.default_rng
    order = epoch_order(95, 10, 3, rng(0))
    assert sorted(order.tolist()) == list(range(95))
    assert np.array_equal(order, epoch_order(95, 10, 3, rng(0)))
    shards = order // 10
    # Window of a row = (rank of its shard's first appearance) // 3: it must never decrease, i.e. each
    # window of 3 shards is drained before the next starts, and rows inside a window are mixed.
    first = {}
    for s in shards.tolist():
        first.setdefault(s, len(first))
    window = np.array([first[s] // 3 for s in shards.tolist()])
    assert (np.diff(window) >= 0).all() and window.max() == 3
    assert not (np.diff(order[window == 0]) > 0).all()


def test_encoders_work_in_blocks_and_match_one_pass():
    ground, aerial = _toy_maps(n=20)
    model, _ = train_cvft(*_fns(ground, aerial), 20, _cfg(epochs=1), seed=0)
    g_all = encode_ground(model, ground, batch_size=7)
    g_blocks = encode_ground(model, [ground[:9], ground[9:].numpy()], batch_size=4)
    torch.testing.assert_close(g_all, g_blocks, rtol=1e-5, atol=1e-6)
    a_all = encode_aerial(model, aerial)
    assert g_all.shape == a_all.shape == (20, 4 * 4 * 8)
    with torch.no_grad():
        torch.testing.assert_close(g_all, model.ground(ground), rtol=1e-5, atol=1e-6)
    # A checkpoint is state dict + JSON config: rebuilding from both gives the same descriptors.
    rebuilt = build_model(**json.loads(json.dumps(model.config)))
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(encode_aerial(rebuilt, aerial), a_all)


def test_vgg_gp_has_nothing_to_train_and_bad_maps_are_user_errors():
    ground, aerial = _toy_maps(n=16)
    model, hist = train_cvft(*_fns(ground, aerial), 16, _cfg(variant="vgg_gp"), seed=0)
    assert hist == [] and encode_ground(model, ground).shape == (16, 16)
    with pytest.raises(UserError, match="ground_maps_fn"):
        train_cvft(lambda idx: ground[0], _fns(ground, aerial)[1], 16, _cfg(), seed=0)
    nan_ground = ground.clone()
    nan_ground[3] = float("nan")
    with pytest.raises(UserError, match="non-finite"):
        train_cvft(*_fns(nan_ground, aerial), 16, _cfg(), seed=0)
    with pytest.raises(UserError, match="variant"):
        dataclasses.replace(_cfg(), variant="cvm")


# -------------------------------------------------------------------------------- synthetic CVUSA
def _digest(root) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_synthetic_cvusa_layout_is_readable_and_deterministic(tmp_path):
    kw = dict(n_pairs=5, train_pairs=3, aerial_size=64, ground_size=(32, 128), seed=7)
    ds = make_synthetic_cvusa(tmp_path / "a", **kw)
    make_synthetic_cvusa(tmp_path / "b", **kw)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    lines = ds.train_csv.read_text().splitlines() + ds.val_csv.read_text().splitlines()
    assert (ds.n_train, ds.n_val, len(lines)) == (3, 2, 5)
    for line in lines:
        sat, grd, ann = line.split(",")
        assert (
            sat.startswith("bingmap/19/")
            and grd.startswith("streetview/panos/")
            and ann.startswith("annotations/")
        )
        assert Image.open(ds.root / sat).size == (64, 64)
        assert Image.open(ds.root / grd).size == (128, 32)
        assert (ds.root / ann).is_file()
    other = make_synthetic_cvusa(tmp_path / "c", **{**kw, "seed": 8})
    assert _digest(tmp_path / "a") != _digest(other.root)
    with pytest.raises(UserError, match="train_pairs"):
        make_synthetic_cvusa(tmp_path / "d", n_pairs=3, train_pairs=3)


def test_synthetic_panorama_is_the_polar_view_of_its_own_tile(tmp_path):
    ds = make_synthetic_cvusa(
        tmp_path, n_pairs=4, train_pairs=2, aerial_size=96, ground_size=(24, 96), seed=0
    )
    rows, cols = polar_sample_coords((24, 96), 96)
    # Top row far (border), bottom row near (centre); middle column looks north (up in the tile).
    assert rows[0, 47] < 2 and abs(rows[-1, 47] - 48) < 3 and abs(cols[0, 47] - 48) < 3
    names = [
        ln.split(",")[:2]
        for ln in ds.train_csv.read_text().splitlines() + ds.val_csv.read_text().splitlines()
    ]
    tiles = [np.asarray(Image.open(ds.root / s), dtype=np.float32).mean(-1) for s, _ in names]
    panos = [np.asarray(Image.open(ds.root / g), dtype=np.float32).mean(-1) for _, g in names]
    ri = np.clip(rows.astype(int), 0, 95)
    ci = np.clip(cols.astype(int), 0, 95)
    corr = np.array([[np.corrcoef(p.ravel(), t[ri, ci].ravel())[0, 1] for t in tiles] for p in panos])
    assert (corr.argmax(axis=1) == np.arange(4)).all()
    assert corr.diagonal().min() > 0.5
