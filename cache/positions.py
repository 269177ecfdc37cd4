"""Files an entry carries beside its shards, its own or its parent's, for retrieval: the positions
(``positions.h5``, see :mod:`cvgl.datasets.positions`) and any other manifest-listed file."""

from __future__ import annotations

from collections.abc import Iterator

from cvgl.cache.manifest import Manifest, read_manifest
from cvgl.cache.store import CacheStore, Entry
from cvgl.datasets.positions import Positions, read_positions


def entry_chain(store: CacheStore, entry: Entry, depth: int = 8) -> Iterator[tuple[str, Manifest]]:
    """``(key, manifest)`` of ``entry``, then of the entry it was computed from, and so on (an aligned
    entry keeps its first parent's rows and names), while the parents' manifests can be read."""
    key, manifest = entry.key, entry.manifest
    for _ in range(depth):
        yield key, manifest
        if not manifest.parents:
            return
        key = manifest.parents[0]
        try:
            found = read_manifest(store.entry_dir(key))
        except (OSError, ValueError, KeyError, TypeError):
            return
        if found is None:
            return
        manifest = found


def inherited_extra(store: CacheStore, entry: Entry, field: str) -> tuple[str, dict] | None:
    """``(key, info)`` of the manifest field ``field`` (a file stored beside the shards, such as
    ``positions`` or ``semi_positives``) of ``entry`` or of the entry it was computed from; None when
    no entry on the chain has it."""
    for key, manifest in entry_chain(store, entry):
        info = manifest.extra.get(field)
        if isinstance(info, dict):
            return key, info
    return None


def entry_positions(store: CacheStore, entry: Entry) -> Positions | None:
    """Positions of ``entry``'s rows, in row order (its own or its parent's), or None when it has none."""
    found = inherited_extra(store, entry, "positions")
    if found is None:
        return None
    key, info = found
    return read_positions(store.entry_dir(key), info, entry.names())
