"""protocol=map's refusals as a user meets them: one line, exit 2."""

from __future__ import annotations

import pytest

from tests.helpers import TINY, cli, one_error_line


@pytest.mark.slow
def test_protocol_map_on_a_gallery_without_footprints_is_one_line(tmp_path):
    p = cli("run", *TINY, "dataset.layout=synthetic", "align.method=identity", "protocol=map",
            f"out={tmp_path / 'run'}", cache=tmp_path / "c", cwd=tmp_path)  # fmt: skip
    line = one_error_line(p)
    assert "holds no tile footprints" in line and "dataset.layout=map" in line

