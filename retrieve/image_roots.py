"""Where an entry's images are: the dataset root its names are relative to, found through its manifest
or its parents' (reports and the map protocol show the images)."""

from __future__ import annotations

from pathlib import Path

from cvgl.cache.manifest import Manifest, read_manifest
from cvgl.cache.store import CacheStore


def image_root(store: CacheStore, manifest: Manifest, depth: int = 0) -> Path | None:
    """The dataset root an entry's names are relative to: its ``extra.root``, else its parents' (aligned
    entries); None when there is none or it is gone (imported arrays, a moved dataset)."""
    root = manifest.extra.get("root")
    if root:
        p = Path(root)
        return p if p.is_dir() else None
    if depth < 4:
        for parent in manifest.parents:
            try:
                pm = read_manifest(store.entry_dir(parent))
            except (OSError, ValueError, KeyError, TypeError):
                pm = None
            if pm is not None and (found := image_root(store, pm, depth + 1)) is not None:
                return found
    return None
