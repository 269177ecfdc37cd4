"""`k=v` arguments: one split for config overrides, sweep axes and the demo, one error for a bad one."""

from __future__ import annotations

import pytest

from tests.helpers import cli, one_error_line


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["run", "demo", "=3"],
            "override '=3' is not of the form section.field=value; e.g. align.method=isms",
        ),
        (["run", "demo", "seed"], "override 'seed' is not of the form section.field=value"),
        (["sweep", "demo", "--grid", "seed"], "--grid 'seed' is not of the form KEY=[v1,v2,...]"),
        (["sweep", "demo", "--zip", "=[1,2]"], "--zip '=[1,2]' is not of the form KEY=[v1,v2,...]"),
        (["demo", "geoalign", "seed"], "override 'seed' is not of the form section.field=value"),
    ],
    ids=["run-no-key", "run-no-equals", "grid-no-equals", "zip-no-key", "demo-no-equals"],
)
@pytest.mark.slow
def test_an_argument_that_is_not_key_equals_value_is_one_line_naming_it_and_writes_nothing(
    tmp_path, args, expected
):
    p = cli(*args, "out=o", cache=tmp_path / "c", cwd=tmp_path, timeout=120)
    assert expected in one_error_line(p)
    assert not (tmp_path / "o").exists() and not (tmp_path / "c").exists()
