"""Alignment checkpoints: safetensors weights + a JSON config beside them (no pickle, no code)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from configs.errors import UserError


def save_checkpoint(folder: Path, name: str, model: torch.nn.Module, config: dict) -> Path:
    """Write ``<name>.safetensors`` and ``<name>.json`` atomically; returns the weights path."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{name}.safetensors"
    # safetensors refuses shared storage; clone so tied modules (e.g. dec1/dec2) save as plain tensors.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    tmp = weights.with_name(f".{weights.name}.tmp-{os.getpid()}")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, weights)
    meta = folder / f"{name}.json"
    tmp = meta.with_name(f".{meta.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True))
    os.replace(tmp, meta)
    return weights


def load_checkpoint(weights: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint written by :func:`save_checkpoint`."""
    meta = weights.with_suffix(".json")
    if not weights.exists() or not meta.exists():
        raise UserError(
            f"checkpoint {weights} (and its .json config) not found; point at a .safetensors written by `pipeline align`"
        )
    try:
        return load_file(str(weights)), json.loads(meta.read_text())
    except (OSError, ValueError) as e:
        raise UserError(
            f"checkpoint {weights} cannot be read ({e}); it is corrupt or not a safetensors file"
        ) from None
