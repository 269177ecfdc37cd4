"""YAML bounds: an alias bomb or thousands of nesting levels, anywhere the tool reads YAML, is one line."""

from __future__ import annotations

import time

import pytest

from tests.helpers import cli, one_error_line

# 9 levels of 9 aliases: a few hundred bytes that expand to 9**9 (387 million) strings.
_LEVELS = "abcdefghi"
BOMB_FLOW = "{" + ", ".join(
    [f"a: &a [{', '.join(['lol'] * 9)}]"]
    + [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip(_LEVELS, _LEVELS[1:])]
) + "}"
DEEP = "[" * 3000 + "]" * 3000


def _bomb_block(indent: str) -> str:
    lines = [f"{indent}a: &a [{', '.join(['lol'] * 9)}]"]
    lines += [f"{indent}{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip(_LEVELS, _LEVELS[1:])]
    return "\n".join(lines) + "\n"


def _quick(p, t0: float) -> str:
    assert time.time() - t0 < 60, "the bound was not checked before the expansion"
    return one_error_line(p)


def test_alias_bomb_in_a_config_files_sweep_grid_is_one_line(tmp_path):
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text("sweep:\n  grid:\n    align.method: [identity]\n    bomb:\n" + _bomb_block("      "))
    assert len(cfg.read_bytes()) < 600
    t0 = time.time()
    p = cli("sweep", str(cfg), "out=s", cache=tmp_path / "c", cwd=tmp_path, timeout=120)
    line = _quick(p, t0)
    assert "alias" in line and str(cfg) in line
    assert not (tmp_path / "s").exists()


def test_alias_bomb_in_any_config_field_is_one_line(tmp_path):
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text("align:\n  params:\n" + _bomb_block("    "))
    t0 = time.time()
    p = cli("extract", str(cfg), "out=r", cache=tmp_path / "c", cwd=tmp_path, timeout=120)
    assert "alias" in _quick(p, t0)


@pytest.mark.parametrize("flag", ["--grid", "override"])
def test_alias_bomb_in_a_grid_or_override_value_is_one_line(tmp_path, flag):
    args = ["--grid", f"align.params={BOMB_FLOW}"] if flag == "--grid" else [f"align.params={BOMB_FLOW}"]
    t0 = time.time()
    p = cli("sweep", "demo", "out=s", *args, cache=tmp_path / "c", cwd=tmp_path, timeout=120)
    assert "alias" in _quick(p, t0)
    assert not (tmp_path / "s").exists()


def test_3000_deep_nesting_in_a_config_file_is_one_line(tmp_path):
    cfg = tmp_path / "deep.yaml"
    cfg.write_text(f"align:\n  params: {DEEP}\n")
    t0 = time.time()
    p = cli("extract", str(cfg), "out=r", cache=tmp_path / "c", cwd=tmp_path, timeout=120)
    line = _quick(p, t0)
    assert "nests deeper" in line and str(cfg) in line


@pytest.mark.parametrize("where", ["override", "--grid"])
def test_3000_deep_nesting_in_an_override_or_grid_is_one_line(tmp_path, where):
    args = [f"align.params={DEEP}"] if where == "override" else ["--grid", f"align.params={DEEP}"]
    cmd = "extract" if where == "override" else "sweep"
    t0 = time.time()
    p = cli(cmd, "demo", "out=r", *args, cache=tmp_path / "c", cwd=tmp_path, timeout=120)
    assert "nests deeper" in _quick(p, t0)
