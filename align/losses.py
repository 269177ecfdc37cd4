"""Losses of GeoAlign stream 1 (OTCA + DAMO) and of the EM-CVGL / supervised baselines.

Notation: a batch of ``m`` satellites (view A) and ``n`` drones (view B); ``za``/``zb`` their
L2-normalized adapter codes; ``S = za zbᵀ`` [m, n] the cosine similarities; ``s`` the student's logit
scale: ``1/τ`` with ``τ = r·ε(epoch)`` for stream 1 (targets always sharper than predictions by ``r``,
see ``Stream1Config.student_temp_ratio``), the learnable ``exp(t)`` for the InfoNCE baselines.
Everything is vectorized over the batch: no per-sample Python loops.

* OTCA (optimal-transport curriculum alignment): an entropic transport plan ``P`` between the two
  views (:func:`sinkhorn`) with an entropy ``ε`` annealed from coarse to sharp
  (:func:`curriculum_eps`) gives soft pseudo-labels (:func:`soft_pseudo_labels`); mutual best matches
  above a similarity threshold are the reliable ones (:func:`reliable_matches`).
* DAMO (distribution-aware mutual optimization): the adapter is distilled from those soft labels in
  both directions (:func:`bidirectional_distillation`), while reconstruction, cycle and expert
  load-balance terms keep the codes informative and the router spread (:func:`stream1_loss`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

# EM-CVGL only trusts mutual matching once it finds more than this many mutual pairs; before that
# (a random adapter at the start) it falls back to plain best matches.
MIN_MUTUAL = 10

F_ = TypeVar("F_", bound=Callable[..., Any])


def _to_float32(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.float() if obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return {k: _to_float32(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_float32(v) for v in obj)
    return obj


def float32_loss(fn: F_) -> F_:
    """Run a loss in float32 when called under autocast (its floating tensor arguments cast up).

    With ``align.dtype=bfloat16`` only the adapter runs in bf16: the Sinkhorn targets divide cosine
    similarities by ε = 0.05, where bf16's 8-bit mantissa would move the logits by up to ~0.1.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kw: Any) -> Any:
        dev = next(
            (a.device.type for a in (*args, *kw.values()) if isinstance(a, torch.Tensor)), "cpu"
        )
        if not torch.is_autocast_enabled(dev):
            return fn(*args, **kw)
        with torch.autocast(dev, enabled=False):
            return fn(*_to_float32(args), **_to_float32(kw))

    return wrapper  # type: ignore[return-value]


def curriculum_eps(epoch: int, epochs: int, start: float, end: float) -> float:
    """Entropy of the Sinkhorn plan at ``epoch`` (0-based): linear from ``start`` to ``end``.

    ``ε(e) = start + (end − start) · e / (epochs − 1)``; ``ε(0) = start``, ``ε(epochs−1) = end``.
    A large ε early gives flat, forgiving soft labels while the codes are still poor; a small ε late
    gives nearly hard one-to-one labels once the views are aligned.
    """
    if epochs <= 1:
        return float(end)
    t = min(max(epoch, 0), epochs - 1) / (epochs - 1)
    return float(start + (end - start) * t)


def sinkhorn(scores: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    """Log-domain entropic optimal transport between the rows and columns of ``scores`` [m, n].

    Solves ``max_P ⟨P, S⟩ + ε H(P)`` s.t. ``P 1 = 1/m``, ``Pᵀ 1 = 1/n`` by alternating dual updates
    (Cuturi 2013, in log space so that small ε does not underflow)::

        f ← log a − logsumexp_j(S_ij/ε + g_j),   g ← log b − logsumexp_i(S_ij/ε + f_i)
        P_ij = exp(S_ij/ε + f_i + g_j)

    with uniform ``a = 1/m``, ``b = 1/n``: every satellite and every drone gets the same mass, which is
    what stops the pseudo-labels from collapsing onto a few "hub" satellites. After ``iters`` rounds
    the column (drone) marginal is exact and the row marginal approximate; GeoAlign uses 3 rounds.
    Returns ``P`` (sums to 1). No gradient is needed through it (pseudo-labels are targets).
    """
    m, n = scores.shape
    log_k = scores.float() / eps
    log_a = -math.log(m)
    log_b = -math.log(n)
    f = log_k.new_zeros(m)
    g = log_k.new_zeros(n)
    for _ in range(iters):
        f = log_a - torch.logsumexp(log_k + g[None, :], dim=1)
        g = log_b - torch.logsumexp(log_k + f[:, None], dim=0)
    return torch.exp(log_k + f[:, None] + g[None, :])


def soft_pseudo_labels(plan: torch.Tensor, label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-normalized targets from a transport plan, smoothed.

    ``Q_s2d[i, :] = P[i, :] / Σ_j P[i, j]`` (each satellite's distribution over drones) and
    ``Q_d2s[j, :] = P[:, j] / Σ_i P[i, j]`` (each drone's distribution over satellites), then
    ``Q ← (1 − λ) Q + λ / K`` with ``K`` the number of candidates (λ = label smoothing).
    Returns ``(Q_s2d [m, n], Q_d2s [n, m])``.
    """
    q_s2d = plan / plan.sum(dim=1, keepdim=True).clamp_min(1e-30)
    q_d2s = (plan / plan.sum(dim=0, keepdim=True).clamp_min(1e-30)).T
    if label_smoothing > 0:
        q_s2d = (1 - label_smoothing) * q_s2d + label_smoothing / q_s2d.shape[1]
        q_d2s = (1 - label_smoothing) * q_d2s + label_smoothing / q_d2s.shape[1]
    return q_s2d, q_d2s


@dataclass
class Matches:
    """Best matches and the reliable subset, for satellites (rows) and drones (columns)."""

    sat_best: torch.Tensor  # [m] index of each satellite's best drone
    dro_best: torch.Tensor  # [n] index of each drone's best satellite
    sat_keep: torch.Tensor  # [m] bool, reliable satellites
    dro_keep: torch.Tensor  # [n] bool, reliable drones
    mutual_used: bool


def reliable_matches(score: torch.Tensor, sim: torch.Tensor, thr: float, mutual: bool) -> Matches:
    """Reliability filtering of best matches.

    ``dro_best[j] = argmax_i score[i, j]``, ``sat_best[i] = argmax_j score[i, j]``. A match is kept when
    it is mutual (``sat_best[dro_best[j]] = j``, resp. ``dro_best[sat_best[i]] = i``) and the cosine
    similarity of the matched pair exceeds ``thr`` (EM-CVGL's ``pseudo_thr``, which GeoAlign keeps).
    ``score`` is the similarity itself for EM-CVGL and, by default, for stream 1
    (``match_on="similarity"``); stream 1 with ``match_on="plan"`` passes the transport plan. As in
    EM-CVGL, mutual filtering is skipped while it finds ``MIN_MUTUAL`` pairs or fewer.
    """
    m, n = score.shape
    dro_best = score.argmax(dim=0)
    sat_best = score.argmax(dim=1)
    sat_keep = torch.ones(m, dtype=torch.bool, device=score.device)
    dro_keep = torch.ones(n, dtype=torch.bool, device=score.device)
    used = False
    if mutual:
        sat_mutual = dro_best[sat_best] == torch.arange(m, device=score.device)
        dro_mutual = sat_best[dro_best] == torch.arange(n, device=score.device)
        if int(sat_mutual.sum()) > MIN_MUTUAL:
            sat_keep, dro_keep, used = sat_mutual, dro_mutual, True
    rows = torch.arange(m, device=score.device)
    cols = torch.arange(n, device=score.device)
    sat_keep = sat_keep & (sim[rows, sat_best] > thr)
    dro_keep = dro_keep & (sim[dro_best, cols] > thr)
    return Matches(sat_best, dro_best, sat_keep, dro_keep, used)


def masked_soft_ce(
    logits: torch.Tensor, target: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor | None
) -> torch.Tensor:
    """Mean soft cross-entropy ``−Σ_k q_k log softmax(z)_k`` over the rows where ``rows`` is True.

    ``cols`` (optional bool mask) restricts the candidates of every row; the targets are renormalized
    over the remaining candidates. Returns 0 (with a graph) when no row is selected.
    """
    if cols is not None:
        logits = logits.masked_fill(~cols[None, :], float("-inf"))
        target = target * cols[None, :]
        target = target / target.sum(dim=1, keepdim=True).clamp_min(1e-30)
    logp = logits.log_softmax(dim=1)
    # 0·(−inf) would be NaN where a candidate is masked out; those targets are exactly zero.
    per_row = -(target * logp.masked_fill(target == 0, 0.0)).sum(dim=1)
    w = rows.to(per_row.dtype)
    return (per_row * w).sum() / w.sum().clamp_min(1.0)


def bidirectional_distillation(
    sim: torch.Tensor,
    scale: torch.Tensor,
    q_s2d: torch.Tensor,
    q_d2s: torch.Tensor,
    matches: Matches,
    keep_neg: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft distillation of the transport targets into the adapter's similarity, both directions.

    ``L_d2s = mean_{j reliable} CE(Q_d2s[j], softmax_i(s·S_ij))``,
    ``L_s2d = mean_{i reliable} CE(Q_s2d[i], softmax_j(s·S_ij))``.
    With ``keep_neg`` every item of the other view stays a candidate (negatives are kept even when
    they are not reliable themselves); without it the candidates are only the reliable ones.
    Returns ``(L_d2s, L_s2d)``.
    """
    logits = scale * sim
    sat_cols = None if keep_neg else matches.sat_keep
    dro_cols = None if keep_neg else matches.dro_keep
    l_d2s = masked_soft_ce(logits.T, q_d2s, matches.dro_keep, sat_cols)
    l_s2d = masked_soft_ce(logits, q_s2d, matches.sat_keep, dro_cols)
    return l_d2s, l_s2d


def one_hot_smoothed(index: torch.Tensor, k: int, label_smoothing: float) -> torch.Tensor:
    """Hard labels as distributions: ``(1 − λ)·onehot + λ/K`` (PyTorch's ``label_smoothing``)."""
    t = F.one_hot(index, k).float()
    return (1 - label_smoothing) * t + label_smoothing / k


def l1_unit(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean |normalize(pred) − normalize(target)|`` (EM-CVGL's L1 reconstruction on unit vectors)."""
    return (F.normalize(pred, dim=-1) - F.normalize(target, dim=-1)).abs().mean()


def label_match_targets(
    sat_labels: torch.Tensor, dro_labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """True-pair targets for supervised InfoNCE: ``M_ij = [label_i = label_j]`` normalized per row.

    Returns ``(T_s2d [m, n], T_d2s [n, m])``; rows without any positive are all zero (and are
    excluded by the caller).
    """
    pos = (sat_labels[:, None] == dro_labels[None, :]).float()
    t_s2d = pos / pos.sum(dim=1, keepdim=True).clamp_min(1.0)
    t_d2s = pos.T / pos.T.sum(dim=1, keepdim=True).clamp_min(1.0)
    return t_s2d, t_d2s


@float32_loss
def stream1_loss(
    out: dict[str, torch.Tensor],
    sat: torch.Tensor,
    dro: torch.Tensor,
    scale: torch.Tensor,
    *,
    eps: float,
    iters: int,
    label_smoothing: float,
    pseudo_thr: float,
    mutual_match: bool,
    keep_neg: bool,
    distill_w: float,
    match_on: str = "similarity",
    idt_w: float,
    lambda_A: float,
    lambda_B: float,
    feat_w: float,
    lambda_moe: float,
    sat_labels: torch.Tensor | None = None,
    dro_labels: torch.Tensor | None = None,
    targets: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GeoAlign stream-1 objective for one batch (``out`` = :meth:`GeoAlignStream1.train_forward`)::

        L = distill_w · (L_d2s + L_s2d) / 2                        OTCA soft labels, both directions
          + idt_w · (|n(dec(enc_a)) − n(A)|₁ + |n(dec(enc_b)) − n(B)|₁)      reconstruction/identity
          + λ_A · |n(ABA) − n(A)|₁ + λ_B · |n(BAB) − n(B)|₁                  cycle through the other view
          + feat_w · ‖n(enc_ba) − n(enc_b)‖²  (mean)                         latent cycle
          + λ_moe · L_bal                                                    expert load balance

    ``|·|₁`` and ``‖·‖²`` are element means. Targets come from ``sinkhorn(S, ε)`` on detached codes;
    the distilled rows are the reliable ones of :func:`reliable_matches` on ``S`` (``match_on="plan"``:
    on the plan).
    With ``targets`` given (true-pair distributions from :func:`label_match_targets`) they replace
    the Sinkhorn labels and every row with a positive is used (the supervised upper bound).
    ``sat_labels``/``dro_labels`` only feed the pseudo-label accuracy that is logged.
    """
    za = F.normalize(out["enc_a"], dim=-1)
    zb = F.normalize(out["enc_b"], dim=-1)
    sim = za @ zb.T
    with torch.no_grad():
        sim_d = sim.detach()
        if targets is None:
            plan = sinkhorn(sim_d, eps, iters)
            q_s2d, q_d2s = soft_pseudo_labels(plan, label_smoothing)
            if match_on not in ("similarity", "plan"):
                raise ValueError(f"match_on must be 'similarity' or 'plan', got {match_on!r}")
            score = plan if match_on == "plan" else sim_d
            matches = reliable_matches(score, sim_d, pseudo_thr, mutual_match)
        else:
            q_s2d, q_d2s = targets
            if label_smoothing > 0:
                q_s2d = (1 - label_smoothing) * q_s2d + label_smoothing / q_s2d.shape[1]
                q_d2s = (1 - label_smoothing) * q_d2s + label_smoothing / q_d2s.shape[1]
            has_pos_s = targets[0].sum(dim=1) > 0
            has_pos_d = targets[1].sum(dim=1) > 0
            matches = Matches(sim_d.argmax(dim=1), sim_d.argmax(dim=0), has_pos_s, has_pos_d, False)
    l_d2s, l_s2d = bidirectional_distillation(
        sim, scale, q_s2d, q_d2s, matches, keep_neg or targets is not None
    )
    l_distill = 0.5 * (l_d2s + l_s2d)
    l_rec = l1_unit(out["rec_a"], sat) + l1_unit(out["rec_b"], dro)
    l_cyc_a = l1_unit(out["cyc_aba"], sat)
    l_cyc_b = l1_unit(out["cyc_bab"], dro)
    l_feat = (F.normalize(out["enc_ba"], dim=-1) - zb).pow(2).mean()
    l_bal = out["aux"]
    loss = (
        distill_w * l_distill
        + idt_w * l_rec
        + lambda_A * l_cyc_a
        + lambda_B * l_cyc_b
        + feat_w * l_feat
        + lambda_moe * l_bal
    )
    stats = {
        "loss": loss.item(),
        "distill": l_distill.item(),
        "d2s": l_d2s.item(),
        "s2d": l_s2d.item(),
        "rec": l_rec.item(),
        "cyc": (l_cyc_a + l_cyc_b).item(),
        "feat": l_feat.item(),
        "balance": float(l_bal.detach()),
        "reliable_dro": matches.dro_keep.float().mean().item(),
        "reliable_sat": matches.sat_keep.float().mean().item(),
        "eps": float(eps),
        "scale": float(scale.detach()),
    }
    stats.update(pseudo_label_accuracy(matches, sat_labels, dro_labels))
    return loss, stats


def pseudo_label_accuracy(
    matches: Matches, sat_labels: torch.Tensor | None, dro_labels: torch.Tensor | None
) -> dict[str, float]:
    """Monitoring only: share of drones whose best satellite has their label (all / reliable ones)."""
    if sat_labels is None or dro_labels is None:
        return {}
    hit = sat_labels[matches.dro_best] == dro_labels
    keep = matches.dro_keep
    acc_rel = (hit & keep).sum().item() / max(int(keep.sum()), 1)
    return {"pl_acc": hit.float().mean().item(), "pl_acc_reliable": acc_rel}


def hard_pseudo_label_infonce(
    sim: torch.Tensor,
    scale: torch.Tensor,
    *,
    pseudo_thr: float,
    mutual_match: bool,
    keep_neg: bool,
    label_smoothing: float,
) -> tuple[torch.Tensor, Matches]:
    """EM-CVGL's pseudo-label loss: hard mutual nearest neighbours on ``S``, symmetric InfoNCE.

    ``L = ½ [ mean_{i reliable} CE(onehot(sat_best_i), softmax_j(s·S_ij))
            + mean_{j reliable} CE(onehot(dro_best_j), softmax_i(s·S_ij)) ]``
    with label smoothing as in ``nn.CrossEntropyLoss(label_smoothing=λ)``; matches from
    :func:`reliable_matches` with ``score = S`` itself.
    """
    with torch.no_grad():
        matches = reliable_matches(sim.detach(), sim.detach(), pseudo_thr, mutual_match)
    m, n = sim.shape
    logits = scale * sim
    if keep_neg:
        t_s = one_hot_smoothed(matches.sat_best, n, label_smoothing)
        t_d = one_hot_smoothed(matches.dro_best, m, label_smoothing)
        l_s = masked_soft_ce(logits, t_s, matches.sat_keep, None)
        l_d = masked_soft_ce(logits.T, t_d, matches.dro_keep, None)
    else:
        # Candidates restricted to the reliable items: smoothing spreads over those only.
        k_d = int(matches.dro_keep.sum().clamp_min(1))
        k_s = int(matches.sat_keep.sum().clamp_min(1))
        t_s = (
            F.one_hot(matches.sat_best, n).float() * (1 - label_smoothing)
            + label_smoothing / k_d * matches.dro_keep
        )
        t_d = (
            F.one_hot(matches.dro_best, m).float() * (1 - label_smoothing)
            + label_smoothing / k_s * matches.sat_keep
        )
        l_s = masked_soft_ce(logits, t_s, matches.sat_keep, matches.dro_keep)
        l_d = masked_soft_ce(logits.T, t_d, matches.dro_keep, matches.sat_keep)
    return 0.5 * (l_s + l_d), matches
