"""A rerun into an existing out= folder: the earlier run's model files go, whatever method made them."""

from __future__ import annotations

import json

from cvgl.configs.schema import load_config
from cvgl.core.run_folder import RunFolder


def test_rerun_removes_the_model_files_the_earlier_run_listed_and_nothing_else(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(
        json.dumps({"status": "complete", "model": {"files": ["center.safetensors", "center.json", "../keep.txt"]}})
    )
    for name in ("center.safetensors", "center.json", "notes.txt"):
        (out / name).write_text("x")
    (tmp_path / "keep.txt").write_text("outside the run folder")

    RunFolder(load_config("demo", [f"out={out}"]), "align")

    assert not (out / "center.safetensors").exists() and not (out / "center.json").exists()
    assert (out / "notes.txt").read_text() == "x"  # not the tool's: stays
    assert (tmp_path / "keep.txt").exists()  # a listed name that is not a plain file name is ignored
    assert json.loads((out / "run.json").read_text())["status"] == "running"
