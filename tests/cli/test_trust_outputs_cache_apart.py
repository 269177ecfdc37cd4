"""A run folder and the cache never overlap, so no run removes a file the cache owns; `cache verify`
notices a trained model whose listed files are gone."""

from __future__ import annotations

import json

import pytest

from tests.helpers import TINY, cli, one_error_line


@pytest.mark.slow
def test_out_inside_the_cache_is_refused_and_the_cached_model_survives(tmp_path):
    cache = tmp_path / "cache"
    p = cli("run", "demo", *TINY, "align.method=isms", "out=r", cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    digest = json.loads((tmp_path / "r" / "run.json").read_text())["alignment"]["run_digest"]
    model = cache / "models" / digest
    files = sorted(json.loads((model / "model-files.json").read_text())["files"])
    assert "isms.safetensors" in files
    for _ in range(2):  # repeated: the second run would find the first one's run.json in the model folder
        line = one_error_line(cli("align", "demo", *TINY, "align.method=isms", f"out={model}", cache=cache, cwd=tmp_path))
        assert "inside the cache root" in line
    assert all((model / f).is_file() for f in files)
    assert not (model / "run.json").exists() and not (model / "config.yaml").exists()
    assert cli("cache", "verify", cache=cache, cwd=tmp_path).returncode == 0

    # A cache root inside out= is refused too.
    line = one_error_line(cli("align", "demo", *TINY, "align.method=isms", f"out={tmp_path}", cache=cache, cwd=tmp_path))
    assert "is inside out=" in line

    # A model file gone from the cache is a problem `cache verify` names.
    (model / "isms.safetensors").unlink()
    p = cli("cache", "verify", cache=cache, cwd=tmp_path)
    assert p.returncode == 2
    assert "isms.safetensors: missing" in p.stderr and "model" in p.stderr.splitlines()[-1]

