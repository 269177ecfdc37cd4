"""backbone.weights: checked by name and type before a byte is read; only the weight files are hashed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.helpers import TINY, cli, one_error_line

# Real processes that import torch: several seconds each on a shared machine.
pytestmark = pytest.mark.slow

ARCH = {"depth": 3, "hidden_size": 64, "num_heads": 2}  # the tiny ViT-S/16 of TINY


def _hf_folder(folder: Path) -> Path:
    from cvgl.extract.dinov3 import load_dinov3

    load_dinov3("dinov3_vits16", None, seed=3, arch_overrides=ARCH).model.save_pretrained(folder)
    return folder


def _memo_paths(cache: Path) -> set[str]:
    f = cache / "digests.json"
    return {k.split("|", 1)[0] for k in json.loads(f.read_text())} if f.exists() else set()


def test_a_tree_of_thousands_of_files_without_weights_is_refused_at_once(tmp_path):
    tree = tmp_path / "tree"
    for i in range(40):
        d = tree / f"d{i:02d}"
        d.mkdir(parents=True)
        for j in range(50):
            (d / f"f{j:02d}.bin").write_bytes(b"x" * 64)
    cache = tmp_path / "c"
    t0 = time.time()
    p = cli("extract", "demo", *TINY, f"backbone.weights={tree}", "out=r", cache=cache, cwd=tmp_path, timeout=120)
    line = one_error_line(p)
    assert time.time() - t0 < 60
    assert "without weights" in line and str(tree) in line
    assert _memo_paths(cache) == set()


def test_a_fifo_as_weights_is_one_line_and_never_opened(tmp_path):
    fifo = tmp_path / "weights.pth"
    os.mkfifo(fifo)
    p = cli("extract", "demo", *TINY, f"backbone.weights={fifo}", "out=r", cache=tmp_path / "c", cwd=tmp_path, timeout=60)
    line = one_error_line(p)
    assert "FIFO" in line and str(fifo) in line


def test_a_fifo_in_place_of_a_folders_weights_is_one_line(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    os.mkfifo(folder / "model.safetensors")
    p = cli("extract", "demo", *TINY, f"backbone.weights={folder}", "out=r", cache=tmp_path / "c", cwd=tmp_path, timeout=60)
    assert "FIFO" in one_error_line(p)


def test_a_vgg_weights_folder_is_refused_unread(tmp_path):
    folder = tmp_path / "vggdir"
    folder.mkdir()
    os.mkfifo(folder / "pipe")
    p = cli("extract", "demo", "backbone.name=vgg16", "backbone.arch={}", "backbone.layers=[conv5_3]", f"backbone.weights={folder}", "out=r",
            cache=tmp_path / "c", cwd=tmp_path, timeout=60)
    assert "is a folder; VGG16 weights are one file" in one_error_line(p)


def test_only_the_weight_files_are_hashed_and_recorded(tmp_path):
    folder = _hf_folder(tmp_path / "hf")
    clean = tmp_path / "clean"
    clean.mkdir()
    for f in folder.iterdir():
        (clean / f.name).write_bytes(f.read_bytes())
    # A model folder as people keep it: a README, notes, a FIFO left by a tool, a stray big file.
    (folder / "README.md").write_text("my model\n")
    (folder / "notes").mkdir()
    (folder / "notes" / "run.log").write_text("log\n")
    os.mkfifo(folder / "progress.fifo")
    cache = tmp_path / "c"
    p = cli("extract", "demo", *TINY, f"backbone.weights={folder}", "out=a", cache=cache, cwd=tmp_path, timeout=240)
    assert p.returncode == 0, p.stderr
    assert _memo_paths(cache) == {str((folder / n).resolve()) for n in ("config.json", "model.safetensors")}
    # The extra files are not part of the key: the same weights alone give the same entries.
    p = cli("extract", "demo", *TINY, f"backbone.weights={clean}", "out=b", cache=cache, cwd=tmp_path, timeout=240)
    assert p.returncode == 0, p.stderr
    keys = [set(json.loads((tmp_path / r / "run.json").read_text())["cache_keys"].values()) for r in ("a", "b")]
    assert keys[0] and keys[0] == keys[1]
