"""cvgl: a feature cache and retrieval pipeline for cross-view geo-localization.

The Python API is :mod:`cvgl.pipeline` (``from cvgl import pipeline``); its calls that do not share a
name with a subpackage are also reachable here (``cvgl.load_config``, ``cvgl.run``, ``cvgl.evaluate``).
The stages are the subpackages ``cvgl.extract``, ``cvgl.align`` and ``cvgl.retrieve``.
"""

from __future__ import annotations

from typing import Any

from cvgl.core.threads import prepare_openmp_env

# Before anything imports torch: OpenMP reads its wait policy once, when torch loads it
# (core/threads.py says how the tool chooses it from the load).
prepare_openmp_env()

# `align`, `extract` and `retrieve` name subpackages here; their API calls are `pipeline.align` etc.
__all__ = ["Progress", "Reporter", "StageResult", "UserError", "evaluate", "load_config", "open_entry", "run"]


def __getattr__(name: str) -> Any:
    # The API loads on first use, so `import cvgl.cache.store` does not pull in typer and the CLI.
    if name in __all__:
        from cvgl import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'cvgl' has no attribute {name!r}")
