"""Shipped experiment configs (YAML files in this package) and the config schema."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from cvgl.core.errors import UserError


def shipped_configs() -> dict[str, Path]:
    """Name → path of every YAML file shipped with the package."""
    root = resources.files("cvgl.configs")
    return {p.name[: -len(".yaml")]: Path(str(p)) for p in root.iterdir() if p.name.endswith(".yaml")}


def resolve_config_path(path: str | Path) -> Path:
    """A config file path, or a shipped config by name (``demo``, ``demo.yaml``, ``configs/demo.yaml``)."""
    p = Path(path)
    if p.is_file():
        return p
    shipped = shipped_configs()
    name = p.name[: -len(".yaml")] if p.name.endswith((".yaml", ".yml")) else p.name
    if name in shipped and (len(p.parts) == 1 or p.parent.name == "configs"):
        return shipped[name]
    raise UserError(
        f"config {path} not found; give a YAML file or one of the shipped configs: {', '.join(sorted(shipped))}"
    )
