"""Extraction over several processes: this process's rank, its device, and the torchrun launcher.

Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) rank ``r`` of ``W`` computes the shards
``i ≡ r (mod W)`` and writes them itself; rank 0 holds the entry locks and writes the manifests once
every rank has passed a barrier. ``extract.launcher=torchrun`` starts such a job from a plain
``pipeline extract``: each rank runs ``python -m cvgl.extract.distributed CONFIG`` (:func:`main`).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cvgl.cache.store import CacheStore
from cvgl.configs.schema import Config
from cvgl.core.devices import resolve_device
from cvgl.core.errors import UserError
from cvgl.core.keys import content_key
from cvgl.extract.keys import backbone_identity, check_layers, entry_spec, images_digest
from cvgl.extract.models import compute_dtype
from cvgl.extract.roots import image_lists

if TYPE_CHECKING:
    from cvgl.extract.runner import ExtractedEntry

#: Timeout of the rank barriers: a rank may wait for the slowest one through a whole image list.
BARRIER_TIMEOUT = timedelta(hours=12)


@dataclass
class Ranks:
    """This process's place in a multi-process extraction (one process: rank 0 of 1).

    ``group`` is a gloo group for control messages (barriers, small objects): the work itself needs
    no collective, so this works the same with nccl as the default backend.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: Any = None

    @property
    def leader(self) -> bool:
        """Rank 0: the process that locks entries and writes manifests."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every rank gets here (nothing to wait for with one process)."""
        if self.world > 1:
            torch.distributed.barrier(group=self.group)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj, group=self.group)
        return out


def ranks_from_env(device_name: str = "auto") -> Ranks:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``), if any.

    Backend: nccl when the ranks use CUDA, gloo otherwise; control messages always go over gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Ranks()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dist = torch.distributed
    if not dist.is_available():
        raise UserError("WORLD_SIZE is set but this torch has no torch.distributed; run one process")
    cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=BARRIER_TIMEOUT)
    group = dist.new_group(backend="gloo", timeout=BARRIER_TIMEOUT) if dist.get_backend() != "gloo" else None
    return Ranks(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local, group=group)


def rank_device(cfg: Config, ranks: Ranks) -> torch.device:
    """The device of this rank: its local GPU under torchrun, else ``backbone.device``."""
    device = resolve_device(cfg.backbone.device, "backbone.device")
    if ranks.world > 1 and device.type == "cuda" and device.index is None:
        return torch.device("cuda", ranks.local_rank)
    return device


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
        root = str(Path(__file__).resolve().parents[1])
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
    from cvgl.extract.runner import run_extraction

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
    from cvgl.extract.runner import run_extraction

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


__all__ = ["Ranks", "launch_torchrun", "main", "rank_device", "ranks_from_env"]
