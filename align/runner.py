"""The alignment stage: read cached descriptors, train a method, write aligned descriptors back.

Methods (``align.method``): ``isms`` (stream 2), ``geoalign`` (stream 1: MoE adapter, Sinkhorn
curriculum pseudo-labels, mutual optimization), ``fusion`` (both, fused as GeoAlign does),
``emcvgl`` (hard mutual pseudo-labels + InfoNCE), ``supervised`` (stream 1 trained with the true
pairs: the upper bound), ``identity`` (raw descriptors; nothing to train).

Aligned entries are cache entries too. Their key chains to the parent entries' keys and the
alignment run's digest (method, its parameters, the seed, the training entries), so rerunning the
same alignment reuses them and a change of any input makes new ones. Training state is saved every
epoch under ``<cache>/models/<run digest>/`` (a state of 32 MB or more, such as release-size
stream 1's ~400 MB, at most once a minute, and after the last epoch); a killed run resumes from the
last saved epoch. The trained
checkpoints and ``history.jsonl`` are kept there too (listed in ``model-files.json``, written last) and
linked into the run folder, also by a rerun that reuses the aligned entries.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from align.checkpoints import (
    link_into,
    model_files as listed_model_files,
    record_model_files,
    save_checkpoint,
    torch_save_atomic,
)
from cache.keys import content_key
from cache.store import CacheStore, Entry
from configs.atomic import write_text_atomic
from configs.devices import resolve_device
from configs.errors import UserError
from configs.naming import aligned_alias, extracted_alias, query_gallery_views
from configs.run import RunFolder
from configs.schema import Config

LogFn = Callable[[str, int, int, dict], None]  # (description, epoch, epochs, losses)
TRAINED = ("isms", "geoalign", "fusion", "emcvgl", "supervised")


@dataclass
class AlignedEntry:
    view: str
    key: str
    alias: str
    count: int
    reused: bool


@dataclass
class ViewData:
    """One view's cached descriptors, per layer, with its labels and names."""

    view: str
    entries: dict[int, Entry]
    tensors: dict[int, torch.Tensor]
    labels: np.ndarray
    names: list[str]

    @property
    def keys(self) -> list[str]:
        return [self.entries[L].key for L in sorted(self.entries)]


def role(view: str, is_query: bool) -> str:
    """GeoAlign's branch for a view: ``dro`` (MoE adapter) or ``sat`` (shared encoder only)."""
    v = view.lower()
    if "drone" in v or v in ("dro", "ground", "street"):
        return "dro"
    if "sat" in v or v in ("aerial",):
        return "sat"
    return "dro" if is_query else "sat"


def _aliases(cfg: Config, explicit: list[str], view: str, what: str) -> dict[int, str]:
    layers = list(cfg.backbone.layers)
    if not explicit:
        return {L: extracted_alias(cfg, view, L) for L in layers}
    if len(explicit) != len(layers):
        raise UserError(
            f"align.{what} lists {len(explicit)} entries but backbone.layers has {len(layers)}; "
            "give one alias per layer, in the order of backbone.layers"
        )
    return dict(zip(layers, explicit))


def _load_view(store: CacheStore, view: str, aliases: dict[int, str], layers: set[int]) -> ViewData:
    entries = {L: store.open(a) for L, a in aliases.items() if L in layers}
    tensors: dict[int, torch.Tensor] = {}
    labels = names = None
    for L, e in entries.items():
        d, lab, nm = e.read()
        if names is not None and nm != names:
            raise UserError(
                f"entries {', '.join(aliases[x] for x in entries)} list different images; align layers of one image list"
            )
        tensors[L] = torch.from_numpy(d.reshape(d.shape[0], -1))
        labels, names = lab, nm
    assert labels is not None and names is not None
    return ViewData(view, entries, tensors, labels, names)


def _method_layers(cfg: Config) -> tuple[int, list[int]]:
    s1 = cfg.align.stream1_layer if cfg.align.stream1_layer is not None else cfg.backbone.layers[-1]
    if s1 not in cfg.backbone.layers:
        raise UserError(f"align.stream1_layer={s1} is not among backbone.layers {cfg.backbone.layers}")
    isms_layers = list(cfg.align.isms.layers or cfg.backbone.layers)
    bad = [L for L in isms_layers if L not in cfg.backbone.layers]
    if bad:
        raise UserError(f"align.isms.layers {bad} are not among backbone.layers {cfg.backbone.layers}")
    return s1, isms_layers


def _dataclass_from_params(cls, params: dict, **auto):
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in params if k not in fields]
    if unknown:
        hint = difflib.get_close_matches(unknown[0], sorted(fields), n=1)
        raise UserError(
            f"unknown align.params key {unknown[0]!r} for {cls.__name__}"
            + (f"; did you mean {hint[0]!r}?" if hint else f"; valid keys: {', '.join(sorted(fields))}")
        )
    merged = {k: v for k, v in auto.items() if k not in params}
    merged.update(params)
    try:
        return cls(**merged)
    except TypeError as e:
        raise UserError(f"align.params: {e}") from None


def _adapter_dims(
    in_dim: int, params: dict, vec_default: int, chunks_default: int = 20, nhead: int = 4
) -> dict:
    """Stream-1 widths for an input of ``in_dim``: the release's where they fit, else scaled."""
    if in_dim == 1280:
        return {"out_dim": in_dim}
    vec = int(params.get("vec_dim", vec_default))
    head = int(params.get("nhead", nhead))
    chunks = int(params.get("num_chunks", 0)) or next(
        (c for c in range(min(chunks_default, vec), 0, -1) if vec % c == 0 and (vec // c) % head == 0), 1
    )
    return {"out_dim": in_dim, "vec_dim": vec, "num_chunks": chunks}


class _StateFile:
    """Resumable training state under the cache's model folder (torch.save; loads weights_only).

    With ``history`` (the run's list of per-epoch records) the saved state also carries this model's
    records so far, and :meth:`load` puts them back, so a resumed run's ``history.jsonl`` lists every
    epoch, not only those trained after the resume.
    """

    def __init__(self, folder: Path, name: str, history: list[dict] | None = None) -> None:
        self.path = folder / f"state-{name}.pt"
        self.name = name
        self.history = history

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # a state cut short by a kill: start over rather than fail
            return None
        if self.history is not None and isinstance(state, dict):
            done = int(state.get("epoch", 0))
            kept = [h for h in state.pop("run_history", []) if int(h.get("epoch", -1)) < done]
            self.history[:] = [h for h in self.history if h.get("model") != self.name] + kept
        return state

    def save(self, epoch: int, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.history is not None:
            state = {**state, "run_history": [dict(h) for h in self.history if h.get("model") == self.name]}
        torch_save_atomic(state, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def publish_model(model_dir: Path, run: RunFolder) -> list[str]:
    """Link the trained model's files (kept in the cache) into the run folder and record where they are.

    The cache's ``models/<run digest>/`` is the source of truth: a rerun that reuses the aligned entries
    finds the same checkpoints there. Entries made before models were kept in the cache have none; the
    run then records an empty list.
    """
    files = listed_model_files(model_dir)
    link_into(model_dir, files, run.path)
    run.record(model={"dir": str(model_dir), "files": files})
    return files


def run_alignment(
    cfg: Config, store: CacheStore, run: RunFolder, *, log: LogFn | None = None
) -> list[AlignedEntry]:
    """Train ``cfg.align.method`` on cached descriptors and cache the aligned descriptors."""
    method = cfg.align.method
    if method == "identity":
        return []
    if method in ("cvft", "vgg_conv", "vgg_gp"):
        from align.cvft_runner import run_cvft

        return run_cvft(cfg, store, run, log=log)
    if method not in TRAINED:
        raise UserError(
            f"align.method={method!r} is not an alignment of drone/satellite descriptors; use one of {', '.join(TRAINED)}"
        )
    qv, gv = query_gallery_views(cfg)
    s1_layer, isms_layers = _method_layers(cfg)
    needed = (
        set(isms_layers)
        if method == "isms"
        else {s1_layer}
        if method != "fusion"
        else {s1_layer, *isms_layers}
    )
    eval_views = {
        qv: _load_view(store, qv, _aliases(cfg, cfg.align.query, qv, "query"), needed),
        gv: _load_view(store, gv, _aliases(cfg, cfg.align.gallery, gv, "gallery"), needed),
    }
    if bool(cfg.align.train_drone) != bool(cfg.align.train_satellite):
        raise UserError("set both align.train_drone and align.train_satellite, or neither")
    if role(qv, True) == role(gv, False):
        raise UserError(
            f"views {qv} and {gv} map to the same branch; align one drone-like and one satellite-like view"
        )
    if cfg.align.train_drone:
        by_role = {
            "dro": (cfg.align.train_drone, "train_drone"),
            "sat": (cfg.align.train_satellite, "train_satellite"),
        }
        train = {
            r: _load_view(store, f"train_{r}", _aliases(cfg, a, f"train_{r}", w), needed)
            for r, (a, w) in by_role.items()
        }
    else:
        train = {role(qv, True): eval_views[qv], role(gv, False): eval_views[gv]}
    if set(train) != {"sat", "dro"}:
        raise UserError(
            f"views {qv} and {gv} map to the same branch; align one drone-like and one satellite-like view"
        )
    for vd in (*eval_views.values(), *train.values()):
        if not all(torch.isfinite(t).all() for t in vd.tensors.values()):
            raise UserError(f"entries of view {vd.view} contain NaN descriptors; recompute them")
    dims = {
        vd.view: {L: t.shape[1] for L, t in vd.tensors.items()}
        for vd in (*eval_views.values(), *train.values())
    }
    if len({tuple(sorted(d.items())) for d in dims.values()}) != 1:
        raise UserError(
            f"descriptor dimensions differ between views {dims}; align entries of the same backbone and layers"
        )

    # The trainers' full configurations (the given align.params on top of the defaults) go into the
    # key, so that a change of a default trains afresh instead of reusing entries trained under the
    # old one.
    in_dim = train["sat"].tensors[s1_layer].shape[1]
    s1cfg = ecfg = None
    if method in ("geoalign", "fusion", "supervised"):
        from align.geoalign import Stream1Config

        s1cfg = _dataclass_from_params(
            Stream1Config, cfg.align.params, **_adapter_dims(in_dim, cfg.align.params, 2 * in_dim)
        )
    if method == "emcvgl":
        from align.baselines import EMCVGLConfig

        ecfg = _dataclass_from_params(
            EMCVGLConfig,
            cfg.align.params,
            out_dim=in_dim,
            vec_dim=max(2 * in_dim, 8) if in_dim != 1280 else 2048,
        )
    resolved = asdict(s1cfg) if s1cfg is not None else asdict(ecfg) if ecfg is not None else None
    params = {
        "isms": asdict(cfg.align.isms),
        "stream1_layer": s1_layer,
        **({"params": cfg.align.params} if resolved is None else {"resolved": resolved}),
    }
    run_spec = {
        "method": method,
        "params": params,
        "seed": cfg.seed,
        "train": {r: vd.keys for r, vd in sorted(train.items())},
        "eval": {v: vd.keys for v, vd in eval_views.items()},
    }
    from align.train_stream1 import STATE_SAVE_INTERVAL_S, compute_dtype

    dtype = compute_dtype(cfg.align.dtype, str(resolve_device(cfg.align.device, "align.device")))
    if dtype != "float32":
        # Only a non-default dtype enters the key, so entries trained in float32 keep their keys.
        run_spec["dtype"] = dtype
    run_digest = content_key({"kind": "alignment-run", **run_spec})
    specs = {
        v: {
            "kind": "aligned",
            "run": run_digest,
            "view": v,
            "parents": vd.keys,
            # fused column order (part of the key: entries of the old [ISMS | stream 1] order differ)
            **({"layout": ["stream1", "isms"]} if method == "fusion" else {}),
        }
        for v, vd in eval_views.items()
    }
    keys = {v: content_key(s) for v, s in specs.items()}
    aliases = {v: aligned_alias(cfg, v) for v in eval_views}
    run.record_keys(
        {
            f"parent:{vd.entries[L].manifest.alias or L}": vd.entries[L].key
            for vd in eval_views.values()
            for L in vd.entries
        }
    )
    run.record(
        alignment={"method": method, "run_digest": run_digest, "transductive": not cfg.align.train_drone}
    )
    model_dir = store.root / "models" / run_digest
    if all(store.has(k) for k in keys.values()):
        for v in eval_views:
            store.set_alias(aliases[v], keys[v])
        run.record_keys({aliases[v]: keys[v] for v in eval_views})
        publish_model(model_dir, run)
        return [AlignedEntry(v, keys[v], aliases[v], len(eval_views[v].names), True) for v in eval_views]

    device = resolve_device(cfg.align.device, "align.device")
    history: list[dict] = []
    model_files: list[str] = []

    def on_epoch_for(name: str, epochs: int):
        def on_epoch(epoch: int, metrics: dict) -> None:
            history.append(
                {
                    "model": name,
                    "epoch": epoch,
                    **{k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
                }
            )
            if log:
                shown = {
                    k: v
                    for k, v in metrics.items()
                    if k in ("loss", "rec", "decor", "pl_acc", "pl_acc_reliable", "eps")
                }
                log(f"align {name}", epoch + 1, epochs, shown)

        return on_epoch

    encoders: dict[str, Callable[[torch.Tensor, str], torch.Tensor]] = {}
    labels_t = {r: torch.from_numpy(vd.labels) for r, vd in train.items()}

    if method in ("isms", "fusion"):
        from align.isms import ISMSConfig, isms_config_dict, isms_input, train_isms

        icfg = ISMSConfig(**{k: v for k, v in asdict(cfg.align.isms).items() if k != "layers"})
        x = torch.cat([isms_input([train[r].tensors[L] for L in isms_layers]) for r in ("sat", "dro")])
        state = _StateFile(model_dir, "isms", history)
        isms = train_isms(
            x,
            icfg,
            seed=cfg.seed,
            device=str(device),
            on_epoch=on_epoch_for("isms", icfg.epochs),
            state=state.load(),
            save_state=state.save,
            save_interval_s=STATE_SAVE_INTERVAL_S,
            dtype=dtype,
        )
        save_checkpoint(
            model_dir,
            "isms",
            isms,
            {**isms_config_dict(isms, icfg), "layers": isms_layers, "run_digest": run_digest},
        )
        model_files += ["isms.safetensors", "isms.json"]
        encoders["isms"] = lambda vd, r: isms.encode(
            isms_input([vd.tensors[L] for L in isms_layers]).to(device)
        ).cpu()

    if method in ("geoalign", "fusion", "supervised"):
        from align.geoalign_release import export_stream1
        from align.train_stream1 import train_stream1

        assert s1cfg is not None
        state = _StateFile(model_dir, "stream1", history)
        common = dict(
            seed=cfg.seed,
            device=str(device),
            sat_labels=labels_t["sat"],
            dro_labels=labels_t["dro"],
            on_epoch=on_epoch_for("stream1", s1cfg.epochs),
            state=state.load(),
            save_state=state.save,
            save_interval_s=STATE_SAVE_INTERVAL_S,
            dtype=dtype,
        )
        if method == "supervised":
            from align.baselines import train_supervised

            if (train["sat"].labels < 0).all() or (train["dro"].labels < 0).all():
                raise UserError(
                    "align.method=supervised needs labels on the training entries; these have none (-1)"
                )
            s1, _ = train_supervised(
                train["sat"].tensors[s1_layer], train["dro"].tensors[s1_layer], s1cfg, **common
            )
        else:
            s1, _ = train_stream1(
                train["sat"].tensors[s1_layer], train["dro"].tensors[s1_layer], s1cfg, **common
            )
        conf = {"method": method, "stream1": asdict(s1cfg), "layer": s1_layer, "run_digest": run_digest}
        save_checkpoint(model_dir, "stream1", s1, conf)
        export_stream1(s1, s1cfg, model_dir / "stream1_geoalign.t")
        model_files += ["stream1.safetensors", "stream1.json", "stream1_geoalign.t"]
        encoders["stream1"] = lambda vd, r: s1.describe(vd.tensors[s1_layer].to(device), r).cpu()

    if method == "emcvgl":
        from align.baselines import train_emcvgl

        assert ecfg is not None
        state = _StateFile(model_dir, "emcvgl", history)
        em, _ = train_emcvgl(
            train["sat"].tensors[s1_layer],
            train["dro"].tensors[s1_layer],
            ecfg,
            seed=cfg.seed,
            device=str(device),
            sat_labels=labels_t["sat"],
            dro_labels=labels_t["dro"],
            on_epoch=on_epoch_for("emcvgl", ecfg.epochs),
            state=state.load(),
            save_state=state.save,
            save_interval_s=STATE_SAVE_INTERVAL_S,
            dtype=dtype,
        )
        save_checkpoint(
            model_dir, "emcvgl", em, {"method": method, "emcvgl": asdict(ecfg), "layer": s1_layer}
        )
        model_files += ["emcvgl.safetensors", "emcvgl.json"]
        encoders["emcvgl"] = lambda vd, r: em.describe(vd.tensors[s1_layer].to(device), r).cpu()

    write_text_atomic(model_dir / "history.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    record_model_files(model_dir, [*model_files, "history.jsonl"])
    publish_model(model_dir, run)
    out = []
    with torch.no_grad():
        for i, (v, vd) in enumerate(eval_views.items()):
            r = role(v, i == 0)
            # GeoAlign's fused layout: [stream 1 | ISMS] (3840 = 2560 + 1280 at release sizes).
            parts = [
                F.normalize(encoders[k](vd, r).float(), dim=-1)
                for k in ("stream1", "emcvgl", "isms")
                if k in encoders
            ]
            d = F.normalize(torch.cat(parts, dim=-1), dim=-1).numpy() if len(parts) > 1 else parts[0].numpy()
            entry = store.put_arrays(
                specs[v],
                d,
                vd.labels,
                vd.names,
                alias=aliases[v],
                parents=vd.keys,
                extra={"view": v, "method": method, "run_digest": run_digest},
                dtype="float32",
            )
            out.append(AlignedEntry(v, entry.key, aliases[v], entry.count, False))
    for name in ("isms", "stream1", "emcvgl"):
        _StateFile(model_dir, name).clear()
    run.record_keys({a.alias: a.key for a in out})
    return out


def run_release(cfg: Config, store: CacheStore, run: RunFolder) -> tuple[str, str]:
    """Evaluate-ready entries from a GeoAlign release folder, used as it ships.

    Imports the pre-extracted features (``feats_test[_s2d]/<model>/<layer>/…``) into the cache,
    loads both checkpoints (``weights_only=True``; every width and head count read from the config
    and the checkpoints), computes stream-1 (and, with ``align.fusion``, fused) descriptors exactly
    as GeoAlign's ``evaluate.py`` does, and caches them. Returns the (query, gallery) aliases.
    """
    from align.geoalign_release import (
        FEATURE_DIRS,
        ISMS_WEIGHTS,
        STREAM1_CONFIG,
        STREAM1_WEIGHTS,
        release_descriptors,
    )
    from cache.importers import import_geoalign
    from cache.keys import weights_digest

    if not cfg.dataset.root:
        raise UserError(
            "root=DIR is required: the folder of GeoAlign's release (configs/, outputs/, feats_test/)"
        )
    root = Path(cfg.dataset.root)
    mode = cfg.dataset.mode.upper()
    if mode not in FEATURE_DIRS:
        raise UserError(f"mode={cfg.dataset.mode!r}: GeoAlign's release is evaluated as D2S or S2D")
    files = [STREAM1_CONFIG, STREAM1_WEIGHTS] + ([ISMS_WEIGHTS] if cfg.align.fusion else [])
    for f in files:
        if not (root / f).is_file():
            raise UserError(
                f"GeoAlign release file {root / f} is missing; root= must be the release folder laid out as its README says"
            )
    feat_root = root / FEATURE_DIRS[mode] / cfg.dataset.model
    if not feat_root.is_dir():
        raise UserError(
            f"{feat_root} does not exist; set model= to the folder name under {root / FEATURE_DIRS[mode]}"
        )
    base = f"{cfg.name}.{mode}"
    imported = import_geoalign(store, feat_root, alias=f"{base}.features")
    run.record_keys({a: e.key for a, e in imported})
    q, q_lab, q_names, g, g_lab, g_names = release_descriptors(
        root, mode, cfg.dataset.model, cfg.align.fusion
    )
    digests = {str(f): weights_digest(root / f, store.memo) for f in files}
    parents = sorted(e.key for _, e in imported)
    tag = "fusion" if cfg.align.fusion else "stream1"
    out = []
    for role_name, d, lab, names in (("query", q, q_lab, q_names), ("gallery", g, g_lab, g_names)):
        spec = {
            "kind": "aligned",
            "method": f"geoalign-release-{tag}",
            "mode": mode,
            "role": role_name,
            "checkpoints": digests,
            "parents": parents,
        }
        alias = f"{base}.{tag}.{role_name}"
        store.put_arrays(
            spec,
            d.float().numpy(),
            np.asarray(lab.numpy() if hasattr(lab, "numpy") else lab, np.int64),
            list(names),
            alias=alias,
            parents=parents,
            extra={
                "view": f"{'dro' if (mode == 'D2S') == (role_name == 'query') else 'sat'}",
                "method": spec["method"],
            },
        )
        out.append(alias)
    run.record_keys({a: store.resolve(a) for a in out})
    return out[0], out[1]
