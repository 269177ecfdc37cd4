"""OTCA/DAMO building blocks: Sinkhorn, curriculum, pseudo-labels, reliability filter, losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from cvgl.align.losses import (
    MIN_MUTUAL,
    Matches,
    bidirectional_distillation,
    curriculum_eps,
    hard_pseudo_label_infonce,
    label_match_targets,
    masked_soft_ce,
    one_hot_smoothed,
    reliable_matches,
    sinkhorn,
    soft_pseudo_labels,
    stream1_loss,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def cosine_scores(m: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (
        F.normalize(torch.randn(m, 16, generator=g), dim=-1)
        @ F.normalize(torch.randn(n, 16, generator=g), dim=-1).T
    )


def test_sinkhorn_marginals_converge_to_uniform():
    s = cosine_scores(30, 50)
    p = sinkhorn(s, eps=0.1, iters=300)
    assert p.sum().item() == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(p.sum(1), torch.full((30,), 1 / 30), atol=1e-5, rtol=0)
    torch.testing.assert_close(p.sum(0), torch.full((50,), 1 / 50), atol=1e-6, rtol=0)


def test_sinkhorn_three_iterations_end_with_exact_drone_marginal():
    s = cosine_scores(20, 35, seed=1)
    p = sinkhorn(s, eps=0.2, iters=3)
    torch.testing.assert_close(p.sum(0), torch.full((35,), 1 / 35), atol=1e-6, rtol=0)
    # The satellite marginal is approximate after 3 rounds but already close.
    assert (p.sum(1) * 20 - 1).abs().max() < 0.05


def test_sinkhorn_matches_plain_matrix_scaling():
    s = cosine_scores(8, 12, seed=2)
    eps, iters = 0.3, 5
    k = torch.exp(s.double() / eps)
    a, b = torch.full((8,), 1 / 8, dtype=torch.double), torch.full((12,), 1 / 12, dtype=torch.double)
    u, v = torch.ones(8, dtype=torch.double), torch.ones(12, dtype=torch.double)
    for _ in range(iters):
        u = a / (k @ v)
        v = b / (k.T @ u)
    torch.testing.assert_close(
        sinkhorn(s, eps, iters).double(), u[:, None] * k * v[None, :], atol=1e-7, rtol=1e-5
    )


def test_sinkhorn_is_stable_at_small_entropy():
    s = cosine_scores(40, 40, seed=3) * 5  # scores far beyond exp's float range at eps 0.01
    p = sinkhorn(s, eps=0.01, iters=3)
    assert torch.isfinite(p).all() and p.sum().item() == pytest.approx(1.0, abs=1e-4)


def test_curriculum_eps_endpoints_and_monotone():
    e = [curriculum_eps(k, 300, 0.2, 0.05) for k in range(300)]
    assert e[0] == pytest.approx(0.2) and e[-1] == pytest.approx(0.05)
    assert all(a > b for a, b in zip(e, e[1:]))
    assert curriculum_eps(0, 1, 0.2, 0.05) == 0.05
    assert curriculum_eps(500, 300, 0.2, 0.05) == pytest.approx(0.05)


def test_soft_pseudo_labels_are_smoothed_distributions():
    p = sinkhorn(cosine_scores(10, 14), 0.1, 3)
    q_s2d, q_d2s = soft_pseudo_labels(p, 0.15)
    assert q_s2d.shape == (10, 14) and q_d2s.shape == (14, 10)
    torch.testing.assert_close(q_s2d.sum(1), torch.ones(10))
    torch.testing.assert_close(q_d2s.sum(1), torch.ones(14))
    assert q_s2d.min() >= 0.15 / 14 - 1e-7 and q_d2s.min() >= 0.15 / 10 - 1e-7


def test_reliable_matches_keep_mutual_pairs_above_threshold():
    n = MIN_MUTUAL + 5
    sim = torch.full((n, n), 0.1)
    sim.fill_diagonal_(0.9)
    sim[0, 0] = 0.15  # still the best match of row 0 / column 0, but below the threshold
    sim[1, 2] = 0.95  # satellite 1 and drone 2 pick each other: satellite 2 and drone 1 lose their partner
    m = reliable_matches(sim, sim, thr=0.2, mutual=True)
    assert m.mutual_used
    assert m.sat_keep.tolist() == [False, True, False] + [True] * (n - 3)
    expected_dro = [False, False, True] + [True] * (n - 3)
    assert m.dro_keep.tolist() == expected_dro
    assert m.sat_best[1] == 2 and m.dro_best[2] == 1
    # With too few mutual pairs, EM-CVGL's rule falls back to plain best matches.
    small = sim[:5, :5]
    m2 = reliable_matches(small, small, thr=0.2, mutual=True)
    assert not m2.mutual_used and m2.dro_keep[1]


def test_one_hot_soft_ce_equals_cross_entropy_with_label_smoothing():
    logits = torch.randn(7, 9)
    idx = torch.randint(9, (7,))
    rows = torch.ones(7, dtype=torch.bool)
    ours = masked_soft_ce(logits, one_hot_smoothed(idx, 9, 0.15), rows, None)
    torch.testing.assert_close(ours, F.cross_entropy(logits, idx, label_smoothing=0.15))


def test_masked_candidates_and_empty_selection():
    logits = torch.randn(4, 6, requires_grad=True)
    target = torch.softmax(torch.randn(4, 6), dim=1)
    cols = torch.tensor([True, False, True, True, False, True])
    rows = torch.tensor([True, False, True, False])
    loss = masked_soft_ce(logits, target, rows, cols)
    t = target[:, cols] / target[:, cols].sum(1, keepdim=True)
    ref = -(t * logits[:, cols].log_softmax(1)).sum(1)[rows].mean()
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[:, ~cols] == 0).all()
    empty = masked_soft_ce(logits, target, torch.zeros(4, dtype=torch.bool), None)
    assert empty.item() == 0.0


def test_distillation_is_bidirectional_and_prefers_the_targets():
    sim = cosine_scores(6, 6, seed=4)
    plan = sinkhorn(sim, 0.05, 50)
    q_s2d, q_d2s = soft_pseudo_labels(plan, 0.0)
    keep = torch.ones(6, dtype=torch.bool)
    matches = Matches(plan.argmax(1), plan.argmax(0), keep, keep, False)
    l_d2s, l_s2d = bidirectional_distillation(sim, torch.tensor(20.0), q_s2d, q_d2s, matches, keep_neg=True)
    ref_s2d = -(q_s2d * (20 * sim).log_softmax(1)).sum(1).mean()
    ref_d2s = -(q_d2s * (20 * sim).T.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(l_s2d, ref_s2d)
    torch.testing.assert_close(l_d2s, ref_d2s)


def test_hard_infonce_without_negatives_is_finite():
    sim = cosine_scores(MIN_MUTUAL + 8, MIN_MUTUAL + 8, seed=5).requires_grad_()
    loss, m = hard_pseudo_label_infonce(
        sim, torch.tensor(14.28), pseudo_thr=-1.0, mutual_match=True, keep_neg=False, label_smoothing=0.1
    )
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(sim.grad).all()


def test_label_match_targets():
    t_s2d, t_d2s = label_match_targets(torch.tensor([1, 2, 3]), torch.tensor([2, 1, 1, 4]))
    assert t_s2d.tolist() == [[0, 0.5, 0.5, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert t_d2s[3].sum() == 0 and t_d2s[1].tolist() == [1, 0, 0]


def test_stream1_loss_is_the_documented_weighted_sum():
    g = torch.Generator().manual_seed(6)
    sat, dro = torch.randn(12, 8, generator=g), torch.randn(12, 8, generator=g)
    out = {
        k: torch.randn(12, d, generator=g)
        for k, d in (
            ("enc_a", 16),
            ("enc_b", 16),
            ("enc_ba", 16),
            ("rec_a", 8),
            ("rec_b", 8),
            ("cyc_aba", 8),
            ("cyc_bab", 8),
        )
    }
    out["aux"] = torch.tensor(2.5)
    w = dict(distill_w=1.05, idt_w=0.7, lambda_A=0.3, lambda_B=0.4, feat_w=0.01, lambda_moe=0.02)
    loss, st = stream1_loss(
        out,
        sat,
        dro,
        torch.tensor(10.0),
        eps=0.1,
        iters=3,
        label_smoothing=0.15,
        pseudo_thr=-1.0,
        mutual_match=False,
        keep_neg=True,
        **w,
    )
    l1 = lambda a, b: (F.normalize(a, dim=-1) - F.normalize(b, dim=-1)).abs().mean()  # noqa: E731
    cyc = 0.3 * l1(out["cyc_aba"], sat) + 0.4 * l1(out["cyc_bab"], dro)
    rec = l1(out["rec_a"], sat) + l1(out["rec_b"], dro)
    feat = (F.normalize(out["enc_ba"], dim=-1) - F.normalize(out["enc_b"], dim=-1)).pow(2).mean()
    expected = 1.05 * st["distill"] + 0.7 * rec + cyc + 0.01 * feat + 0.02 * 2.5
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert st["rec"] == pytest.approx(rec.item(), rel=1e-5) and st["reliable_dro"] == 1.0
