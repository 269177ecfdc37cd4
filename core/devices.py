"""The one rule that turns a device setting (``backbone.device``, ``align.device``,
``retrieve.device``, a function's ``device=``) into a ``torch.device``.

``auto`` is the GPU when CUDA is available, else the CPU. An explicit ``cuda``/``cuda:N`` without CUDA
is an error naming the setting, except where a caller computes the same numbers on the CPU anyway
(metrics, retrieval): there it falls back with a warning, so a config written for a GPU machine still
runs elsewhere.
"""

from __future__ import annotations

import warnings

import torch
from cvgl.core.errors import UserError

#: Device types the tool runs on.
DEVICE_TYPES: tuple[str, ...] = ("cpu", "cuda")
_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(
    name: str | torch.device, key: str = "device", *, cuda_fallback: bool = False
) -> torch.device:
    """The device ``name`` asks for.

    Args:
        name: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, or a ``torch.device``.
        key: the setting ``name`` came from, named in error messages (e.g. ``backbone.device``).
        cuda_fallback: when CUDA is asked for but not available, warn and return the CPU instead
            of raising.

    Raises:
        UserError: an unknown or unsupported device, or CUDA without CUDA (unless ``cuda_fallback``).
    """
    if isinstance(name, str) and name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {name!r} for {key}; use {_CHOICES}") from None
    if dev.type not in DEVICE_TYPES:
        raise UserError(f"unsupported device {name!r} for {key}; use {_CHOICES}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        if not cuda_fallback:
            raise UserError(f"{key}={name!s} but CUDA is not available; set {key}=auto or cpu")
        # stacklevel 3: the warning points at whoever called the function that resolved the device.
        warnings.warn(
            f"{key}={name!s} but CUDA is not available; computing on the CPU", UserWarning, stacklevel=3
        )
        return torch.device("cpu")
    return dev


__all__ = ["DEVICE_TYPES", "resolve_device"]
