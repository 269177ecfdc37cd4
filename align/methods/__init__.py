"""The built-in alignment methods: each module of this package registers its methods when imported.

Adding a method is adding a module here that calls :func:`align.registry.register` (modules whose
name starts with ``_`` hold shared helpers and register nothing).
"""

from __future__ import annotations

import importlib
import pkgutil


def _import_all() -> None:
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


_import_all()
