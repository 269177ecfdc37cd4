"""The manifest of a cache entry: written last, atomically; an entry without one is incomplete."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

from cvgl.core.atomic import write_bytes_atomic

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def tool_version() -> str:
    try:
        return metadata.version("cvgl-pipeline")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass
class ShardInfo:
    file: str
    row_start: int
    row_end: int
    sha256: str
    bytes: int


@dataclass
class Manifest:
    key: str
    spec: dict
    count: int
    shape: list[int]  # per-row shape: [d] for descriptors, [C, H, W] for conv maps
    dtype: str
    shards: list[ShardInfo]
    alias: str | None = None
    parents: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    tool_version: str = field(default_factory=tool_version)
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    format_version: int = FORMAT_VERSION

    @property
    def dim(self) -> int:
        d = 1
        for s in self.shape:
            d *= s
        return d

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        """A manifest from its JSON object; a wrong structure is a ValueError (readers report it)."""
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        d = dict(d)
        if not isinstance(d.get("shards"), list) or not all(isinstance(s, dict) for s in d["shards"]):
            raise ValueError("'shards' is not a list of objects")
        d["shards"] = [ShardInfo(**s) for s in d["shards"]]
        known = set(cls.__dataclass_fields__)
        m = cls(**{k: v for k, v in d.items() if k in known})
        _check_types(m)
        return m


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_types(m: Manifest) -> None:
    """Field types, so that code reading a manifest never trips over a hand-edited or foreign one."""
    bad = [
        name
        for name, ok in (
            ("key", isinstance(m.key, str)),
            ("spec", isinstance(m.spec, dict)),
            ("count", _is_int(m.count) and m.count >= 0),
            ("shape", isinstance(m.shape, list) and all(_is_int(s) and s >= 0 for s in m.shape)),
            ("dtype", isinstance(m.dtype, str)),
            ("alias", m.alias is None or isinstance(m.alias, str)),
            ("parents", isinstance(m.parents, list) and all(isinstance(p, str) for p in m.parents)),
            ("extra", isinstance(m.extra, dict)),
        )
        if not ok
    ]
    for s in m.shards:
        if not (
            isinstance(s.file, str)
            and _is_int(s.row_start)
            and _is_int(s.row_end)
            and isinstance(s.sha256, str)
            and _is_int(s.bytes)
        ):
            bad.append(f"shards[{s.file!r}]")
    if bad:
        raise ValueError(f"field(s) {', '.join(bad)} have the wrong type")


def write_manifest(entry_dir: Path, manifest: Manifest) -> None:
    """Write ``manifest.json`` atomically: the entry is complete once it exists, never half-written.

    A full disk is one line (``no space left …``) and leaves neither a manifest nor a temporary file.
    """
    path = entry_dir / MANIFEST
    tmp = path.with_name(f"{MANIFEST}.tmp-{os.getpid()}")
    write_bytes_atomic(path, manifest.to_json().encode("utf-8"), tmp=tmp)


def read_manifest(entry_dir: Path) -> Manifest | None:
    """The entry's manifest, or None when it has none (incomplete).

    A manifest that cannot be read or parsed (not UTF-8, not JSON, a wrong structure, a directory)
    raises ValueError, so every caller reports it the same way.
    """
    path = entry_dir / MANIFEST
    if not path.exists():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None  # removed between the check and the read: as incomplete as never written
    except OSError as e:
        raise ValueError(f"cannot read it: {e.strerror or e}") from None
    return Manifest.from_dict(json.loads(text))
