"""How stages name the cache entries they hand each other, from an experiment's config: the views it
extracts, the aliases of extracted and aligned entries (part of the contract), what a run compares and
which stages it needs."""

from __future__ import annotations

from cvgl.configs.schema import Config
from cvgl.datasets.layouts import view_pair


def dataset_views(cfg: Config) -> list[str]:
    """The image lists an experiment extracts: ``dataset.views``, else the two views of ``dataset.mode``."""
    if cfg.dataset.views:
        return list(cfg.dataset.views)
    if cfg.dataset.layout == "folder":
        return ["images"]
    return list(view_pair(cfg.dataset.mode, cfg.dataset.layout))


def query_gallery_views(cfg: Config) -> tuple[str, str]:
    views = dataset_views(cfg)
    if len(views) != 2:
        raise ValueError("an experiment with query and gallery needs exactly two views")
    return views[0], views[1]


def extracted_alias(cfg: Config, view: str, layer: int | str, n_views: int | None = None) -> str:
    """``<extract.alias or name>.<view>@<layer>``; ``<alias>@<layer>`` when the dataset has one list."""
    base = cfg.extract.alias or cfg.name
    n = len(dataset_views(cfg)) if n_views is None else n_views
    return f"{base}.{view}@{layer}" if n > 1 else f"{base}@{layer}"


def aligned_alias(cfg: Config, view: str) -> str:
    """``<align.alias or name.method>.<view>``."""
    base = cfg.align.alias or f"{cfg.extract.alias or cfg.name}.{cfg.align.method}"
    return f"{base}.{view}"


def default_retrieval_pair(cfg: Config) -> tuple[str, str]:
    """What ``retrieve`` compares when query/gallery are not given: the align output, else the last layer."""
    q, g = query_gallery_views(cfg)
    if cfg.align.method != "identity":
        return aligned_alias(cfg, q), aligned_alias(cfg, g)
    layer = cfg.backbone.layers[-1]
    return extracted_alias(cfg, q, layer), extracted_alias(cfg, g, layer)


def stages_needed(cfg: Config) -> tuple[bool, bool]:
    """(extract, align) for a run: which stages it needs, from which inputs the config names.

    Named alignment inputs (``align.query`` and ``align.gallery``, e.g. imported entries) need no
    dataset: nothing is extracted. Named retrieval inputs (``retrieve.query`` and ``retrieve.gallery``)
    without named alignment inputs need neither extraction nor alignment.
    """
    if cfg.align.query and cfg.align.gallery:
        return False, True
    if cfg.retrieve.query and cfg.retrieve.gallery:
        return False, False
    return True, True
