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



@pytest.mark.slow
def test_hmm_needs_times_or_a_frame_interval(tmp_path):
    pytest.importorskip("rasterio")
    import numpy as np
    from PIL import Image

    from tests.geotiffs import texture, utm_map

    data = texture(200, 300, seed=3)
    m = utm_map(tmp_path / "map.tif", data=data, res=1.0)
    (tmp_path / "photos" / "f1").mkdir(parents=True)
    lines = ["name,lat,lon"]
    for k in range(3):
        crop = data[:, 50:110, 40 + 60 * k : 100 + 60 * k].transpose(1, 2, 0)
        Image.fromarray(np.ascontiguousarray(crop)).save(tmp_path / "photos" / "f1" / f"p{k}.png")
        lines.append(f"p{k}.png,30.7,117.0")
    (tmp_path / "pos.csv").write_text("\n".join(lines) + "\n")
    model = [a for a in TINY if not a.startswith("dataset.")] + ["backbone.layers=[2]", "extract.num_workers=0"]
    args = ["run", "dataset.layout=map", f"dataset.maps=[{m}]", "root=photos", "dataset.query_positions=pos.csv",
            "dataset.tiles.size_m=60", "dataset.tiles.px=32", *model, "align.method=identity", "protocol=map",
            "retrieve.locate.sequence=hmm", "retrieve.locate.k=3"]  # fmt: skip
    line = one_error_line(cli(*args, f"out={tmp_path / 'a'}", cache=tmp_path / "c", cwd=tmp_path))
    assert "dataset.frame_interval_s" in line
    p = cli(*args, "dataset.frame_interval_s=2", f"out={tmp_path / 'b'}", cache=tmp_path / "c", cwd=tmp_path, quiet=False)
    assert p.returncode == 0, p.stderr
    # The positions lie outside the map: one warning line, the frames still located, no metrics.
    assert sum(ln.startswith("warning: 3 of 3 frames") for ln in p.stderr.splitlines()) == 1, p.stderr
    header = (tmp_path / "b" / "locations.csv").read_text().splitlines()[0]
    assert header == "name,lat,lon,score,error_m,seq_lat,seq_lon,seq_error_m,topk"
