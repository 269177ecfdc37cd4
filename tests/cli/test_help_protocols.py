"""`pipeline retrieve --help` lists the protocols from their registry."""

from __future__ import annotations

from cvgl.retrieve.metrics import ALL_PROTOCOLS

from tests.helpers import cli


def test_retrieve_help_lists_every_registered_protocol(tmp_path):
    p = cli("retrieve", "--help", cache=tmp_path / "cache", cwd=tmp_path, env={"COLUMNS": "200"})
    assert p.returncode == 0, p.stderr
    assert f"protocol={'|'.join(ALL_PROTOCOLS)}" in " ".join(p.stdout.split())
    assert "vigor" in p.stdout
