"""One device rule for every stage: auto, explicit devices, CUDA asked for where there is none."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cvgl.cache.store import CacheStore
from cvgl.core.devices import resolve_device
from cvgl.core.errors import UserError
from PIL import Image

from tests.helpers import cli, one_error_line

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")


def test_auto_is_the_gpu_when_there_is_one_else_the_cpu():
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto", "backbone.device").type == want


def test_explicit_devices_and_torch_devices_are_taken_as_given():
    assert resolve_device("cpu", "align.device") == torch.device("cpu")
    assert resolve_device(torch.device("cpu"), "device") == torch.device("cpu")


@pytest.mark.parametrize("name", ["tpu", "cuda:x", "meta"])
def test_unknown_or_unsupported_device_is_an_error_naming_the_setting(name):
    with pytest.raises(UserError, match=r"(unknown|unsupported) device .* for retrieve\.device; use auto"):
        resolve_device(name, "retrieve.device")


@no_cuda
def test_cuda_without_cuda_is_an_error_naming_the_setting_unless_a_fallback_is_allowed():
    with pytest.raises(
        UserError, match=r"^align\.device=cuda:1 but CUDA is not available; set align\.device"
    ):
        resolve_device("cuda:1", "align.device")
    with pytest.warns(UserWarning, match="retrieve.device=cuda but CUDA is not available"):
        assert resolve_device("cuda", "retrieve.device", cuda_fallback=True) == torch.device("cpu")


@pytest.mark.slow
@no_cuda
def test_extract_with_cuda_on_a_cpu_machine_is_one_line_naming_backbone_device(tmp_path: Path):
    for k in range(2):
        p = tmp_path / "ds" / "0" / f"{k}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((32, 32, 3), 40 * k, np.uint8)).save(p)
    proc = cli(
        "extract",
        "layout=folder",
        f"root={tmp_path / 'ds'}",
        "backbone.device=cuda",
        "backbone.arch={depth: 2, hidden_size: 32, num_heads: 2}",
        "backbone.name=dinov3_vits16",
        "layers=[1]",
        cache=tmp_path / "c",
        cwd=tmp_path,
    )
    line = one_error_line(proc)
    assert "backbone.device=cuda" in line and "CUDA is not available" in line, line
    assert CacheStore(tmp_path / "c").keys() == []
