"""dataset.mode follows the layout when it is not set; a YAML `{depth:3}` gets a hint at load."""

from __future__ import annotations

import pytest
from cvgl.cache.naming import query_gallery_views
from cvgl.configs.schema import load_config
from cvgl.core.errors import UserError


@pytest.mark.parametrize(
    "layout, mode",
    [("vigor", "G2S"), ("cvusa", "G2A"), ("cvact", "G2A"), ("u1652", "D2S"), ("sues200", "D2S")],
)
def test_mode_follows_the_layout(layout, mode):
    cfg = load_config(None, [f"dataset.layout={layout}"])
    assert cfg.dataset.mode == mode
    query_gallery_views(cfg)  # a layout's own default direction applies to it


def test_explicit_mode_wins():
    assert load_config(None, ["dataset.layout=vigor", "mode=S2G"]).dataset.mode == "S2G"


def test_vpr_reports_recall_at_20_by_default():
    assert load_config(None, ["protocol=vpr"]).retrieve.ks == [1, 5, 10, 20]
    assert load_config(None, []).retrieve.ks == [1, 5, 10]
    assert load_config(None, ["protocol=vpr", "retrieve.ks=[1]"]).retrieve.ks == [1]


def test_arch_without_space_gets_a_hint():
    with pytest.raises(UserError, match="space after the colon") as e:
        load_config(None, ["backbone.arch={depth:3}"])
    assert "{depth: 3}" in str(e.value)
    assert load_config(None, ["backbone.arch={depth: 3}"]).backbone.arch == {"depth": 3}
