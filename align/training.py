"""What every descriptor trainer takes besides its data and hyperparameters (:class:`TrainerOptions`:
seed, device, compute dtype, progress, resumable state), and the rule that resolves ``align.dtype``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from cvgl.core.errors import UserError

#: Seconds between saves of a large resumable state (see :class:`align.train_stream1.SaveSchedule`).
STATE_SAVE_INTERVAL_S = 60.0
DTYPES = ("auto", "float32", "bfloat16")

OnEpoch = Callable[[int, dict[str, float]], None]
SaveState = Callable[[int, dict[str, Any]], None]


@dataclass
class TrainerOptions:
    """How a trainer runs: ``seed`` (all its randomness; the caller's RNG is untouched), ``device``,
    ``dtype`` (``float32``, or ``bfloat16`` autocast), ``on_epoch(epoch, metrics)`` after each epoch,
    and resuming: ``save_state(epoch, state)`` receives a resumable state every ``checkpoint_every``
    epochs and at the end (a state of 32 MB or more at most every ``save_interval_s`` seconds when
    that is > 0); passing it back as ``state`` continues from there and ends identical to an
    uninterrupted run."""

    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    on_epoch: OnEpoch | None = None
    state: dict[str, Any] | None = None
    save_state: SaveState | None = None
    save_interval_s: float = 0.0
    checkpoint_every: int = 1


def compute_dtype(name: str, device: str) -> str:
    """Resolve ``align.dtype``: ``auto`` is ``bfloat16`` on CUDA and on CPUs with native bf16 matmuls
    (AMX or AVX512-BF16), else ``float32`` (elsewhere bf16 is emulated: 0.25 against 18 GFLOP/s
    for float32 on a 2-core AVX2 EPYC, BENCHMARKS.md)."""
    if name not in DTYPES:
        raise UserError(f"align.dtype={name!r} is unknown; use one of {', '.join(DTYPES)}")
    if name != "auto":
        return name
    if torch.device(device).type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if torch.device(device).type != "cpu":
        return "float32"
    cpu = getattr(torch, "cpu", None)
    native = any(
        bool(getattr(cpu, probe, lambda: False)())
        for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    )
    return "bfloat16" if native else "float32"
