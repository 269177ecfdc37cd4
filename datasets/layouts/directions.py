"""Retrieval directions (``dataset.mode``: ``D2S``, ``G2A``, ``drone2sat`` …) and the (query view,
gallery view) each names, per layout: University-1652's view folders, the pair layouts' ground and
aerial, VIGOR's ground and satellite."""

from __future__ import annotations

from cvgl.core.errors import UserError
from cvgl.datasets.layouts.registry import PAIR_LAYOUTS
from cvgl.datasets.layouts.vigor import VIGOR_VIEWS

# Canonical directions and their aliases (compared case-insensitively). D = drone, S = satellite,
# G = ground/street, following the University-1652 paper's naming.
_DIRECTIONS: dict[str, tuple[str, str]] = {
    "D2S": ("query_drone", "gallery_satellite"),
    "S2D": ("query_satellite", "gallery_drone"),
    "G2S": ("query_street", "gallery_satellite"),
    "S2G": ("query_satellite", "gallery_street"),
    "D2G": ("query_drone", "gallery_street"),
    "G2D": ("query_street", "gallery_drone"),
}
_ALIASES: dict[str, str] = {
    "drone2sat": "D2S",
    "drone2satellite": "D2S",
    "sat2drone": "S2D",
    "satellite2drone": "S2D",
    "street2sat": "G2S",
    "street2satellite": "G2S",
    "ground2sat": "G2S",
    "sat2street": "S2G",
    "satellite2street": "S2G",
    "sat2ground": "S2G",
    "drone2street": "D2G",
    "street2drone": "G2D",
}


# Directions of the pair layouts (CVUSA, CVACT): G = ground panorama, A = aerial tile. The street/
# satellite spellings of the University-1652 directions mean the same two roles there.
_PAIR_DIRECTIONS: dict[str, tuple[str, str]] = {"G2A": ("ground", "aerial"), "A2G": ("aerial", "ground")}
_PAIR_ALIASES: dict[str, str] = {
    "G2S": "G2A",
    "S2G": "A2G",
    "ground2aerial": "G2A",
    "aerial2ground": "A2G",
    **{a: ("G2A" if d == "G2S" else "A2G") for a, d in _ALIASES.items() if d in ("G2S", "S2G")},
}


def view_pair(mode: str, layout: str = "u1652") -> tuple[str, str]:
    """(query view, gallery view) of a retrieval direction, e.g. ``D2S`` -> drone query, satellite gallery.

    Accepts ``D2S S2D G2S S2G D2G G2D`` (any case) and spelled-out aliases such as ``drone2sat`` or
    ``street2sat``. For the pair layouts (``cvusa``, ``cvact``) the directions are ``G2A`` (ground
    query, aerial gallery) and ``A2G``; ``G2S``/``S2G`` and their aliases are accepted as the same.
    """
    key = mode.strip().lower()
    if layout == "vigor":
        # Ground panoramas against satellite tiles; the pair layouts' spellings mean the same roles.
        if key in (
            "g2s",
            "g2a",
            "ground2sat",
            "ground2satellite",
            "street2sat",
            "street2satellite",
            "ground2aerial",
        ):
            return VIGOR_VIEWS
        if key in (
            "s2g",
            "a2g",
            "sat2ground",
            "satellite2ground",
            "sat2street",
            "satellite2street",
            "aerial2ground",
        ):
            return VIGOR_VIEWS[1], VIGOR_VIEWS[0]
        raise UserError(
            f"dataset.mode={mode!r} does not apply to layout vigor (ground/satellite); set dataset.mode=G2S "
            "(ground query, satellite gallery) or S2G"
        )
    if layout in PAIR_LAYOUTS:
        canon = {k.lower(): k for k in _PAIR_DIRECTIONS}
        canon.update({k.lower(): v for k, v in _PAIR_ALIASES.items()})
        found = canon.get(key)
        if found is None:
            raise UserError(
                f"dataset.mode={mode!r} does not apply to layout {layout} (ground/aerial pairs); "
                "set dataset.mode=G2A (ground query, aerial gallery) or A2G"
            )
        return _PAIR_DIRECTIONS[found]
    canon = {k.lower(): k for k in _DIRECTIONS}
    canon.update({k.lower(): v for k, v in _ALIASES.items()})
    found = canon.get(key)
    if found is None:
        raise UserError(
            f"unknown retrieval direction {mode!r}; choose one of {', '.join(_DIRECTIONS)} "
            f"(or {', '.join(_ALIASES)})"
        )
    return _DIRECTIONS[found]
