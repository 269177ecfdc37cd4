"""The positions an entry carries (``positions.h5``, see :mod:`cvgl.datasets.positions`), for retrieval."""

from __future__ import annotations

from cvgl.cache.manifest import read_manifest
from cvgl.cache.store import CacheStore, Entry
from cvgl.datasets.positions import Positions, read_positions


def entry_positions(store: CacheStore, entry: Entry) -> Positions | None:
    """Positions of ``entry``'s rows, in row order, or None when it has none.

    An entry computed from another one (an aligned entry keeps its parent's rows and names) has no
    ``positions.h5`` of its own: its first parent's positions are read, following the chain.
    """
    manifest = entry.manifest
    key = entry.key
    for _ in range(8):
        info = manifest.extra.get("positions")
        if isinstance(info, dict):
            return read_positions(store.entry_dir(key), info, entry.names())
        if not manifest.parents:
            return None
        key = manifest.parents[0]
        try:
            found = read_manifest(store.entry_dir(key))
        except (OSError, ValueError, KeyError, TypeError):
            found = None
        if found is None:
            return None
        manifest = found
    return None
