"""Run folders: every command writes its resolved config, versions, cache keys and seed here.

``run.json`` says ``"status": "running"`` until the stage ends; only then does it become
``"complete"``, so an interrupted run is never mistaken for a finished one.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from configs.schema import Config, to_dict

_PACKAGES = (
    "cvgl-pipeline",
    "torch",
    "numpy",
    "h5py",
    "faiss-cpu",
    "faiss-gpu-cu12",
    "transformers",
    "safetensors",
)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in _PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            continue
    return out


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RunFolder:
    """The output folder of one command (``out=DIR``, default ``runs/<stage>-<timestamp>``)."""

    def __init__(self, cfg: Config, stage: str, *, cache_root: Path | None = None) -> None:
        # Under torchrun (RANK and WORLD_SIZE > 1 set) every rank runs the command; only rank 0 keeps
        # a run folder. The others write theirs to a private temporary folder that finish() deletes
        # (fail() keeps it, with the error in its run.json).
        rank = os.environ.get("RANK", "0")
        world = os.environ.get("WORLD_SIZE", "1")
        self.scratch = rank not in ("", "0") and world.isdigit() and int(world) > 1
        if self.scratch:
            path = Path(tempfile.mkdtemp(prefix=f"pipeline-run-rank{rank}-"))
        elif cfg.out:
            path = Path(cfg.out)
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = Path("runs") / f"{stage}-{stamp}"
            i = 1
            while path.exists():
                path = Path("runs") / f"{stage}-{stamp}-{i}"
                i += 1
        self.path = path
        self.path.mkdir(parents=True, exist_ok=True)
        self.info: dict[str, Any] = {
            "stage": stage,
            "status": "running",
            "name": cfg.name,
            "seed": cfg.seed,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
            "cache_dir": str(cache_root) if cache_root else None,
            "versions": versions(),
            "cache_keys": {},
        }
        (self.path / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        self._save()

    def record_keys(self, keys: dict[str, str]) -> None:
        self.info["cache_keys"].update(keys)
        self._save()

    def record(self, **kw: Any) -> None:
        self.info.update(kw)
        self._save()

    def finish(self) -> None:
        self.info["status"] = "complete"
        self.info["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self._save()
        self._drop_scratch()

    def fail(self, message: str) -> None:
        self.info["status"] = "failed"
        self.info["error"] = message
        self._save()

    def _drop_scratch(self) -> None:
        if self.scratch:
            shutil.rmtree(self.path, ignore_errors=True)

    def _save(self) -> None:
        write_json_atomic(self.path / "run.json", self.info)
