"""``identity``: the raw descriptors, nothing trained and no aligned entry (retrieval reads the extraction's)."""

from __future__ import annotations

from cvgl.align.registry import Method, register

register(Method("identity", inputs="none", description="raw descriptors; nothing to train"))
