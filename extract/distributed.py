"""The torchrun launcher: ``extract.launcher=torchrun`` runs a plain ``pipeline extract`` as a job of
several ranks, each running ``python -m cvgl.extract.distributed CONFIG`` (:func:`main`), which is the
extraction runner in that rank. :func:`extract` is the extraction stage's entry: the launcher when the
config asks for it, else the runner in this process.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from cvgl.cache.store import CacheStore
from cvgl.configs.schema import Config
from cvgl.core.devices import resolve_device
from cvgl.core.errors import UserError
from cvgl.core.keys import content_key
from cvgl.extract.keys import backbone_identity, check_layers, entry_spec, images_digest
from cvgl.extract.models import compute_dtype
from cvgl.extract.roots import image_lists
from cvgl.extract.runner import ExtractedEntry, ProgressFn, run_extraction


def extract(cfg: Config, store: CacheStore, *, progress: ProgressFn | None = None) -> list[ExtractedEntry]:
    """Extract every view of ``cfg.dataset`` at every layer of ``cfg.backbone`` into the cache: as a
    torchrun job when ``extract.launcher=torchrun`` (and this process is not already one of its
    ranks), else in this process."""
    if cfg.extract.launcher == "torchrun" and "RANK" not in os.environ:
        return launch_torchrun(cfg, store)
    return run_extraction(cfg, store, progress=progress)


def launch_torchrun(cfg: Config, store: CacheStore) -> list[ExtractedEntry]:
    """Run this extraction as a torchrun job of ``extract.nproc`` ranks, then report its entries.

    The job gets the resolved config (launcher off) and the same cache; when it has finished, this
    process finds every entry complete and reports them (``reused`` is False for those the job made).
    """
    import yaml
    from cvgl.configs.schema import to_dict

    n = cfg.extract.nproc or (torch.cuda.device_count() if torch.cuda.is_available() else 1)
    if n < 1:
        raise UserError(f"extract.nproc={cfg.extract.nproc} must be >= 1 (0 = one rank per visible GPU)")
    job = dataclasses.replace(cfg, extract=dataclasses.replace(cfg.extract, launcher="none"))
    before = _missing_keys(job, store)
    store.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="torchrun-", dir=store.root) as tmp:
        cfg_path = Path(tmp) / f"{cfg.name}.yaml"
        cfg_path.write_text(yaml.safe_dump(to_dict(job), sort_keys=False))
        log = Path(tmp) / "stderr.log"
        # The folder holding the `cvgl` package, so `-m cvgl.extract.distributed` finds this copy of it.
        root = str(Path(__file__).parents[2])
        env = {
            **os.environ,
            "PIPELINE_CACHE_DIR": str(store.root),
            "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p),
        }
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={n}",
            "-m",
            "cvgl.extract.distributed",
            str(cfg_path),
        ]
        with open(log, "w") as err:
            rc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err).returncode
        if rc != 0:
            text = log.read_text(errors="replace")
            lines = [ln[len("error: ") :] for ln in text.splitlines() if ln.startswith("error: ")]
            reason = lines[0] if lines else (text.strip().splitlines() or ["no message"])[-1]
            raise UserError(f"torchrun extraction ({n} ranks) failed: {reason}")
    entries = run_extraction(job, store)
    return [dataclasses.replace(e, reused=e.key not in before) for e in entries]


def _missing_keys(cfg: Config, store: CacheStore) -> set[str]:
    """Keys of the entries ``cfg`` would have to compute (without loading the backbone)."""
    lists = image_lists(cfg, store)
    device = resolve_device(cfg.backbone.device, "backbone.device")
    dtype = compute_dtype(cfg, device)
    ident = backbone_identity(cfg, store)
    out = set()
    for images in lists:
        digest = images_digest(images, strict=cfg.dataset.strict_digest)
        for L in check_layers(cfg):
            key = content_key(entry_spec(cfg, ident, images, L, dtype, digest))
            if not store.has(key):
                out.add(key)
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m cvgl.extract.distributed CONFIG [k=v …]``: what each torchrun rank runs.

    Errors end as one ``error: …`` line on stderr with exit code 2, like the pipeline command.
    """
    from cvgl.configs.schema import load_config

    args = list(sys.argv[1:] if argv is None else argv)
    path, overrides = (args[0], args[1:]) if args and "=" not in args[0] else (None, args)
    try:
        cfg = load_config(path, overrides)
        run_extraction(cfg, CacheStore.open_default())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()


__all__ = ["extract", "launch_torchrun", "main"]
