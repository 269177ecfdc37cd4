"""A sweep checks backbone.arch up front: `{depth:3}` (YAML's missing space) stops it before any point."""

from __future__ import annotations

import pytest

from tests.helpers import cli, one_error_line


@pytest.mark.parametrize("where", ["base", "axis"])
def test_sweep_refuses_arch_without_space_up_front(tmp_path, where):
    args = (
        ["backbone.arch={depth:3}"] if where == "base" else ["--grid", "backbone.arch=[{depth:3},{depth: 2}]"]
    )
    r = cli("sweep", "demo", "out=sw", *args, "--grid", "seed=[0,1]", cache=tmp_path / "c", cwd=tmp_path)
    assert "space after the colon" in one_error_line(r)
    assert not (tmp_path / "sw" / "points").exists()
