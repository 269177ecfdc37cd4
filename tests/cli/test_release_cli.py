"""`pipeline retrieve configs/geoalign_release.yaml root=DIR mode=… fusion=…` on a release-shaped folder."""

import json

import pytest
import torch
from cvgl.cache.store import CacheStore
from cvgl.retrieve.metrics import evaluate

from tests.helpers import cli, one_error_line
from tests.unit.test_geoalign_release import reference_isms, reference_stream1, write_release


@pytest.mark.slow
@pytest.mark.parametrize("mode,fusion", [("D2S", "true"), ("S2D", "false")])
def test_release_folder_evaluates_like_an_independent_forward(tmp_path, mode, fusion):
    info = write_release(tmp_path / "rel", seed=3)
    cache = tmp_path / "c"
    p = cli("retrieve", "configs/geoalign_release.yaml", f"root={tmp_path / 'rel'}", f"mode={mode}", f"fusion={fusion}",
            "out=o", cache=cache, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["protocol"] == "geoalign"
    # The same numbers from the test's own forward pass of the release weights.
    f, sd = info["feats"], info["sd"]
    desc = {}
    for v in ("sat", "dro"):
        d = reference_stream1(sd, f[(mode, 28, v)], drone=v == "dro")
        if fusion == "true":
            d2 = reference_isms(info["isms"], [f[(mode, 26, v)], f[(mode, 28, v)]])
            d = torch.nn.functional.normalize(torch.cat([d, d2], dim=-1), dim=-1)
        desc[v] = d.numpy()
    q, g = ("dro", "sat") if mode == "D2S" else ("sat", "dro")
    ids = f[(mode, "ids")]
    ref, _ = evaluate(desc[q], ids[q].numpy(), desc[g], ids[g].numpy(), "geoalign", topk=1)
    for k in ("R@1", "R@5", "R@10", "AP"):
        assert abs(m[k] - ref[k]) < 0.01, (k, m[k], ref[k])
    assert CacheStore(cache).aliases()  # features imported into the cache


@pytest.mark.slow
def test_release_folder_missing_checkpoint_is_one_line(tmp_path):
    write_release(tmp_path / "rel", seed=0)
    (tmp_path / "rel" / "outputs" / "base_stream2" / "isms_model_26_28.pth").unlink()
    p = cli("retrieve", "configs/geoalign_release.yaml", f"root={tmp_path / 'rel'}", cache=tmp_path / "c", cwd=tmp_path)
    assert "isms_model_26_28.pth is missing" in one_error_line(p)
