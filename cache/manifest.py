"""The manifest of a cache entry: written last, atomically; an entry without one is incomplete."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

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
        d = dict(d)
        d["shards"] = [ShardInfo(**s) for s in d["shards"]]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def write_manifest(entry_dir: Path, manifest: Manifest) -> None:
    path = entry_dir / MANIFEST
    tmp = path.with_name(f"{MANIFEST}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(manifest.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_manifest(entry_dir: Path) -> Manifest | None:
    path = entry_dir / MANIFEST
    if not path.exists():
        return None
    return Manifest.from_dict(json.loads(path.read_text()))
