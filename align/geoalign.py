"""GeoAlign stream 1: the AGRA adapter (shared encoder, drone-only Mixture of transformer experts,
shared decoder) and its configuration.

The module tree and parameter names reproduce GeoAlign's released ``300_param.t`` exactly, so
``model.load_state_dict(torch.load(path, weights_only=True)["model"])`` works and
:func:`align.geoalign_release.export_stream1` writes a file GeoAlign's own ``AutoEnc_MoE`` loads::

    shared_enc.0   Linear(out_dim → vec_dim)          shared_enc.1  LayerNorm(vec_dim)
    moe_layer.gate.{0,2}  Linear(vec → 4E), Tanh, Linear(4E → E)
    moe_layer.experts.e.{pos_embed, norm1.g, attn.*, ls1.gamma, norm2.g,
                         ffn.net.0, ffn.net.3, ls2.gamma, proj}
    dec1.{0,1}     Linear(vec_dim → out_dim), BatchNorm1d(out_dim)
    dec2.*         the same module as dec1 (its keys appear twice in the state dict)

Descriptors (what retrieval uses)::

    satellite:  normalize(shared_enc(x))
    drone:      normalize(b + moe(b)),  b = shared_enc(x)

The MoE is a residual on the drone branch only: the drone view carries the oblique-geometry
distortion that the satellite view lacks, so only it gets the extra capacity (the "asymmetric" in
AGRA). Each expert's output projection starts at zero, so an untrained adapter treats both views the
same way and training starts from the shared-encoder solution.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from cvgl.core.bounded_yaml import YAMLBoundError, load_yaml
from cvgl.core.errors import UserError
from cvgl.core.path_errors import read_text_file
from torch import nn

INITS = ("isometric", "default")


def init_autoencoder(enc: nn.Linear, dec: nn.Linear, how: str) -> None:
    """Initialize an encoder/decoder Linear pair (``how`` in :data:`INITS`).

    ``isometric``: ``W_enc`` with orthonormal columns (``W_encᵀ W_enc = I`` when widening, so
    ``⟨W_enc x, W_enc y⟩ = ⟨x, y⟩``), ``W_dec = W_encᵀ`` (``dec(enc(x)) = x`` before the norms) and
    zero biases. Draws from the global RNG (seeded by the trainers). ``default`` leaves PyTorch's init.
    """
    if how == "default":
        return
    with torch.no_grad():
        nn.init.orthogonal_(enc.weight)
        dec.weight.copy_(enc.weight.T)
        if enc.bias is not None:
            enc.bias.zero_()
        if dec.bias is not None:
            dec.bias.zero_()


@dataclass
class Stream1Config:
    """Model and training hyperparameters of GeoAlign stream 1.

    Defaults: the release's ``base_stream1.yml``, plus our choices where the release leaves a point
    open (``init``, ``curriculum_fraction``, ``match_on``, ``student_temp_ratio``; see the comments).
    """

    # --- model ---
    out_dim: int = 1280  # backbone descriptor width (DINOv3 ViT-H+/16 layer 28)
    vec_dim: int = 2560  # adapter code width
    num_experts: int = 4
    top_k: int = 2
    num_chunks: int = 20  # an expert sees its input as num_chunks tokens of vec_dim/num_chunks
    nhead: int = 4
    dropout: float = 0.1
    noisy_gating: bool = True
    gate_noise_std: float = 0.25  # GeoAlign adds N(0, 0.25²) to the gate logits while training
    # --- OTCA: Sinkhorn curriculum pseudo-labels ---
    sinkhorn_eps_start: float = 0.2
    sinkhorn_eps_end: float = 0.05
    sinkhorn_iters: int = 3
    # Share of the epochs over which ε anneals from start to end; it then stays at end (ours: the
    # paper gives the endpoints, not the pace). 1.0 = over the whole run. 0.3 was chosen on a
    # validation split of the synthetic benchmark (benchmarks/README_align_synthetic.md): annealing
    # over the whole run leaves the sharp targets to the last, low-learning-rate epochs and the
    # pseudo-labels drift (val R@1 32 vs 64).
    curriculum_fraction: float = 0.3
    label_smoothing: float = 0.15
    mutual_match: bool = True
    keep_neg: bool = True
    pseudo_thr: float = 0.2
    # What the mutual-match reliability test runs on (GeoAlign's paper does not say): "similarity" =
    # mutual nearest neighbours of the cosine similarities (EM-CVGL's test; ours, chosen on the
    # synthetic benchmark's validation split: val R@1 63.6 vs 60.7), "plan" = of the transport plan,
    # which is balanced by construction and so calls more pairs mutual, more of them wrong.
    match_on: str = "similarity"
    # Student temperature τ(epoch) = ratio · ε(epoch): the predictions are always softer than the
    # transport targets by the same factor, so the distillation sharpens at every stage of the
    # curriculum (targets flatter than the student would un-learn matches early on). None = the ratio
    # that ends the curriculum at GeoAlign's logit scale: 1 / (temperature_init · sinkhorn_eps_end)
    # = 1/(14.28 · 0.05) ≈ 1.40. Our choice: GeoAlign's training code is not public.
    student_temp_ratio: float | None = None
    # --- loss weights ---
    lambda_moe: float = 0.01
    distill_w: float = 1.05
    idt_w: float = 1.0
    feat_w: float = 0.001
    lambda_A: float = 1.0
    lambda_B: float = 1.0
    # Logit scale: learnable (log-parametrized) in the InfoNCE baselines; stream 1 ends its curriculum at it.
    temperature_init: float = 14.28
    # --- optimization ---
    epochs: int = 300
    batch_size: int = 701  # satellites per step; U1652 has 701, so one step per epoch at release settings
    dro_num: int = 1  # drones drawn per satellite in a step
    lr: float = 2e-4
    weight_decay: float = 1e-2  # CAdamW's default, which GeoAlign's build_opt leaves untouched
    warm_epochs: float = 1.0
    scheduler: str = "cosine"
    optim: str = "CAdamW"
    clip_grad: float = 100.0  # element-wise gradient value clipping (EM-CVGL/GeoAlign trainer)
    # Initialization of the shared encoder/decoder Linears (GeoAlign's training code is not public):
    # "isometric" (ours) = orthonormal encoder columns, decoder = its transpose, zero biases, so the
    # untrained adapter keeps the backbone's cosine geometry and the first Sinkhorn pseudo-labels
    # are as good as raw matching; "default" = PyTorch's Linear init, whose random bias and
    # projection cut the first pseudo-labels' accuracy on the synthetic benchmark from 0.35 to 0.18–0.24.
    init: str = "isometric"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`UserError` for values the model or trainer cannot run with."""
        if self.out_dim <= 0 or self.vec_dim <= 0:
            raise UserError(
                f"stream1 out_dim/vec_dim must be positive (got {self.out_dim}/{self.vec_dim}); fix the config"
            )
        if self.num_chunks <= 0 or self.vec_dim % self.num_chunks:
            raise UserError(
                f"stream1 vec_dim {self.vec_dim} is not divisible by num_chunks {self.num_chunks}; pick num_chunks dividing vec_dim"
            )
        chunk = self.vec_dim // self.num_chunks
        if self.nhead <= 0 or chunk % self.nhead:
            raise UserError(
                f"stream1 chunk width {chunk} (vec_dim/num_chunks) is not divisible by nhead {self.nhead}; change nhead or num_chunks"
            )
        if not 1 <= self.top_k <= self.num_experts:
            raise UserError(
                f"stream1 top_k {self.top_k} must be in 1..num_experts ({self.num_experts}); fix the config"
            )
        if self.sinkhorn_iters < 1 or self.sinkhorn_eps_start <= 0 or self.sinkhorn_eps_end <= 0:
            raise UserError("stream1 sinkhorn_iters must be >= 1 and sinkhorn eps values > 0; fix the config")
        if self.student_temp_ratio is not None and self.student_temp_ratio <= 0:
            raise UserError(
                f"stream1 student_temp_ratio must be > 0, got {self.student_temp_ratio}; fix the config"
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UserError(
                f"stream1 label_smoothing {self.label_smoothing} must be in [0, 1); fix the config"
            )
        if self.epochs < 1 or self.batch_size < 2 or self.dro_num < 1:
            raise UserError(
                "stream1 epochs >= 1, batch_size >= 2 and dro_num >= 1 are required; fix the config"
            )
        if self.scheduler not in ("cosine", "constant"):
            raise UserError(f"stream1 scheduler {self.scheduler!r} is unknown; use 'cosine' or 'constant'")
        if self.optim not in ("CAdamW", "AdamW"):
            raise UserError(f"stream1 optim {self.optim!r} is unknown; use 'CAdamW' or 'AdamW'")
        if not 0.0 < self.curriculum_fraction <= 1.0:
            raise UserError(
                f"stream1 curriculum_fraction must be in (0, 1], got {self.curriculum_fraction}; 1 anneals over all epochs"
            )
        if self.match_on not in ("plan", "similarity"):
            raise UserError(f"stream1 match_on {self.match_on!r} is unknown; use 'plan' or 'similarity'")
        if self.init not in INITS:
            raise UserError(f"stream1 init {self.init!r} is unknown; use one of {', '.join(INITS)}")

    @property
    def temp_ratio(self) -> float:
        """Student-to-teacher temperature ratio (``student_temp_ratio`` or its derived default)."""
        if self.student_temp_ratio is not None:
            return float(self.student_temp_ratio)
        return 1.0 / (self.temperature_init * self.sinkhorn_eps_end)

    def replace(self, **changes: Any) -> Stream1Config:
        """A copy with some fields changed (validated)."""
        return Stream1Config(**{**asdict(self), **changes})

    @classmethod
    def from_yaml(cls, path: str | Path) -> Stream1Config:
        """Read GeoAlign's ``base_stream1.yml`` (``model:`` and ``train:`` sections).

        Every dimension and head count comes from the file; keys that only matter to GeoAlign's own
        scripts (paths, workers, eval loader settings) are ignored, and fields the file does not set
        keep the release defaults.
        """
        import yaml

        p = Path(path)
        if not p.is_file():
            raise UserError(f"GeoAlign stream-1 config not found: {p}; pass the path to base_stream1.yml")
        try:
            raw = load_yaml(read_text_file(p, "GeoAlign stream-1 config", "pass base_stream1.yml"), str(p))
        except YAMLBoundError as e:
            raise UserError(str(e)) from None
        except yaml.YAMLError as e:
            raise UserError(
                f"{p} is not valid YAML ({str(e).splitlines()[0]}); fix or re-download the config"
            ) from e
        if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
            raise UserError(f"{p} has no 'model:' section; it is not a GeoAlign base_stream1.yml")
        model, train = raw["model"], raw.get("train") or {}
        name = model.get("name", "AutoEnc_MoE")
        if name != "AutoEnc_MoE":
            raise UserError(
                f"{p} describes model {name!r}, not GeoAlign's AutoEnc_MoE; pass GeoAlign's base_stream1.yml"
            )
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {k: v for k, v in model.items() if k in known}
        values.update({k: v for k, v in train.items() if k in known})
        return cls(**{k: _coerce(k, v, getattr(cls, k), p) for k, v in values.items()})

    def to_geoalign_yaml(self) -> dict[str, Any]:
        """The ``model:``/``train:`` dict GeoAlign's scripts read (the inverse of :meth:`from_yaml` for
        GeoAlign's own keys; our fields that GeoAlign does not know, such as ``init``, ``match_on`` and
        ``curriculum_fraction``, are not written and read back as their defaults)."""
        model_keys = (
            "out_dim",
            "vec_dim",
            "num_experts",
            "top_k",
            "noisy_gating",
            "dropout",
            "num_chunks",
            "nhead",
        )
        d = asdict(self)
        model = {
            "name": "AutoEnc_MoE",
            **{k: d[k] for k in model_keys},
            "norm": True,
            "normvec": True,
            "identify": False,
            "residul": False,
        }
        train = {
            k: v
            for k, v in d.items()
            if k not in model_keys
            and k
            not in (
                "gate_noise_std",
                "temperature_init",
                "student_temp_ratio",
                "init",
                "match_on",
                "curriculum_fraction",
            )
        }
        return {"model": model, "train": train}


def _coerce(key: str, value: Any, default: Any, path: Path) -> Any:
    """YAML value → the field's type (PyYAML reads ``2e-4`` without a dot as a string)."""
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            raise ValueError
        if isinstance(default, int):
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        if isinstance(default, float) or (default is None and value is not None):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return value if default is None else str(value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(
            f"{path}: {key}={value!r} is not a valid {type(default).__name__ if default is not None else 'number'}; fix the value"
        ) from None


class RMSNorm(nn.Module):
    """``x / (‖x‖·dim^-0.5 + 1e-8) · g`` (GeoAlign's variant: eps added to the RMS, not inside the root)."""

    def __init__(self, dim: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.scale = dim**-0.5
        self.eps = eps
        self.g = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / (x.norm(dim=-1, keepdim=True) * self.scale + self.eps) * self.g


class LayerScale(nn.Module):
    """Per-channel residual scale; starts at 1e-4 so each expert block begins close to identity."""

    def __init__(self, dim: int, init: float = 1e-4) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


def dropout_mask(shape: tuple[int, ...], p: float, dtype: torch.dtype) -> torch.Tensor:
    """Inverted-dropout multiplier for a CPU tensor: 0 with probability ``p``, else ``1/(1-p)``.

    Torch's CPU ``bernoulli_`` draws each element serially from a Mersenne twister (12 % of a
    release-size stream-1 step in bf16, BENCHMARKS.md); here 16 random bits per element come from a
    PCG64 stream (numpy, vectorized) seeded by one draw from torch's global RNG, so the masks follow
    ``torch.manual_seed`` and the trainers' forked RNG, and a resumed run draws the same masks.
    ``p`` is honoured to 2⁻¹⁶.
    """
    n = math.prod(shape)
    seed = int(torch.randint(0, 2**62, (1,)))
    bits = np.random.Generator(np.random.PCG64(seed)).bit_generator.random_raw((n + 3) // 4)
    keep = bits.view(np.int16)[:n] >= round(p * 65536) - 32768  # int16 is uniform on [-2¹⁵, 2¹⁵)
    scale = torch.tensor(1.0 / (1.0 - p), dtype=dtype)
    if dtype == torch.bfloat16:
        # numpy has no bf16: build the multiplier from its bit pattern (0 is all zero bits).
        out = np.where(keep, np.int16(scale.view(torch.int16).item()), np.int16(0))
        return torch.from_numpy(out).view(torch.bfloat16).view(shape)
    return torch.from_numpy(np.where(keep, scale.item(), 0.0).astype(np.float32)).to(dtype).view(shape)


def fast_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout(x, p, training)`` with :func:`dropout_mask` on the CPU (same distribution)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, training)
    return x * dropout_mask(tuple(x.shape), p, x.dtype)


class FastDropout(nn.Dropout):
    """:class:`nn.Dropout` drawing its CPU masks with :func:`dropout_mask` (no parameters, so module
    indices and state-dict keys are those of ``nn.Dropout``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)


class FeedForward(nn.Module):
    """``net`` = Linear(c→4c), ReLU, Dropout, Linear(4c→c), Dropout (indices 0 and 3 hold weights)."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.ReLU(),
            FastDropout(dropout),
            nn.Linear(hidden, dim),
            FastDropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def attention_train(attn: nn.MultiheadAttention, h: torch.Tensor) -> torch.Tensor:
    """Self-attention of ``h`` [B, T, C] with ``attn``'s weights, in training mode: what
    ``attn(h, h, h, need_weights=False)[0]`` computes, with its attention-weight dropout drawn by
    :func:`fast_dropout`, and the heads split batch-first (no [T, B, C] transposes and copies)."""
    b, t, c = h.shape
    nh = attn.num_heads
    qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).view(b, t, 3, nh, c // nh)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, T, c/heads]
    w = torch.matmul(q, k.transpose(-2, -1)) * (c // nh) ** -0.5
    w = fast_dropout(w.softmax(dim=-1), attn.dropout, True)
    out = torch.matmul(w, v).transpose(1, 2).reshape(b, t, c)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias)


class TransformerExpert(nn.Module):
    """One AGRA expert: a vec_dim vector seen as ``num_chunks`` tokens, one pre-norm transformer block.

    ``t = chunks(x) + pos_embed;  t = t + ls1(attn(norm1(t)));  t = t + ls2(ffn(norm2(t)));
    out = proj(flatten(t))``. Treating the chunks as tokens lets attention mix sub-spaces of the code,
    a cheap stand-in for re-arranging the drone's geometry.
    """

    def __init__(self, dim: int, num_chunks: int, nhead: int, dropout: float) -> None:
        super().__init__()
        self.dim = dim
        self.num_chunks = num_chunks
        self.chunk_dim = dim // num_chunks
        c = self.chunk_dim
        self.pos_embed = nn.Parameter(torch.zeros(1, num_chunks, c))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.norm1 = RMSNorm(c)
        self.attn = nn.MultiheadAttention(c, nhead, dropout=dropout, batch_first=True)
        self.ls1 = LayerScale(c)
        self.norm2 = RMSNorm(c)
        self.ffn = FeedForward(c, 4 * c, dropout)
        self.ls2 = LayerScale(c)
        self.proj = nn.Linear(dim, dim)
        # Zero output: the residual MoE contributes nothing until training moves it.
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        t = x.reshape(b, self.num_chunks, self.chunk_dim) + self.pos_embed
        h = self.norm1(t)
        if self.training and self.attn.dropout > 0:
            a = attention_train(self.attn, h)
        else:
            a = self.attn(h, h, h, need_weights=False)[0]
        t = t + self.ls1(a)
        t = t + self.ls2(self.ffn(self.norm2(t)))
        return self.proj(t.reshape(b, self.dim))


class MoELayer(nn.Module):
    """Top-k gated mixture of :class:`TransformerExpert` (AGRA's router + experts).

    Gate: ``logits = gate(x)`` (+ N(0, σ²) noise while training when ``noisy_gating``),
    ``p = softmax(logits)``, keep the top-k, ``w = p_topk / (Σ p_topk + 1e-6)``,
    ``out = Σ_{e ∈ topk} w_e · expert_e(x)``.

    Load balance (Switch Transformer, Fedus et al. 2021, as GeoAlign's training computes it)::

        L_bal = E · Σ_e f_e · P_e,   f_e = (#rows routing to e) / B,   P_e = Σ_b p_{b,e} / B

    Only ``P`` carries gradient; ``f`` is a count. We keep this form rather than Shazeer's CV² of
    importance and load because GeoAlign's gate noise has a fixed scale (no learned noise network),
    so Shazeer's smooth load estimator has nothing to differentiate, and because the released weights
    were trained with this term. Its minimum (E·k/E = k for a uniform router) is reached when both the
    routing counts and the probability mass are spread evenly.
    """

    def __init__(self, cfg: Stream1Config) -> None:
        super().__init__()
        self.num_experts = cfg.num_experts
        self.k = cfg.top_k
        self.noisy_gating = cfg.noisy_gating
        self.noise_std = cfg.gate_noise_std
        self.gate = nn.Sequential(
            nn.Linear(cfg.vec_dim, 4 * cfg.num_experts),
            nn.Tanh(),
            nn.Linear(4 * cfg.num_experts, cfg.num_experts),
        )
        self.experts = nn.ModuleList(
            TransformerExpert(cfg.vec_dim, cfg.num_chunks, cfg.nhead, cfg.dropout)
            for _ in range(cfg.num_experts)
        )
        # "sparse" runs each expert on the rows routed to it (k/E of the dense work); "dense" runs
        # every expert on every row and masks. Sparse measured faster at the release sizes
        # (benchmarks/README_geoalign.md), dense is kept as the reference path for tests.
        self.dispatch = "sparse"

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gate probabilities [B, E], chosen experts [B, k] and their renormalized weights [B, k]."""
        logits = self.gate(x)
        if self.training and self.noisy_gating and self.noise_std > 0:
            logits = logits + torch.randn_like(logits) * self.noise_std
        probs = logits.softmax(dim=-1)
        top_p, top_i = probs.topk(self.k, dim=-1)
        top_w = top_p / (top_p.sum(dim=-1, keepdim=True) + 1e-6)
        return probs, top_i, top_w

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (mixture output [B, D], load-balance loss (0 at eval), rows routed per expert [E])."""
        probs, top_i, top_w = self.route(x)
        b = x.shape[0]
        # Dense [B, E] mixing weights: zero where an expert was not chosen.
        weights = torch.zeros_like(probs).scatter(1, top_i, top_w)
        chosen = torch.zeros_like(probs).scatter(1, top_i, 1.0)
        load = chosen.sum(dim=0)
        if self.dispatch == "dense":
            out = sum(weights[:, e : e + 1] * expert(x) for e, expert in enumerate(self.experts))
        else:
            out = self._sparse(x, top_i, top_w)
        if self.training:
            aux = self.num_experts * (probs.sum(dim=0) * load).sum() / (b * b)
        else:
            aux = x.new_zeros(())
        return out, aux, load


    def _sparse(self, x: torch.Tensor, top_i: torch.Tensor, top_w: torch.Tensor) -> torch.Tensor:
        """``Σ_j w_bj · expert_{i_bj}(x_b)`` with each expert run once on the rows routed to it.

        The ``B·k`` (row, choice) pairs are sorted by expert, so every expert reads one contiguous
        block; the results are put back in row order and summed over the k choices. Both reorderings
        are permutations whose adjoint is the inverse permutation (:class:`_PermuteRows`): gathers
        forward and backward, where ``index_add``/``index_select`` cost a scatter-add over the whole
        code per expert and call (a tenth of a release-size step on CPU).
        """
        b, d = x.shape
        k = top_i.shape[1]
        flat = top_i.reshape(-1)
        order = torch.argsort(flat, stable=True)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        counts = torch.bincount(flat, minlength=self.num_experts).tolist()
        xs = _PermuteRows.apply(x.unsqueeze(1).expand(b, k, d).reshape(b * k, d), order, inverse)
        ws = top_w.reshape(-1).index_select(0, order).unsqueeze(1)
        ys = [
            expert(chunk) * w
            for expert, chunk, w, n in zip(self.experts, xs.split(counts), ws.split(counts), counts)
            if n
        ]
        return _PermuteRows.apply(torch.cat(ys), inverse, order).view(b, k, d).sum(dim=1)


class _PermuteRows(torch.autograd.Function):
    """``x[perm]`` for a permutation ``perm`` whose inverse is ``inv``; the gradient is ``g[inv]``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, perm: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(inv)
        return x.index_select(0, perm)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (inv,) = ctx.saved_tensors
        return grad.index_select(0, inv), None, None


class GeoAlignStream1(nn.Module):
    """AGRA adapter: shared encoder, drone-only residual MoE, shared decoder (keys = GeoAlign release)."""

    def __init__(self, cfg: Stream1Config | None = None) -> None:
        super().__init__()
        cfg = cfg or Stream1Config()
        self.cfg = cfg
        self.shared_enc = nn.Sequential(nn.Linear(cfg.out_dim, cfg.vec_dim), nn.LayerNorm(cfg.vec_dim))
        self.moe_layer = MoELayer(cfg)
        self.dec1 = nn.Sequential(nn.Linear(cfg.vec_dim, cfg.out_dim), nn.BatchNorm1d(cfg.out_dim))
        # One decoder for both views; registering it under both names reproduces GeoAlign's keys.
        self.dec2 = self.dec1
        init_autoencoder(self.shared_enc[0], self.dec1[0], cfg.init)

    def encode_sat_code(self, x: torch.Tensor) -> torch.Tensor:
        """Un-normalized satellite code ``shared_enc(x)``."""
        return self.shared_enc(x)

    def encode_dro_code(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-normalized drone code ``b + moe(b)`` and the load-balance loss."""
        base = self.shared_enc(x)
        delta, aux, _ = self.moe_layer(base)
        return base + delta, aux

    def forward(self, x: torch.Tensor, view: str) -> torch.Tensor:
        """L2-normalized descriptor of ``x`` for ``view`` in {"sat", "dro"}."""
        if view == "sat":
            return F.normalize(self.encode_sat_code(x), dim=-1)
        if view == "dro":
            return F.normalize(self.encode_dro_code(x)[0], dim=-1)
        raise ValueError(f"view must be 'sat' or 'dro', got {view!r}")

    @torch.no_grad()
    def describe(self, x: torch.Tensor, view: str, batch_size: int = 4096) -> torch.Tensor:
        """Eval-mode descriptors of many rows, in batches (restores the previous train/eval mode)."""
        if x.ndim != 2 or x.shape[1] != self.cfg.out_dim:
            raise UserError(
                f"stream-1 input has shape {tuple(x.shape)}, expected [N, {self.cfg.out_dim}]; use descriptors of the layer the adapter was trained on"
            )
        was_training = self.training
        self.eval()
        dev = next(self.parameters()).device
        try:
            outs = [
                self(x[i : i + batch_size].to(dev, torch.float32), view).cpu()
                for i in range(0, x.shape[0], batch_size)
            ]
        finally:
            self.train(was_training)
        return torch.cat(outs) if outs else x.new_zeros(0, self.cfg.vec_dim)

    def train_forward(self, sat: torch.Tensor, dro: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything the stream-1 losses need, for a batch of satellites (A) and drones (B).

        ``enc_a = shared_enc(A)``; ``enc_b = b + moe(b)``; ``rec_A = dec(enc_a)``; ``rec_B = dec(enc_b)``.
        Cycles through the other view: ``ABA = dec(moe-branch(shared_enc(rec_A)))`` (a satellite
        decoded, re-encoded as if it were a drone, decoded again) and ``BAB = dec(shared_enc(rec_B))``
        (a drone's code decoded and re-encoded on the satellite branch); ``enc_ba = shared_enc(rec_B)``.
        The decoder is shared, so ``dec1(enc_a)`` and ``dec2(enc_a)`` coincide and are computed once.
        """
        enc_a = self.shared_enc(sat)
        enc_b, aux = self.encode_dro_code(dro)
        rec_a = self.dec1(enc_a)
        rec_b = self.dec1(enc_b)
        enc_ab, _ = self.encode_dro_code(rec_a)
        cyc_aba = self.dec1(enc_ab)
        enc_ba = self.shared_enc(rec_b)
        cyc_bab = self.dec1(enc_ba)
        return {
            "enc_a": enc_a,
            "enc_b": enc_b,
            "enc_ba": enc_ba,
            "rec_a": rec_a,
            "rec_b": rec_b,
            "cyc_aba": cyc_aba,
            "cyc_bab": cyc_bab,
            "aux": aux,
        }
