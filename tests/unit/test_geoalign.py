"""GeoAlign stream 1: model layout, gating, optimizer, schedule, and the training loop's guarantees."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from cvgl.align.baselines import EMCVGLConfig, paired_drones, train_emcvgl, train_supervised
from cvgl.align.geoalign import GeoAlignStream1, Stream1Config
from cvgl.align.optim import CAdamW, WarmupCosine, warmup_cosine_factor
from cvgl.align.train_stream1 import train_stream1
from cvgl.align.training import TrainerOptions
from cvgl.core.errors import UserError

SMALL = dict(out_dim=32, vec_dim=64, num_experts=4, top_k=2, num_chunks=8, nhead=2)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def randomized(model: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> torch.nn.Module:
    """Perturb every parameter so zero-initialized projections and unit LayerScales do not hide bugs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def small_model(seed: int = 0, **kw) -> GeoAlignStream1:
    torch.manual_seed(seed)
    return randomized(GeoAlignStream1(Stream1Config(**{**SMALL, **kw})), seed).eval()


def r_at_1(q, ql, g, gl) -> float:
    return 100.0 * (gl[(q @ g.T).argmax(1)] == ql).float().mean().item()


def synthetic(seed: int = 0, n_sat: int = 48, per: int = 6, dim: int = 64):
    """Satellites + drones = fixed nonlinear distortion of their satellite + noise (several per satellite)."""
    g = torch.Generator().manual_seed(seed)
    sat = F.normalize(torch.randn(n_sat, dim, generator=g), dim=-1)
    warp = torch.randn(dim, dim, generator=g) * 3 / dim**0.5
    lab = torch.arange(n_sat).repeat_interleave(per)
    s = sat[lab]
    dro = F.normalize(
        s + torch.tanh(s @ warp) + 0.3 * torch.randn(len(lab), dim, generator=g) / dim**0.5, dim=-1
    )
    return sat, torch.arange(n_sat), dro, lab


# ---------------------------------------------------------------------------------------------- model


def test_state_dict_has_release_layout():
    cfg = Stream1Config(**SMALL)
    sd = GeoAlignStream1(cfg).state_dict()
    c = cfg.vec_dim // cfg.num_chunks
    shapes = {
        "shared_enc.0.weight": (64, 32),
        "shared_enc.1.weight": (64,),
        "moe_layer.gate.0.weight": (16, 64),
        "moe_layer.gate.2.weight": (4, 16),
        "moe_layer.experts.3.pos_embed": (1, 8, c),
        "moe_layer.experts.0.norm1.g": (c,),
        "moe_layer.experts.0.attn.in_proj_weight": (3 * c, c),
        "moe_layer.experts.0.attn.out_proj.weight": (c, c),
        "moe_layer.experts.0.ls1.gamma": (c,),
        "moe_layer.experts.0.norm2.g": (c,),
        "moe_layer.experts.0.ffn.net.0.weight": (4 * c, c),
        "moe_layer.experts.0.ffn.net.3.weight": (c, 4 * c),
        "moe_layer.experts.0.ls2.gamma": (c,),
        "moe_layer.experts.0.proj.weight": (64, 64),
        "dec1.0.weight": (32, 64),
        "dec1.1.running_var": (32,),
        "dec2.0.weight": (32, 64),
        "dec2.1.num_batches_tracked": (),
    }
    for k, shape in shapes.items():
        assert tuple(sd[k].shape) == shape, k
    # dec2 is dec1: same tensors, keys present twice; nothing outside GeoAlign's layout.
    assert sd["dec1.0.weight"].data_ptr() == sd["dec2.0.weight"].data_ptr()
    assert not [k for k in sd if k.split(".")[0] not in {"shared_enc", "moe_layer", "dec1", "dec2"}]
    assert not [k for k in sd if ".ffn.net." in k and k.split(".ffn.net.")[1][0] not in "03"]


@pytest.mark.slow
def test_eval_gate_equals_per_sample_reference():
    model = small_model(1)
    moe = model.moe_layer
    x = torch.randn(23, 64)
    ref = torch.zeros(23, 64)
    with torch.no_grad():
        for b in range(23):  # the reference is a deliberately naive per-sample loop
            p = torch.softmax(moe.gate(x[b : b + 1])[0], dim=-1)
            top_p, top_i = torch.topk(p, 2)
            w = top_p / (top_p.sum() + 1e-6)
            for j in range(2):
                ref[b] += w[j] * moe.experts[int(top_i[j])](x[b : b + 1])[0]
        for dispatch in ("sparse", "dense"):
            moe.dispatch = dispatch
            out, aux, load = moe(x)
            torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)
            assert float(aux) == 0.0 and int(load.sum()) == 23 * 2


def test_train_gate_is_noisy_and_balance_loss_is_switch_style():
    model = small_model(2)
    moe = model.moe_layer
    moe.train()
    x = torch.randn(40, 64)
    with torch.no_grad():
        torch.manual_seed(0)
        probs1, _, _ = moe.route(x)
        probs2, _, _ = moe.route(x)
        assert not torch.allclose(probs1, probs2)  # N(0, 0.25²) logit noise while training
        moe.noisy_gating = False
        _, aux, load = moe(x)
        p = torch.softmax(moe.gate(x), dim=-1)
        chosen = torch.zeros_like(p).scatter(1, p.topk(2, dim=-1).indices, 1.0)
        expected = 4 * ((chosen.sum(0) / 40) * (p.sum(0) / 40)).sum()
        torch.testing.assert_close(aux, expected)
        torch.testing.assert_close(load, chosen.sum(0))


def test_moe_runs_on_the_drone_branch_only():
    model = small_model(3)
    x = torch.randn(10, 32)
    sat, dro = model(x, "sat"), model(x, "dro")
    torch.testing.assert_close(sat, F.normalize(model.shared_enc(x), dim=-1))
    with torch.no_grad():
        for p in model.moe_layer.parameters():
            p.add_(1.0)
    torch.testing.assert_close(model(x, "sat"), sat)
    assert not torch.allclose(model(x, "dro"), dro)


def test_fresh_adapter_treats_both_views_alike():
    # Zero-initialized expert projections: the MoE residual starts at exactly zero.
    model = GeoAlignStream1(Stream1Config(**SMALL)).eval()
    x = torch.randn(5, 32)
    torch.testing.assert_close(model(x, "dro"), model(x, "sat"))


def test_describe_rejects_wrong_width():
    with pytest.raises(UserError, match="expected \\[N, 32\\]"):
        small_model().describe(torch.randn(4, 31), "sat")


# --------------------------------------------------------------------------------------------- config

RELEASE_YAML = """
model:
  name: AutoEnc_MoE
  out_dim: 1280
  vec_dim: 2560
  num_steps: 1
  norm: true
  query_num: 700
  num_experts: 4
  top_k: 2
  noisy_gating: true
  dropout: 0.1
  num_chunks: 20
  nhead: 4
  residul: false
workers: 4
train:
  dataset: U1652_Random_drone
  data_path: /somewhere/
  dro_num: 1
  loss: [CycleAELoss]
  idt_w: 1.0
  feat_w: 0.001
  lambda_moe: 0.01
  distill_w: 1.05
  sinkhorn_eps_start: 0.2
  sinkhorn_eps_end: 0.05
  sinkhorn_iters: 3
  label_smoothing: 0.15
  epochs: 300
  batch_size: 701
  lr: 0.0002
  warm_epochs: 1
  optim: CAdamW
  scheduler: cosine
  clip_grad: 100.
  mutual_match: True
  keep_neg: True
  pseudo_thr: 0.2
eval:
  feat: feats_test/dinov3_vith16plus/28
"""


def test_config_defaults_are_the_release_and_yaml_reads_every_dim(tmp_path):
    p = tmp_path / "base_stream1.yml"
    p.write_text(RELEASE_YAML)
    assert Stream1Config.from_yaml(p) == Stream1Config()
    p.write_text(RELEASE_YAML.replace("nhead: 4", "nhead: 5").replace("vec_dim: 2560", "vec_dim: 2000"))
    cfg = Stream1Config.from_yaml(p)
    assert (cfg.vec_dim, cfg.nhead, cfg.num_chunks) == (2000, 5, 20)
    p.write_text(RELEASE_YAML.replace("lr: 0.0002", "lr: 2e-4"))  # PyYAML reads this as a string
    assert Stream1Config.from_yaml(p).lr == 2e-4


def test_bad_configs_raise_user_errors(tmp_path):
    with pytest.raises(UserError, match="num_chunks"):
        Stream1Config(vec_dim=100, num_chunks=3)
    with pytest.raises(UserError, match="nhead"):
        Stream1Config(vec_dim=64, num_chunks=8, nhead=3)
    with pytest.raises(UserError, match="not found"):
        Stream1Config.from_yaml(tmp_path / "missing.yml")
    p = tmp_path / "bad.yml"
    p.write_text("model:\n  name: AutoEnc_MoE\n  nhead: four\n")
    with pytest.raises(UserError, match="nhead='four'"):
        Stream1Config.from_yaml(p)
    p = tmp_path / "other.yml"
    p.write_text("model:\n  name: AutoEnc2_share\n")
    with pytest.raises(UserError, match="AutoEnc_MoE"):
        Stream1Config.from_yaml(p)


# ------------------------------------------------------------------------------------------ optimizer


def test_cadamw_equals_adamw_when_all_signs_agree():
    torch.manual_seed(0)
    p1 = torch.nn.Parameter(torch.randn(50))
    p2 = torch.nn.Parameter(p1.detach().clone())
    grad = torch.randn(50)
    ours = CAdamW([p1], lr=1e-2, weight_decay=0.05)
    ref = torch.optim.AdamW([p2], lr=1e-2, weight_decay=0.05)
    for step in range(6):
        # Same sign every step: the first moment never disagrees with the gradient.
        g = grad * (1.0 + 0.1 * step)
        p1.grad, p2.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    torch.testing.assert_close(p1, p2, atol=1e-7, rtol=1e-6)


def test_cadamw_skips_disagreeing_coordinates_and_rescales_the_rest():
    p = torch.nn.Parameter(torch.zeros(4))
    opt = CAdamW([p], lr=0.1, weight_decay=0.0)
    p.grad = torch.ones(4)
    opt.step()
    before = p.detach().clone()
    # Coordinates 0, 1 flip sign (the momentum still points the old way): they must not move.
    p.grad = torch.tensor([-0.01, -0.01, 1.0, 1.0])
    opt.step()
    delta = p.detach() - before
    assert torch.equal(delta[:2], torch.zeros(2))
    # The other half is rescaled by 1 / mean(mask) = 2 relative to a plain AdamW step.
    q = torch.nn.Parameter(torch.zeros(4))
    ref = torch.optim.AdamW([q], lr=0.1, weight_decay=0.0)
    q.grad = torch.ones(4)
    ref.step()
    q_before = q.detach().clone()
    q.grad = torch.tensor([-0.01, -0.01, 1.0, 1.0])
    ref.step()
    torch.testing.assert_close(delta[2:], 2 * (q.detach() - q_before)[2:])


def test_warmup_cosine_schedule():
    assert warmup_cosine_factor(0, 1, 300) == 0.0  # transformers' warm-up: the first step runs at lr 0
    assert warmup_cosine_factor(1, 1, 300) == 1.0
    assert warmup_cosine_factor(300, 1, 300) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine_factor(150, 0, 300) == pytest.approx(0.5)
    f = [warmup_cosine_factor(s, 5, 100) for s in range(101)]
    assert f[:6] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0] and all(a >= b for a, b in zip(f[5:], f[6:]))
    assert warmup_cosine_factor(50, 5, 100, "constant") == 1.0
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    s = WarmupCosine(opt, 2, 10)
    for _ in range(4):
        s.step()
    s2 = WarmupCosine(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0), 2, 10)
    s2.load_state_dict(s.state_dict())
    assert s2.get_last_lr() == s.get_last_lr() == [2.0 * warmup_cosine_factor(4, 2, 10)]


# ------------------------------------------------------------------------------------------- training

TINY = dict(**SMALL, epochs=4, batch_size=16, dro_num=2, lr=1e-3)


def test_training_is_deterministic_by_seed():
    sat, _, dro, _ = synthetic(n_sat=16, per=3, dim=32)
    rng_before = torch.get_rng_state()
    m1, h1 = train_stream1(sat, dro, Stream1Config(**TINY), opts=TrainerOptions(seed=7))
    m2, h2 = train_stream1(sat, dro, Stream1Config(**TINY), opts=TrainerOptions(seed=7))
    m3, _ = train_stream1(sat, dro, Stream1Config(**TINY), opts=TrainerOptions(seed=8))
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is untouched
    for k, v in m1.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k
    assert h1 == h2
    assert not torch.equal(m1.shared_enc[0].weight, m3.shared_enc[0].weight)


def test_resume_from_epoch_k_matches_uninterrupted(tmp_path):
    sat, sl, dro, dl = synthetic(n_sat=16, per=3, dim=32)
    cfg = Stream1Config(**TINY)
    saved: dict[int, bytes] = {}

    def save(epoch, state):
        buf = io.BytesIO()
        torch.save(state, buf)  # must survive a round trip through a weights_only load
        saved[epoch] = buf.getvalue()

    full, hist = train_stream1(sat, dro, cfg, sat_labels=sl, dro_labels=dl, opts=TrainerOptions(seed=3, save_state=save))
    assert sorted(saved) == [1, 2, 3, 4]
    state = torch.load(io.BytesIO(saved[2]), weights_only=True)
    resumed, hist2 = train_stream1(sat, dro, cfg, sat_labels=sl, dro_labels=dl, opts=TrainerOptions(seed=3, state=state))
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert hist == hist2 and "pl_acc" in hist[-1]
    with pytest.raises(UserError, match="different config"):
        train_stream1(sat, dro, cfg.replace(lr=5e-4), opts=TrainerOptions(seed=3, state=state))


@pytest.mark.slow
def test_stream1_training_beats_raw_descriptors():
    sat, sl, dro, dl = synthetic()
    raw = r_at_1(dro, dl, sat, sl)
    cfg = Stream1Config(
        out_dim=64, vec_dim=128, num_chunks=8, nhead=4, epochs=90, batch_size=48, dro_num=2, lr=2e-3
    )
    model, hist = train_stream1(sat, dro, cfg, sat_labels=sl, dro_labels=dl)
    adapted = r_at_1(model.describe(dro, "dro"), dl, model.describe(sat, "sat"), sl)
    assert adapted >= raw + 5.0, (raw, adapted)
    assert hist[-1]["eps"] == pytest.approx(0.05) and hist[0]["eps"] == pytest.approx(0.2)
    assert hist[-1]["pl_acc"] > hist[0]["pl_acc"]


def test_training_rejects_bad_input():
    sat, sl, dro, dl = synthetic(n_sat=8, per=2, dim=32)
    cfg = Stream1Config(**TINY)
    with pytest.raises(UserError, match="out_dim"):
        train_stream1(sat, dro[:, :31], cfg)
    bad = dro.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(UserError, match="NaN"):
        train_stream1(sat, bad, cfg)
    with pytest.raises(UserError, match="one label per row"):
        train_stream1(sat, dro, cfg, sat_labels=sl[:-1], dro_labels=dl)
    with pytest.raises(UserError, match="not a geoalign_stream1 training state"):
        train_stream1(sat, dro, cfg, opts=TrainerOptions(state={"format": "something else"}))


# ------------------------------------------------------------------------------------------ baselines


def test_paired_draw_gives_true_pairs():
    sat_labels = torch.tensor([5, 7, 9, 11])
    dro_labels = torch.tensor([7, 5, 5, 9, 7, 7])
    draw = paired_drones(sat_labels, dro_labels, per_sat=3)
    idx, keep = draw(torch.tensor([0, 1, 2, 3]), torch.Generator().manual_seed(0))
    assert keep.tolist() == [True, True, True, False]  # label 11 has no drone
    assert dro_labels[idx].tolist() == [5, 5, 5, 7, 7, 7, 9, 9, 9]


def test_baselines_train_and_describe():
    sat, sl, dro, dl = synthetic(n_sat=16, per=3, dim=32)
    em, hist = train_emcvgl(
        sat, dro, EMCVGLConfig(out_dim=32, vec_dim=48, epochs=3, batch_size=16), sat_labels=sl, dro_labels=dl
    )
    assert em.describe(dro).shape == (48, 48) and len(hist) == 3 and "pl_acc" in hist[0]
    sup, hist = train_supervised(sat, dro, Stream1Config(**TINY), sat_labels=sl, dro_labels=dl)
    assert sup.describe(dro, "dro").shape == (48, 64) and len(hist) == 4
    with pytest.raises(UserError, match="sat_labels and dro_labels"):
        train_supervised(sat, dro, Stream1Config(**TINY), sat_labels=None, dro_labels=None)


# --------------------------------------------------------------- choices the paper leaves open


def test_isometric_init_keeps_the_backbone_geometry_and_default_init_does_not():
    """An untrained adapter must rank like raw descriptors: the first pseudo-labels depend on it."""
    from cvgl.align.synthetic import CrossViewWorld

    data = CrossViewWorld(dim=32, seed=3).sample(60, 5, seed=4)
    sat = torch.from_numpy(data.satellite[28])
    dro = torch.from_numpy(data.drone[28])
    sl = torch.from_numpy(data.satellite_labels)
    dl = torch.from_numpy(data.drone_labels)
    raw = r_at_1(dro, dl, sat, sl)
    got = {}
    for init in ("isometric", "default"):
        torch.manual_seed(0)
        m = GeoAlignStream1(Stream1Config(**{**SMALL, "init": init})).eval()
        got[init] = r_at_1(m.describe(dro, "dro"), dl, m.describe(sat, "sat"), sl)
        if init == "isometric":
            w = m.shared_enc[0].weight
            assert torch.allclose(w.T @ w, torch.eye(SMALL["out_dim"]), atol=1e-5)
            assert torch.equal(m.dec1[0].weight, w.T)
            assert not m.shared_enc[0].bias.any() and not m.dec1[0].bias.any()
    assert abs(got["isometric"] - raw) <= 3.0, (raw, got)
    assert got["default"] < raw - 5.0, (raw, got)  # why the default is not PyTorch's init
    with pytest.raises(UserError, match="init"):
        Stream1Config(init="xavier")
    with pytest.raises(UserError, match="init"):
        EMCVGLConfig(init="xavier")


def test_curriculum_anneals_over_its_fraction_then_holds():
    sat, sl, dro, dl = synthetic(n_sat=16, per=2, dim=32)
    cfg = Stream1Config(**{**SMALL, "epochs": 10, "batch_size": 16, "curriculum_fraction": 0.3})
    _, hist = train_stream1(sat, dro, cfg)
    eps = [h["eps"] for h in hist]
    assert eps[:3] == pytest.approx([0.2, 0.125, 0.05])
    assert eps[3:] == pytest.approx([0.05] * 7)
    _, hist = train_stream1(sat, dro, cfg.replace(curriculum_fraction=1.0))
    assert [h["eps"] for h in hist] == pytest.approx([0.2 - 0.15 * e / 9 for e in range(10)])
    with pytest.raises(UserError, match="curriculum_fraction"):
        Stream1Config(curriculum_fraction=0.0)


def test_reliability_runs_on_the_chosen_score():
    """match_on=similarity keeps the mutual nearest neighbours of the cosines, plan those of the plan."""
    from cvgl.align.losses import reliable_matches, sinkhorn, stream1_loss

    sat, sl, dro, dl = synthetic(n_sat=24, per=3, dim=32)
    torch.manual_seed(0)
    model = randomized(GeoAlignStream1(Stream1Config(**SMALL)), 1, 0.05).train()
    torch.manual_seed(1)
    out = model.train_forward(sat, dro)
    sim = F.normalize(out["enc_a"], dim=-1) @ F.normalize(out["enc_b"], dim=-1).T
    kw = dict(
        iters=3,
        label_smoothing=0.15,
        pseudo_thr=0.0,
        mutual_match=True,
        keep_neg=True,
        distill_w=1.0,
        idt_w=1.0,
        lambda_A=1.0,
        lambda_B=1.0,
        feat_w=0.0,
        lambda_moe=0.0,
    )
    shares = {}
    for on in ("similarity", "plan"):
        _, stats = stream1_loss(out, sat, dro, torch.tensor(10.0), eps=0.05, match_on=on, **kw)
        score = sim.detach() if on == "similarity" else sinkhorn(sim.detach(), 0.05, 3)
        want = reliable_matches(score, sim.detach(), 0.0, True).dro_keep.float().mean().item()
        assert stats["reliable_dro"] == pytest.approx(want)
        shares[on] = want
    assert shares["similarity"] != shares["plan"]
    with pytest.raises(UserError, match="match_on"):
        Stream1Config(match_on="both")


def test_curriculum_span_never_skips_the_curriculum():
    from cvgl.align.train_stream1 import curriculum_span

    assert curriculum_span(0.3, 300) == 90 and curriculum_span(0.3, 10) == 3
    assert curriculum_span(0.3, 4) == 2 and curriculum_span(0.3, 2) == 2 and curriculum_span(0.3, 1) == 1
    assert curriculum_span(1.0, 7) == 7 and curriculum_span(0.5, 5) == 3
