"""Files an entry carries beside its shards, its own or its parent's, for retrieval: the positions
(``positions.h5``, see :mod:`cvgl.datasets.positions`) and any other manifest-listed file."""

from __future__ import annotations

from cvgl.cache.manifest import read_manifest
from cvgl.cache.store import CacheStore, Entry
from cvgl.datasets.positions import Positions, read_positions


def inherited_extra(store: CacheStore, entry: Entry, field: str) -> tuple[str, dict] | None:
    """``(key, info)`` of the manifest field ``field`` (a file stored beside the shards, such as
    ``positions`` or ``semi_positives``) of ``entry``, or of the entry it was computed from.

    An aligned entry keeps its parent's rows and names but stores no such file of its own: its first
    parent is read, following the chain. None when no entry on the chain has the field.
    """
    manifest = entry.manifest
    key = entry.key
    for _ in range(8):
        info = manifest.extra.get(field)
        if isinstance(info, dict):
            return key, info
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


def entry_positions(store: CacheStore, entry: Entry) -> Positions | None:
    """Positions of ``entry``'s rows, in row order (its own or its parent's), or None when it has none."""
    found = inherited_extra(store, entry, "positions")
    if found is None:
        return None
    key, info = found
    return read_positions(store.entry_dir(key), info, entry.names())
