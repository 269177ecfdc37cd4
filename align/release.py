"""GeoAlign's release evaluated as it ships: its features imported, its checkpoints applied, entries cached.

``retrieve`` calls :func:`run_release` for ``dataset.layout=geoalign_release``; nothing is trained.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from cvgl.cache.store import CacheStore
from cvgl.configs.schema import Config
from cvgl.core.errors import UserError
from cvgl.core.run_folder import RunFolder


def run_release(cfg: Config, store: CacheStore, run: RunFolder) -> tuple[str, str]:
    """Evaluate-ready entries from a GeoAlign release folder, used as it ships.

    Imports the pre-extracted features (``feats_test[_s2d]/<model>/<layer>/…``) into the cache,
    loads both checkpoints (``weights_only=True``; every width and head count read from the config
    and the checkpoints), computes stream-1 (and, with ``align.fusion``, fused) descriptors exactly
    as GeoAlign's ``evaluate.py`` does, and caches them. Returns the (query, gallery) aliases.
    """
    from cvgl.align.geoalign_release import (
        FEATURE_DIRS,
        ISMS_WEIGHTS,
        STREAM1_CONFIG,
        STREAM1_WEIGHTS,
        release_descriptors,
    )
    from cvgl.cache.importers import import_geoalign
    from cvgl.core.keys import file_digest

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
    digests = {str(f): file_digest(root / f, store.memo) for f in files}
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
