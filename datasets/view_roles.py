"""View roles: what a view's name says about where its camera is (drone, ground, aerial), and which side
of a query/gallery pair is the ground side and which the aerial one."""

from __future__ import annotations

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
