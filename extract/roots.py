"""Where a dataset's images are: its root folder (the synthetic layout generated on demand, once)
and its image lists, one per view."""

from __future__ import annotations

from pathlib import Path

from cvgl.cache.naming import dataset_views
from cvgl.cache.store import CacheStore
from cvgl.configs.schema import Config
from cvgl.core.errors import UserError
from cvgl.core.keys import content_key
from cvgl.core.path_errors import check_path_usable
from cvgl.datasets.layouts import MAP_LAYOUTS, ImageList, list_images
from cvgl.datasets.map_layouts import map_image_lists


def dataset_root(cfg: Config, store: CacheStore) -> Path:
    """The dataset folder; the synthetic layout is generated (once, deterministically) on demand."""
    ds = cfg.dataset
    if ds.root:
        check_path_usable(ds.root, "dataset.root", "set dataset.root to an existing folder")
    if ds.layout == "synthetic":
        from cvgl.datasets.synthetic import make_synthetic_u1652, synthetic_summary

        params = {
            "n_locations": ds.synthetic.n_locations,
            "n_distractors": ds.synthetic.n_distractors,
            "views_per_location": ds.synthetic.views_per_location,
            "size": ds.synthetic.size,
            "seed": ds.synthetic.seed,
        }
        root = (
            Path(ds.root)
            if ds.root
            else store.root / "datasets" / f"synthetic-u1652-{content_key(params)[:16]}"
        )
        done = synthetic_summary(root)
        # Regenerating would give the same bytes but new mtimes, hence new cache keys: keep a finished copy.
        if done is None or any(done.get(k) != v for k, v in params.items()) or done.get("train_locations", 0):
            make_synthetic_u1652(root, **params)
        return root
    if not ds.root:
        raise UserError(
            f"dataset.root is not set for layout {ds.layout!r}; pass root=PATH (or dataset.root=PATH)"
        )
    return Path(ds.root)


def image_lists(cfg: Config, store: CacheStore) -> list[ImageList]:
    """The image list of every view of ``cfg.dataset`` (a ``folder`` dataset: one list per view name)."""
    if cfg.dataset.layout in MAP_LAYOUTS:
        return map_image_lists(cfg.dataset, dataset_views(cfg), store.memo, store.root / "tile-masks")
    root = dataset_root(cfg, store)
    layout = "u1652" if cfg.dataset.layout == "synthetic" else cfg.dataset.layout
    if layout == "geoalign_release":
        raise UserError(
            "dataset.layout=geoalign_release holds GeoAlign's extracted features, not images; import them "
            "with `pipeline cache import`, or pick an image layout (u1652, sues200, cvusa, cvact, folder)"
        )
    kw = {"split": cfg.dataset.split, "altitude": cfg.dataset.altitude, "area": cfg.dataset.area}
    if layout == "folder":
        return [list_images("folder", root, v, **kw) for v in (cfg.dataset.views or ["images"])]
    return [list_images(layout, root, v, **kw) for v in dataset_views(cfg)]


__all__ = ["dataset_root", "image_lists"]
