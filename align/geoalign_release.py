"""GeoAlign's released files: load them, compute their descriptors, and write stream-1 checkpoints back.

A release folder (``root``) is laid out as GeoAlign's README asks::

    configs/base_stream1.yml                      stream-1 model config (every dim is read from it)
    outputs/base_stream1/300_param.t              torch.save({'model': state_dict, 'epoch': 300})
    outputs/base_stream2/isms_model_26_28.pth     ISMS state dict; the name carries its input layers
    feats_test/<model>/<layer>/{sat,dro}_{feat,id,name}       D2S: query_drone + gallery_satellite
    feats_test_s2d/<model>/<layer>/{sat,dro}_{feat,id,name}   S2D: query_satellite + gallery_drone

:func:`release_descriptors` reproduces GeoAlign's ``evaluate.py``: stream 1 reads the layer of
``eval.feat`` in the config (28), ISMS the concatenation of its layers (26, 28) each L2-normalized,
the fused descriptor is ``normalize(concat(normalize(s1), normalize(isms)))``; D2S queries are the
drones and the gallery the satellites, S2D the reverse (and reads ``feats_test_s2d``).
Everything is loaded with ``torch.load(weights_only=True)``: a checkpoint never runs code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from cvgl.align.checkpoints import torch_save_atomic
from cvgl.align.geoalign import GeoAlignStream1, Stream1Config
from cvgl.align.isms import ISMS, isms_input
from cvgl.cache.importers import read_geoalign_view
from cvgl.core.atomic import write_text_atomic
from cvgl.core.bounded_yaml import load_yaml
from cvgl.core.errors import UserError

STREAM1_CONFIG = Path("configs/base_stream1.yml")
STREAM1_WEIGHTS = Path("outputs/base_stream1/300_param.t")
ISMS_WEIGHTS = Path("outputs/base_stream2/isms_model_26_28.pth")
FEATURE_DIRS = {"D2S": "feats_test", "S2D": "feats_test_s2d"}
DEFAULT_STREAM1_LAYER = 28  # evaluate.py's LAYER_MAIN, used when the config names no eval.feat layer
DEFAULT_ISMS_LAYERS = (26, 28)  # evaluate.py's FUSION_LAYERS, used when the file name carries none

Descriptors = tuple[torch.Tensor, torch.Tensor, list[str], torch.Tensor, torch.Tensor, list[str]]


def load_tensor_file(path: str | Path, what: str) -> Any:
    """``torch.load(path, weights_only=True)``; missing or code-carrying files raise :class:`UserError`."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} not found: {p}; put the GeoAlign release file there or pass its path")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError (zip), EOFError: all mean "not loadable safely"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{p} cannot be read as a plain tensor file with weights_only=True ({first[:160]}); re-save it as tensors/state dict"
        ) from e


def stream1_state_dict(obj: Any, path: str | Path = "checkpoint") -> dict[str, torch.Tensor]:
    """The state dict inside a stream-1 checkpoint (``{'model': sd, ...}`` or a bare ``sd``)."""
    sd = obj.get("model", obj) if isinstance(obj, dict) else obj
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(
            f"{path} holds no state dict of tensors; pass GeoAlign's 300_param.t ({{'model': state_dict, 'epoch': N}})"
        )
    if "shared_enc.0.weight" not in sd or "moe_layer.gate.0.weight" not in sd:
        raise UserError(
            f"{path} is not a GeoAlign stream-1 checkpoint (no shared_enc/moe_layer keys); pass outputs/base_stream1/300_param.t"
        )
    return sd


def infer_stream1_dims(sd: dict[str, torch.Tensor]) -> dict[str, int]:
    """out_dim, vec_dim, num_experts, num_chunks read off the tensor shapes (nhead is not visible in them)."""
    vec, out = sd["shared_enc.0.weight"].shape
    n_exp = sd["moe_layer.gate.2.weight"].shape[0]
    chunks = sd["moe_layer.experts.0.pos_embed"].shape[1] if "moe_layer.experts.0.pos_embed" in sd else None
    dims = {"out_dim": int(out), "vec_dim": int(vec), "num_experts": int(n_exp)}
    if chunks is not None:
        dims["num_chunks"] = int(chunks)
    return dims


def check_state_dict(model: torch.nn.Module, sd: dict[str, torch.Tensor], path: str | Path) -> None:
    """Every key present with the shape the config implies; a mismatch names key, expected and found."""
    expected = model.state_dict()
    for key, ref in expected.items():
        if key not in sd:
            raise UserError(
                f"{path} lacks key {key!r}; it was not written by GeoAlign's AutoEnc_MoE with this config"
            )
        if tuple(sd[key].shape) != tuple(ref.shape):
            raise UserError(
                f"{path}: key {key!r} has shape {tuple(sd[key].shape)} but the config expects {tuple(ref.shape)}; "
                f"fix the config's dims (the checkpoint implies {infer_stream1_dims(sd)})"
            )
    extra = sorted(set(sd) - set(expected))
    if extra:
        raise UserError(
            f"{path} has keys the config does not produce ({', '.join(extra[:3])}…); check num_experts/top_k in the config"
        )


def load_stream1(
    ckpt: str | Path, cfg: Stream1Config | str | Path | None = None
) -> tuple[GeoAlignStream1, Stream1Config, int | None]:
    """Load a stream-1 checkpoint into :class:`GeoAlignStream1` (eval mode).

    ``cfg`` is a :class:`Stream1Config`, the path of a ``base_stream1.yml``, or None for the release
    defaults. Shapes are checked against the config before loading. Returns (model, cfg, epoch).
    """
    if not isinstance(cfg, Stream1Config):
        cfg = Stream1Config.from_yaml(cfg) if cfg is not None else Stream1Config()
    obj = load_tensor_file(ckpt, "GeoAlign stream-1 checkpoint")
    sd = stream1_state_dict(obj, ckpt)
    model = GeoAlignStream1(cfg)
    check_state_dict(model, sd, ckpt)
    model.load_state_dict(sd, strict=True)
    model.eval()
    epoch = obj.get("epoch") if isinstance(obj, dict) and "model" in obj else None
    return model, cfg, int(epoch) if isinstance(epoch, int | torch.Tensor) else None


def export_stream1(
    model: GeoAlignStream1,
    cfg: Stream1Config,
    path: str | Path,
    *,
    epoch: int | None = None,
    config_path: str | Path | None = None,
) -> Path:
    """Write ``{'model': state_dict, 'epoch': N}`` in GeoAlign's layout (``dec2.*`` duplicates included).

    GeoAlign's ``AutoEnc_MoE(**yaml['model']).load_state_dict(torch.load(path)['model'])`` loads it;
    with ``config_path`` the matching ``base_stream1.yml`` is written too. Written to a temporary name
    and renamed, so a crash never leaves a truncated checkpoint under the final name.
    """
    dims = infer_stream1_dims(model.state_dict())
    for k, v in dims.items():
        if getattr(cfg, k) != v:
            raise UserError(
                f"model has {k}={v} but the config says {getattr(cfg, k)}; export with the config the model was built from"
            )
    sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    p = Path(path)
    # Through memory: a full disk is then one line, not a torch error about stream positions.
    torch_save_atomic({"model": sd, "epoch": int(epoch if epoch is not None else cfg.epochs)}, p)
    if config_path is not None:
        c = Path(config_path)
        c.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(c, yaml.safe_dump(cfg.to_geoalign_yaml(), sort_keys=False))
    return p


def load_isms(path: str | Path) -> ISMS:
    """GeoAlign's ``isms_model_*.pth`` into :class:`align.isms.ISMS` (dims from the state dict, eval mode)."""
    sd = load_tensor_file(path, "GeoAlign ISMS checkpoint")
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    if not isinstance(sd, dict) or "encoder.weight" not in sd or "bn_whiten.running_var" not in sd:
        raise UserError(
            f"{path} is not a GeoAlign ISMS state dict (no encoder/bn_whiten keys); pass outputs/base_stream2/isms_model_26_28.pth"
        )
    out_dim, in_dim = sd["encoder.weight"].shape
    model = ISMS(int(in_dim), int(out_dim))
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise UserError(
            f"{path} does not match ISMS({in_dim}→{out_dim}): {str(e).splitlines()[-1].strip()[:160]}"
        ) from e
    model.eval()
    return model


def isms_layers_from_name(path: str | Path) -> tuple[int, ...] | None:
    """Layers encoded in an ISMS file name: ``isms_model_26_28.pth`` → (26, 28)."""
    m = re.search(r"_(\d+(?:_\d+)+)\.\w+$", Path(path).name)
    return tuple(int(t) for t in m.group(1).split("_")) if m else None


def stream1_layer_from_config(path: str | Path) -> int:
    """The backbone layer stream 1 reads: the last component of ``eval.feat`` (…/dinov3_vith16plus/28)."""
    try:
        raw = load_yaml(Path(path).read_text(), str(path)) or {}
    except (OSError, ValueError, yaml.YAMLError):
        return DEFAULT_STREAM1_LAYER
    feat = str((raw.get("eval") or {}).get("feat", "")).rstrip("/")
    tail = feat.rsplit("/", 1)[-1]
    return int(tail) if tail.isdigit() else DEFAULT_STREAM1_LAYER


def read_feature_dir(folder: str | Path, view: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``{view}_feat`` [N, C] float32, ``{view}_id`` [N] int64, ``{view}_name`` list of N names.

    Read and checked by :func:`cache.importers.read_geoalign_view`, the reader ``cache import`` uses,
    so a folder evaluates here exactly when it imports there.
    """
    desc, ids, names = read_geoalign_view(Path(folder), view)
    return torch.from_numpy(desc), torch.from_numpy(ids), names


def _same_rows(a: tuple[torch.Tensor, list[str]], b: tuple[torch.Tensor, list[str]], where: str) -> None:
    if not torch.equal(a[0], b[0]) or a[1] != b[1]:
        raise UserError(f"{where}: layers list different images or orders; extract all layers in one run")


@torch.no_grad()
def _isms_describe(isms: ISMS, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return (
        torch.cat([isms.encode(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])
        if x.shape[0]
        else x[:, : isms.out_dim]
    )


def release_descriptors(
    root: str | Path,
    mode: str = "D2S",
    model: str = "dinov3_vith16plus",
    fusion: bool = True,
    *,
    stream1_layer: int | None = None,
    isms_layers: tuple[int, ...] | None = None,
    batch_size: int = 4096,
) -> Descriptors:
    """GeoAlign's evaluation descriptors from a release folder, exactly as its ``evaluate.py``.

    Returns ``(query_desc, query_labels, query_names, gallery_desc, gallery_labels, gallery_names)``;
    descriptors are L2-normalized (stream 1: vec_dim wide; fused: vec_dim + ISMS width).
    """
    if mode not in FEATURE_DIRS:
        raise UserError(f"mode must be 'D2S' or 'S2D', got {mode!r}")
    root = Path(root)
    cfg_path = root / STREAM1_CONFIG
    cfg = Stream1Config.from_yaml(cfg_path)
    layer = stream1_layer if stream1_layer is not None else stream1_layer_from_config(cfg_path)
    s1, cfg, _ = load_stream1(root / STREAM1_WEIGHTS, cfg)
    feat_root = root / FEATURE_DIRS[mode] / model
    main: dict[str, tuple[torch.Tensor, torch.Tensor, list[str]]] = {
        v: read_feature_dir(feat_root / str(layer), v) for v in ("sat", "dro")
    }
    desc = {v: s1.describe(main[v][0], v, batch_size) for v in ("sat", "dro")}
    if fusion:
        isms = load_isms(root / ISMS_WEIGHTS)
        layers = isms_layers or isms_layers_from_name(ISMS_WEIGHTS) or DEFAULT_ISMS_LAYERS
        for v in ("sat", "dro"):
            per_layer = [
                main[v] if int(layer_i) == layer else read_feature_dir(feat_root / str(layer_i), v)
                for layer_i in layers
            ]
            for lf in per_layer:
                _same_rows((lf[1], lf[2]), (main[v][1], main[v][2]), f"{feat_root} ({v})")
            x = isms_input([lf[0] for lf in per_layer])
            if x.shape[1] != isms.in_dim:
                raise UserError(
                    f"ISMS expects {isms.in_dim}-d input but layers {list(layers)} concatenate to {x.shape[1]}; pass the layers it was trained on"
                )
            desc[v] = F.normalize(torch.cat([desc[v], _isms_describe(isms, x, batch_size)], dim=-1), dim=-1)
    q, g = ("dro", "sat") if mode == "D2S" else ("sat", "dro")
    return desc[q], main[q][1], main[q][2], desc[g], main[g][1], main[g][2]
