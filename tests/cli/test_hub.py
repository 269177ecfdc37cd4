"""Backbone weights by Hugging Face Hub id, resolved from a local Hub cache (nothing reaches the network)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers import TINY, cli, one_error_line

ARCH = {"depth": 3, "hidden_size": 64, "num_heads": 2}  # the tiny ViT-S/16 of TINY
REPO = "testorg/tiny-dinov3"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def _save_weights(folder: Path, seed: int) -> None:
    from cvgl.extract.dinov3 import load_dinov3

    load_dinov3("dinov3_vits16", None, seed=seed, arch_overrides=ARCH).model.save_pretrained(folder)


def _hub_cache(root: Path, repo: str, weights: Path) -> Path:
    """The Hub cache layout: models--org--name/{blobs/<sha256>, snapshots/<rev>/<file> -> blob, refs/main}."""
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    snap = repo_dir / "snapshots" / REVISION
    (repo_dir / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in sorted(weights.iterdir()):
        blob = repo_dir / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, blob)
        os.symlink(os.path.relpath(blob, snap), snap / f.name)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(REVISION)
    return root


def _env(hub: Path, **extra: str) -> dict[str, str]:
    return {"HF_HUB_CACHE": str(hub), "HF_HOME": str(hub.parent / "hf_home"), **extra}


def _run(*args: str, cache: Path, cwd: Path, env: dict[str, str]):
    return cli(*args, cache=cache, cwd=cwd, env=env)


def _keys(run_dir: Path) -> set[str]:
    return set(json.loads((run_dir / "run.json").read_text())["cache_keys"].values())


@pytest.mark.slow
def test_hub_id_resolves_from_offline_cache_and_keys_like_the_same_local_folder(tmp_path):
    local = tmp_path / "local_weights"
    _save_weights(local, seed=7)
    hub = _hub_cache(tmp_path / "hub", REPO, local)
    env = _env(hub, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cache = tmp_path / "cache"

    p = _run("extract", "demo", *TINY, f"backbone.weights={REPO}", "out=from_hub", cache=cache, cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    # The same files from a local folder: every entry is found by key, none is extracted again.
    p = _run("extract", "demo", *TINY, f"backbone.weights={local}", "out=local", cache=cache, cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    keys = _keys(tmp_path / "from_hub")
    assert keys and keys == _keys(tmp_path / "local")
    # The key holds the digest of the checkpoint the id resolved to, not a random-init seed.
    from cvgl.extract.weight_files import weights_digest

    for key in keys:
        spec = json.loads((cache / "entries" / key / "manifest.json").read_text())["spec"]
        assert spec["backbone"]["weights"] == weights_digest(local)


@pytest.mark.slow
def test_hub_id_missing_from_cache_while_offline_is_one_line_and_writes_nothing(tmp_path):
    hub = tmp_path / "hub"
    hub.mkdir()
    cache = tmp_path / "cache"
    env = _env(hub, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    p = _run("extract", "demo", *TINY, "backbone.weights=testorg/absent", "out=r", cache=cache, cwd=tmp_path, env=env)
    line = one_error_line(p)
    assert "testorg/absent" in line and "HF_HUB_OFFLINE=1" in line and str(hub) in line
    entries = cache / "entries"
    assert not entries.exists() or not any(entries.iterdir())


class _GatedHub(BaseHTTPRequestHandler):
    """Answers every request as the Hub does for a gated repo the user has not been granted."""

    def _gated(self) -> None:
        body = b'{"error": "Access to model testorg/gated is restricted."}'
        self.send_response(403)
        self.send_header("X-Error-Code", "GatedRepo")
        self.send_header("X-Error-Message", "Access to model testorg/gated is restricted.")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = _gated

    def log_message(self, *args) -> None:  # keep test output clean
        pass


@pytest.fixture()
def gated_hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _GatedHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_gated_hub_repo_says_to_log_in_in_one_line(tmp_path, gated_hub):
    hub = tmp_path / "hub"
    hub.mkdir()
    env = _env(hub, HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0", HF_ENDPOINT=gated_hub, HF_HUB_DISABLE_TELEMETRY="1")
    p = _run("extract", "demo", *TINY, "backbone.weights=testorg/gated", "out=r", cache=tmp_path / "c", cwd=tmp_path, env=env)
    line = one_error_line(p)
    assert "testorg/gated is gated" in line and "huggingface-cli login" in line


def test_existing_local_path_shaped_like_a_hub_id_stays_a_path(tmp_path, monkeypatch):
    from cvgl.extract.hub import is_hub_id, resolve_weights

    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert not is_hub_id("org/name") and resolve_weights("org/name") == "org/name"
    assert is_hub_id("facebook/dinov3-vith16plus-pretrain-lvd1689m")
    assert not is_hub_id("weights/dinov3.pth") and not is_hub_id("/abs/path") and not is_hub_id("plain")
