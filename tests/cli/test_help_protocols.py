"""`pipeline retrieve --help` lists the protocols from their registry."""

from __future__ import annotations

from cvgl.retrieve.metrics import ALL_PROTOCOLS, POSITION_PROTOCOLS

from tests.helpers import cli


def test_retrieve_help_lists_every_registered_protocol(tmp_path):
    p = cli("retrieve", "--help", cache=tmp_path / "cache", cwd=tmp_path, env={"COLUMNS": "200"})
    assert p.returncode == 0, p.stderr
    listed = " ".join(p.stdout.split()).split("protocol=")[1].split()[0].split("|")
    assert set(listed) == set(ALL_PROTOCOLS) | set(POSITION_PROTOCOLS) and "vigor" in listed
