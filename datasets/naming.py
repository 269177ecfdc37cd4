"""How stages name the cache entries they hand each other (the aliases are part of the contract)."""

from __future__ import annotations

from cvgl.configs.schema import Config


def dataset_views(cfg: Config) -> list[str]:
    """The image lists an experiment extracts: ``dataset.views``, else the two views of ``dataset.mode``."""
    if cfg.dataset.views:
        return list(cfg.dataset.views)
    if cfg.dataset.layout == "folder":
        return ["images"]
    from cvgl.datasets.layouts import view_pair

    return list(view_pair(cfg.dataset.mode, cfg.dataset.layout))


def query_gallery_views(cfg: Config) -> tuple[str, str]:
    views = dataset_views(cfg)
    if len(views) != 2:
        raise ValueError("an experiment with query and gallery needs exactly two views")
    return views[0], views[1]


# What a view's name says about where its camera is: the one word list every stage reads. The
# first word found wins, in this order (no dataset's view name holds two of them).
_VIEW_WORDS: tuple[tuple[str, str], ...] = (
    ("drone", "drone"),
    ("dro", "drone"),  # GeoAlign's feature folders: dro_feat
    ("ground", "ground"),
    ("street", "ground"),
    ("pano", "ground"),
    ("aerial", "aerial"),
    ("sat", "aerial"),  # satellite, GeoAlign's sat_feat
)


def view_kind(view: str) -> str | None:
    """``drone``, ``ground`` (street level, panoramas) or ``aerial`` (satellite), as the view's name
    says (``query_drone``, ``gallery_satellite``, ``ground``, ``aerial``, ``dro``, ``sat`` …); None when
    it says none of them (``google``, ``images``)."""
    v = view.lower()
    return next((kind for word, kind in _VIEW_WORDS if word in v), None)


def pair_roles(query_view: str, gallery_view: str) -> tuple[str, str]:
    """The roles (``ground``, ``aerial``) of a query and a gallery view: the side that looks at the
    ground from below or from a drone is ``ground``, the satellite or aerial side ``aerial``.

    A name that says nothing takes the role the other one leaves; when both say nothing, or both say
    the same (drone against street level), the query is the ``ground`` side.
    """
    side = {"drone": "ground", "ground": "ground", "aerial": "aerial", None: None}
    q, g = side[view_kind(query_view)], side[view_kind(gallery_view)]
    if q is not None and g is not None and q != g:
        return q, g
    if q is None and g is not None:
        return ("aerial" if g == "ground" else "ground"), g
    if g is None and q is not None:
        return q, ("aerial" if q == "ground" else "ground")
    return "ground", "aerial"


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
