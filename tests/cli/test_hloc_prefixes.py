"""`cache import FILE.h5 --prefix db/=gallery --prefix query/=query` splits one hloc global-feature file
into one entry per name prefix; duplicate gallery rows are reported in one warning at retrieval."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from tests.helpers import cli, one_error_line


def _hloc_file(path, names, desc):
    with h5py.File(path, "w") as f:
        for n, d in zip(names, desc):
            f.create_group(n).create_dataset("global_descriptor", data=d)


@pytest.mark.slow
def test_prefixes_split_one_file_and_ties_are_reported(tmp_path):
    rng = np.random.default_rng(0)
    db = [f"db/{i}/img{i}.jpg" for i in range(8)]
    qs = [f"query/{i}/q{i}.jpg" for i in range(5)]
    desc = rng.normal(size=(13, 16)).astype(np.float32)
    desc[3] = desc[2]  # one exact duplicate gallery row
    desc[4] = desc[2]  # and another: one group of three
    _hloc_file(tmp_path / "global-feats.h5", db + qs, desc)
    cache = tmp_path / "cache"
    r = cli(
        "cache",
        "import",
        str(tmp_path / "global-feats.h5"),
        "--alias",
        "h",
        "--prefix",
        "db/=gallery",
        "--prefix",
        "query/=query",
        cache=cache,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    r = cli(
        "retrieve",
        "query=h.query",
        "gallery=h.gallery",
        "out=r",
        "retrieve.report=false",
        cache=cache,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["n_queries"] == 5 and m["n_gallery"] == 8  # labels from the integer folders
    assert m["duplicate_gallery_rows"] == 2
    ties = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:") and "duplicate" in ln]
    assert len(ties) == 1 and "2 rows" in ties[0], r.stderr
    r = cli(
        "cache",
        "import",
        str(tmp_path / "global-feats.h5"),
        "--prefix",
        "nope/=gallery",
        cache=cache,
        cwd=tmp_path,
    )
    assert "starts with 'nope/'" in one_error_line(r)
    r = cli(
        "cache", "import", str(tmp_path / "global-feats.h5"), "--prefix", "db/", cache=cache, cwd=tmp_path
    )
    assert "PREFIX=ROLE" in one_error_line(r)
