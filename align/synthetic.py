"""Synthetic cross-view descriptors for the alignment stage: no images, no backbone, known answers.

A *world* fixes everything that is location-independent (how a drone view distorts what a satellite
sees, how "layers" read a scene out, the view-specific offsets); a *split* samples locations in that
world. Train and test splits of one world share the distortion and differ in locations, as
University-1652's train and test buildings do.

Generative model (``d = dim``; ``N(0, I/d)`` vectors have norm ≈ 1)::

    c            ~ N(0, diag(s)/d),  s_k = (k+1)^-spectrum_decay · d / Σ(k+1)^-spectrum_decay
                                                                       the location's content
    x_sat        = c + noise_sat · N(0, I/d)                          a satellite tile of it
    warp(c)      = c + warp · tanh(c W1) W2                            fixed 2-layer tanh MLP (residual)
    x_dro        = Q · warp(c) + noise_drone · N(0, I/d)              one drone view (per view noise)
    x           += nuisance · U a,  a ~ N(0, I_r)                       optional, both views, per image
    layer_l(x)   = normalize(P_l x + μ_l + [δ_l if drone] + noise_layer · N(0, I/d))

``Q = exp(rotation · A)`` is a partial rotation (``A`` a random skew-symmetric matrix scaled to unit
spectral norm, so ``rotation`` is the largest rotation angle in radians), ``P_l`` a per-layer random
orthogonal readout near the identity (layer 0 exactly the identity), ``μ_l`` a common offset of both
views (the anisotropy of real ViT descriptors: every cosine is high), ``δ_l`` an extra offset of the
drone view only (the domain gap). Raw cosine matching therefore sees a rotated, warped, shifted
drone: poor but not hopeless; a learned drone-side adapter (stream 1's MoE residual) can undo it.

Satellite tiles of ``n_distractors`` extra locations have no drone views (the University-1652
gallery's 250 distractor buildings). Labels are location ids; names look like the dataset's
(``query_drone/0003/03-07.jpeg``). Everything is deterministic by seed (torch CPU generators).

:func:`write_cache` stores a test split (and optionally a train split) as cache entries named like
the extraction's, ``<name>.query_drone@<layer>`` / ``<name>.gallery_satellite@<layer>`` and, for
training, ``<name>.drone@<layer>`` / ``<name>.satellite@<layer>`` (as ``configs/u1652_train.yaml``
names them), so ``pipeline align`` and :func:`align.stage.run_alignment` consume them as they are.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from cvgl.core.errors import UserError

GENERATOR_VERSION = 1
TEST_VIEWS = ("query_drone", "gallery_satellite")
TRAIN_VIEWS = ("drone", "satellite")


@dataclass(frozen=True)
class WorldConfig:
    """The location-independent part of the generator (see the module docstring)."""

    dim: int = 64
    layers: tuple[int, ...] = (26, 28)
    rotation: float = 1.5  # largest rotation angle (radians) of the drone view's global rotation Q
    warp: float = 1.0  # strength of the residual tanh MLP
    shift: float = 0.6  # norm of the drone-only offset δ_l
    anisotropy: float = 0.8  # norm of the common offset μ_l
    spectrum_decay: float = 0.5  # content variance ∝ (k+1)^-decay
    noise_sat: float = 0.6
    noise_drone: float = 1.5
    noise_layer: float = 0.1
    layer_mix: float = 0.3  # how far P_l (l > 0) is from the identity
    # Per-image nuisance along `nuisance_rank` fixed directions, both views (0 = none, the default):
    # a few high-variance factors unrelated to the location (illumination, season, style) that
    # dominate real ViT descriptors' covariance; what whitening (ISMS) is meant to suppress.
    nuisance: float = 0.0
    nuisance_rank: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dim < 4:
            raise UserError(f"synthetic dim must be >= 4, got {self.dim}; pick e.g. dim=64")
        if not self.layers or len(set(self.layers)) != len(self.layers):
            raise UserError(f"synthetic layers must be distinct and non-empty, got {self.layers}")
        for k in (
            "rotation",
            "warp",
            "shift",
            "anisotropy",
            "noise_sat",
            "noise_drone",
            "noise_layer",
            "layer_mix",
            "nuisance",
        ):
            v = getattr(self, k)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise UserError(f"synthetic {k} must be a finite number >= 0, got {v!r}")
        if not 0 <= self.nuisance_rank <= self.dim:
            raise UserError(f"synthetic nuisance_rank must be in 0..dim, got {self.nuisance_rank}")


@dataclass
class CrossViewSet:
    """One split: per-layer satellite and drone descriptors [n, dim] (float32), labels, names."""

    satellite: dict[int, np.ndarray]
    satellite_labels: np.ndarray
    satellite_names: list[str]
    drone: dict[int, np.ndarray]
    drone_labels: np.ndarray
    drone_names: list[str]
    satellite_latent: np.ndarray  # x_sat (before the layer readout): for the oracle only
    spec: dict = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted(self.satellite)


class CrossViewWorld:
    """Fixed distortion and readouts; :meth:`sample` draws locations (a split) in this world."""

    def __init__(self, cfg: WorldConfig | None = None, **kw) -> None:
        self.cfg = cfg or WorldConfig(**kw)
        c = self.cfg
        d = c.dim
        g = torch.Generator().manual_seed(int(c.seed))
        w = np.arange(1, d + 1, dtype=np.float64) ** -c.spectrum_decay
        self.content_std = torch.from_numpy(np.sqrt(w * d / w.sum())).float()
        # Hidden pre-activations of unit variance for a unit-norm input (tanh is really bent there);
        # W2 scaled so that the MLP's output has mean norm 1 on the content distribution.
        self.w1 = torch.randn(d, d, generator=g)
        self.w2 = torch.randn(d, d, generator=g)
        probe = torch.randn(2048, d, generator=g) * self.content_std / math.sqrt(d)
        self.w2 /= (torch.tanh(probe @ self.w1) @ self.w2).norm(dim=1).mean()
        a = torch.randn(d, d, generator=g, dtype=torch.float64)
        a = a - a.T
        a = a / torch.linalg.matrix_norm(a, ord=2)
        self.rot = torch.linalg.matrix_exp(c.rotation * a).float()
        self.readout: dict[int, torch.Tensor] = {}
        self.mean: dict[int, torch.Tensor] = {}
        self.drone_shift: dict[int, torch.Tensor] = {}
        for i, layer in enumerate(c.layers):
            if i == 0:
                p = torch.eye(d)
            else:
                q, r = torch.linalg.qr(torch.eye(d) + c.layer_mix * torch.randn(d, d, generator=g))
                p = q * torch.sign(torch.diagonal(r))[None, :]
            self.readout[layer] = p
            self.mean[layer] = c.anisotropy * F.normalize(torch.randn(d, generator=g), dim=0)
            self.drone_shift[layer] = c.shift * F.normalize(torch.randn(d, generator=g), dim=0)
        # drawn last, so worlds without nuisance are unchanged by its existence
        self.nuisance_dirs = torch.linalg.qr(torch.randn(d, max(c.nuisance_rank, 1), generator=g))[0][
            :, : c.nuisance_rank
        ]

    def warp(self, x: torch.Tensor) -> torch.Tensor:
        """The drone view's distortion of a content/latent vector (before per-view noise)."""
        bent = x + self.cfg.warp * torch.tanh(x @ self.w1) @ self.w2
        return bent @ self.rot.T

    def layer(self, x: torch.Tensor, layer: int, drone: bool, gen: torch.Generator) -> torch.Tensor:
        y = x @ self.readout[layer].T + self.mean[layer]
        if drone:
            y = y + self.drone_shift[layer]
        y = y + self.cfg.noise_layer * torch.randn(y.shape, generator=gen) / math.sqrt(self.cfg.dim)
        return F.normalize(y, dim=-1)

    def sample(
        self,
        n_locations: int,
        views_per_location: int,
        n_distractors: int = 0,
        *,
        seed: int = 1,
        first_label: int = 0,
        split: str = "test",
    ) -> CrossViewSet:
        """``n_locations`` locations with ``views_per_location`` drone views each, plus distractor tiles."""
        for k, v, lo in (
            ("n_locations", n_locations, 1),
            ("views_per_location", views_per_location, 1),
            ("n_distractors", n_distractors, 0),
        ):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise UserError(f"synthetic {k} must be an integer >= {lo}, got {v!r}")
        if split not in ("test", "train"):
            raise UserError(f"synthetic split must be test or train, got {split!r}")
        c = self.cfg
        d = c.dim
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + 17)
        n_sat = n_locations + n_distractors
        content = torch.randn(n_sat, d, generator=g) * self.content_std / math.sqrt(d)
        x_sat = content + c.noise_sat * torch.randn(n_sat, d, generator=g) / math.sqrt(d)
        src = torch.arange(n_locations).repeat_interleave(views_per_location)
        x_dro = self.warp(content[src])
        x_dro = x_dro + c.noise_drone * torch.randn(x_dro.shape, generator=g) / math.sqrt(d)
        if c.nuisance > 0 and c.nuisance_rank > 0:
            r = c.nuisance_rank
            x_sat = x_sat + c.nuisance * torch.randn(n_sat, r, generator=g) @ self.nuisance_dirs.T
            x_dro = x_dro + c.nuisance * torch.randn(len(src), r, generator=g) @ self.nuisance_dirs.T
        sat = {L: self.layer(x_sat, L, False, g).numpy() for L in c.layers}
        dro = {L: self.layer(x_dro, L, True, g).numpy() for L in c.layers}
        sat_labels = np.arange(first_label, first_label + n_sat, dtype=np.int64)
        dro_labels = sat_labels[src.numpy()]
        sv, dv = ("gallery_satellite", "query_drone") if split == "test" else ("satellite", "drone")
        sat_names = [f"{sv}/{lab:04d}/{lab:04d}.jpg" for lab in sat_labels]
        dro_names = [
            f"{dv}/{lab:04d}/{j:02d}-{v:02d}.jpeg"
            for j, lab in enumerate(sat_labels[:n_locations])
            for v in range(views_per_location)
        ]
        cfg = asdict(c)
        cfg["layers"] = list(c.layers)
        spec = {
            "generator": "align.synthetic",
            "version": GENERATOR_VERSION,
            "world": cfg,
            "split": split,
            "n_locations": n_locations,
            "views_per_location": views_per_location,
            "n_distractors": n_distractors,
            "seed": int(seed),
            "first_label": int(first_label),
        }
        return CrossViewSet(sat, sat_labels, sat_names, dro, dro_labels, dro_names, x_sat.numpy(), spec)

    def oracle_gallery(self, data: CrossViewSet, layer: int) -> np.ndarray:
        """Each satellite pushed through the true drone distortion (no noise): the generator's own
        best guess of its drones' descriptor. Drones against these is a ceiling no learned method
        is expected to beat (it knows Q, the MLP, the readouts and the offsets exactly)."""
        x = torch.from_numpy(data.satellite_latent)
        y = self.warp(x) @ self.readout[layer].T + self.mean[layer] + self.drone_shift[layer]
        return F.normalize(y, dim=-1).numpy()


def make_splits(
    world: WorldConfig | None = None,
    *,
    n_locations: int = 200,
    views_per_location: int = 20,
    n_distractors: int = 100,
    n_train_locations: int | None = None,
    seed: int = 1,
) -> tuple[CrossViewWorld, CrossViewSet, CrossViewSet]:
    """A world, its test split (with distractors) and a train split of other locations (none)."""
    w = CrossViewWorld(world or WorldConfig())
    test = w.sample(n_locations, views_per_location, n_distractors, seed=seed, split="test")
    n_train = n_train_locations if n_train_locations is not None else n_locations
    train = w.sample(n_train, views_per_location, 0, seed=seed + 7919, first_label=100_000, split="train")
    return w, test, train


def write_cache(
    store,
    name: str,
    test: CrossViewSet,
    train: CrossViewSet | None = None,
    *,
    dtype: str = "float32",
    shard_rows: int = 8192,
) -> dict[str, str]:
    """Write the splits as extraction-like entries; returns ``{alias: key}``.

    Test: ``<name>.query_drone@<L>`` and ``<name>.gallery_satellite@<L>``; train (when given):
    ``<name>.drone@<L>`` and ``<name>.satellite@<L>``. Keys come from the generator's spec, so
    writing the same data twice reuses the entries.
    """
    out: dict[str, str] = {}
    splits = [(test, TEST_VIEWS)] + ([(train, TRAIN_VIEWS)] if train is not None else [])
    for data, (dv, sv) in splits:
        for view, arrays, labels, names in (
            (dv, data.drone, data.drone_labels, data.drone_names),
            (sv, data.satellite, data.satellite_labels, data.satellite_names),
        ):
            for layer in data.layers:
                alias = f"{name}.{view}@{layer}"
                spec = {"kind": "synthetic", **data.spec, "view": view, "layer": int(layer)}
                e = store.put_arrays(
                    spec,
                    arrays[layer],
                    labels,
                    names,
                    alias=alias,
                    extra={"view": view, "layer": int(layer), "synthetic": True},
                    dtype=dtype,
                    shard_rows=shard_rows,
                )
                out[alias] = e.key
    return out


def align_overrides(name: str, layers: tuple[int, ...] | list[int], *, train: bool = True) -> list[str]:
    """``section.field=value`` overrides that point ``pipeline align`` at entries from :func:`write_cache`."""
    ls = list(layers)
    ov = [
        f"name={name}",
        "dataset.mode=D2S",
        f"backbone.layers=[{','.join(map(str, ls))}]",
        "align.device=cpu",
    ]
    if train:
        ov += [
            f"align.train_drone=[{','.join(f'{name}.drone@{L}' for L in ls)}]",
            f"align.train_satellite=[{','.join(f'{name}.satellite@{L}' for L in ls)}]",
        ]
    return ov
