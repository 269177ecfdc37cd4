import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Tests must never reach a hub or pick up a user's cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(d))
    return d


@pytest.fixture()
def one_thread():
    """Torch on one thread for the test: small ops on a shared 2-core machine run far faster without
    OpenMP spin-waiting. Files of small-tensor tests use it with ``pytestmark``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture()
def tiny_config(tmp_path):
    """The demo shrunk to seconds (``tests.helpers.TINY``), its run folder ``tmp_path / "run"``."""
    from cvgl.configs.schema import load_config

    from tests.helpers import TINY

    return load_config("demo", [*TINY, f"out={tmp_path / 'run'}"])
