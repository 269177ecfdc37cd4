"""Extraction cache keys are a promise: an entry extracted by an earlier version is reused by this one.

The keys below were computed for a fixed configuration (a fixed image folder with fixed sizes and
mtimes, and a fixed checkpoint written byte for byte by this test). If a refactor changes what goes
into a key, these values change and the test fails: every user's cache would be recomputed.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import cli

ROOT = Path(__file__).resolve().parents[2]
MTIME_NS = 1_700_000_000_000_000_000
TINY_ARCH = "backbone.arch={depth: 2, hidden_size: 32, num_heads: 2, intermediate_size: 64}"


def _bmp(path: Path, w: int, h: int, seed: int) -> None:
    """An uncompressed 24-bit BMP: its size depends only on w and h, its pixels only on the seed."""
    row = (3 * w + 3) & ~3
    pixels = np.random.RandomState(seed).randint(0, 256, size=(h, row), dtype=np.uint8).tobytes()
    header = b"BM" + struct.pack("<IHHI", 54 + row * h, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, row * h, 2835, 2835, 0, 0)
    path.write_bytes(header + info + pixels)


def _folder(root: Path) -> Path:
    for label in range(2):
        for i in range(3):
            p = root / str(label) / f"img_{i}.bmp"
            p.parent.mkdir(parents=True, exist_ok=True)
            _bmp(p, 40 + 8 * i, 36, seed=10 * label + i)
            os.utime(p, ns=(MTIME_NS, MTIME_NS + label * 1000 + i))
    return root


def _checkpoint(folder: Path) -> Path:
    """A Hugging Face DINOv3 folder whose bytes are fixed: config.json text and numpy-seeded weights."""
    import torch
    from cvgl.extract.dinov3 import load_dinov3
    from safetensors.numpy import save_file

    net = load_dinov3("dinov3_vits16", None, seed=0, arch_overrides={
        "depth": 2, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64,
    })
    rng = np.random.RandomState(0)
    with torch.no_grad():
        names = sorted(net.model.state_dict())
        shapes = {k: tuple(v.shape) for k, v in net.model.state_dict().items()}
    tensors = {k: (rng.standard_normal(shapes[k]) * 0.05).astype(np.float32) for k in names}
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(_CONFIG, sort_keys=True, indent=1) + "\n")
    for f in folder.iterdir():
        os.utime(f, ns=(MTIME_NS, MTIME_NS))
    return folder


# Written literally (not from transformers' defaults), so the file's bytes never depend on a version.
_CONFIG = {
    "architectures": None, "drop_path_rate": 0.0, "hidden_act": "gelu", "hidden_size": 32,
    "image_size": 224, "initializer_range": 0.02, "intermediate_size": 64, "key_bias": False,
    "layer_norm_eps": 1e-05, "layerscale_value": 1e-05, "mlp_bias": True, "model_type": "dinov3_vit",
    "num_attention_heads": 2, "num_channels": 3, "num_hidden_layers": 2, "num_register_tokens": 4,
    "patch_size": 16, "pos_embed_jitter": None, "pos_embed_rescale": 2.0, "pos_embed_shift": None,
    "proj_bias": True, "query_bias": True, "rope_theta": 100.0, "use_gated_mlp": False, "value_bias": True,
}


def _extract(tmp_path: Path, *overrides: str) -> dict[str, str]:
    cache = tmp_path / "cache"
    args = [
        "extract", "demo",
        "layout=folder", f"root={tmp_path / 'images'}", "alias=pin", "name=pin",
        "backbone.name=dinov3_vits16", TINY_ARCH, "backbone.layers=[0,1]", "preprocess.resize=32",
        "extract.batch_size=2", "extract.shard_rows=4", *overrides, f"out={tmp_path / 'run'}",
    ]
    proc = cli(*args, cache=cache, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return {a.name: a.read_text().strip() for a in sorted((cache / "aliases").iterdir())}


@pytest.mark.slow
def test_extraction_keys_of_a_fixed_configuration_never_change(tmp_path):
    _folder(tmp_path / "images")
    random_init = _extract(tmp_path)
    weights = _checkpoint(tmp_path / "hf")
    with_weights = _extract(tmp_path, f"backbone.weights={weights}", "pooling.name=avg")
    got = {"random_init": random_init, "weights": with_weights}
    if os.environ.get("PRINT_PINNED_KEYS"):
        print(json.dumps(got, indent=1, sort_keys=True))
    assert got == PINNED


PINNED = {
    "random_init": {
        "pin@0": "acd9b392a2f8a9ce1d47ca74d534d8d5deeca8fc7ff6de735a85ec1f3a467716",
        "pin@1": "e3b90fc4a4e40a7aaa202c451ebd07912d492bab395f2f682fc21e0a3340b05c",
    },
    "weights": {
        "pin@0": "258aaecc5c913f161c43392a2d9183f9c45f51b82e49f09bf7346e804279759c",
        "pin@1": "9775ddfaaaf9cdc112f09689bc8915873fccbcb82c917a6b8710384a85ff901a",
    },
}
