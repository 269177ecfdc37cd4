"""Alignment speed settings that must not cost correctness: how often the resumable training state
is saved, and ``align.dtype`` (bf16 autocast) with its place in the cache key.

Everything goes through the real alignment stage (``align.stage.run_alignment``, once ``pipeline
align`` in a real process) on tiny synthetic cached descriptors.
"""

from __future__ import annotations

import json
from pathlib import Path

import cvgl.align.train_stream1 as train_stream1
import cvgl.align.training as training
import numpy as np
import pytest
import torch
from cvgl.align.stage import run_alignment
from cvgl.align.synthetic import CrossViewWorld, WorldConfig, align_overrides, write_cache
from cvgl.cache.store import CacheStore
from cvgl.configs.schema import load_config
from cvgl.core.run_folder import RunFolder

from tests.helpers import cli, one_error_line

ROOT = Path(__file__).resolve().parents[2]
NAME = "syn"
LAYERS = (1, 2)
ISMS = {"out_dim": 8, "epochs": 3, "batch_size": 16}
TINY = ["align.params.isms=" + json.dumps(ISMS)]

pytestmark = pytest.mark.usefixtures("one_thread")


def make_store(root: Path) -> CacheStore:
    world = CrossViewWorld(WorldConfig(dim=16, layers=LAYERS, seed=3))
    test = world.sample(8, 3, 2, seed=4)
    train = world.sample(8, 3, 0, seed=5, first_label=100, split="train")
    store = CacheStore(root)
    write_cache(store, NAME, test, train)
    return store


def config(method: str, out: Path, *extra: str, epochs: int = 6):
    ov = align_overrides(NAME, LAYERS) + TINY + [f"method={method}", f"out={out}"]
    return load_config(None, ov + ["align.params=" + json.dumps({"epochs": epochs, "isms": ISMS}), *extra])


def align(cfg, store: CacheStore, log=None):
    run = RunFolder(cfg, "align", cache_root=store.root)
    out = run_alignment(cfg, store, run, log=log)
    run.finish()
    return out, run


class Killed(RuntimeError):
    pass


def _killed_at(model: str, stop: int):
    def log(desc, epoch, epochs, losses):
        if desc == f"align {model}" and epoch == stop:
            raise Killed(f"killed after epoch {epoch}")

    return log


@pytest.mark.slow
@pytest.mark.parametrize("method,model", [("geoalign", "stream1"), ("isms", "isms")])
def test_large_state_is_not_rewritten_every_epoch_and_a_kill_before_its_first_save_restarts_identical(
    tmp_path, monkeypatch, method, model
):
    # Every state counts as large, and the save interval is longer than the run: nothing but the
    # final state may be written, so a kill mid-run leaves no state and the rerun starts over.
    monkeypatch.setattr(train_stream1, "SMALL_STATE_BYTES", 0)
    monkeypatch.setattr(training, "STATE_SAVE_INTERVAL_S", 3600.0)
    ref_out, ref_run = align(config(method, tmp_path / "ref"), make_store(tmp_path / "ref_cache"))

    store = make_store(tmp_path / "cache")
    with pytest.raises(Killed):
        align(config(method, tmp_path / "run"), store, log=_killed_at(model, 2))
    digest = json.loads((tmp_path / "run" / "run.json").read_text())["alignment"]["run_digest"]
    assert not list((store.root / "models" / digest).glob("state-*.pt"))

    epochs: list[int] = []
    out, run = align(config(method, tmp_path / "run2"), store, log=lambda d, e, n, x: epochs.append(e))
    assert epochs[0] == 1  # started over
    assert (run.path / f"{model}.safetensors").read_bytes() == (
        ref_run.path / f"{model}.safetensors"
    ).read_bytes()
    assert [a.key for a in out] == [a.key for a in ref_out]


@pytest.mark.slow
def test_large_state_saved_by_time_resumes_from_the_last_save_identical(tmp_path, monkeypatch):
    # A zero-length interval: the large-state path saves after every epoch, so the kill after
    # epoch 3 resumes from the state of epoch 2 (0-based) and must end as the uninterrupted run.
    monkeypatch.setattr(train_stream1, "SMALL_STATE_BYTES", 0)
    monkeypatch.setattr(training, "STATE_SAVE_INTERVAL_S", 1e-9)
    _, ref_run = align(config("geoalign", tmp_path / "ref"), make_store(tmp_path / "ref_cache"))
    store = make_store(tmp_path / "cache")
    with pytest.raises(Killed):
        align(config("geoalign", tmp_path / "run"), store, log=_killed_at("stream1", 3))
    epochs: list[int] = []
    _, run = align(config("geoalign", tmp_path / "run2"), store, log=lambda d, e, n, x: epochs.append(e))
    assert epochs[0] == 3
    assert (run.path / "stream1.safetensors").read_bytes() == (
        ref_run.path / "stream1.safetensors"
    ).read_bytes()
    assert (run.path / "history.jsonl").read_text() == (ref_run.path / "history.jsonl").read_text()


# Aligned key of config("geoalign", …) in float32, as computed before align.dtype existed (less the
# ISMS settings stream 1 never read): entries trained in float32 must keep their keys.
FLOAT32_GEOALIGN_KEY = "67504e234ccf2e288528c20a5bcd3dcdb22ded040b21659eabdaca8cacc46d0e"


@pytest.mark.slow
def test_float32_keeps_the_existing_key_and_bfloat16_gets_its_own_deterministic_entries(tmp_path):
    keys, weights = {}, {}
    for run_name, dtype in (("f32", "float32"), ("bf16a", "bfloat16"), ("bf16b", "bfloat16")):
        store = make_store(tmp_path / f"cache_{run_name}")
        out, run = align(config("geoalign", tmp_path / run_name, f"align.dtype={dtype}", epochs=3), store)
        keys[run_name] = {a.view: a.key for a in out}
        weights[run_name] = (run.path / "stream1.safetensors").read_bytes()
        for a in out:
            d = store.open(a.key).read()[0]
            assert np.isfinite(d).all()
    assert keys["f32"]["query_drone"] == FLOAT32_GEOALIGN_KEY
    assert keys["bf16a"] == keys["bf16b"]
    assert set(keys["bf16a"].values()).isdisjoint(keys["f32"].values())
    assert weights["bf16a"] == weights["bf16b"]  # same seed, same bytes, also in bf16
    assert weights["bf16a"] != weights["f32"]


def test_auto_dtype_is_float32_on_a_cpu_without_native_bf16():
    if torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported():
        assert training.compute_dtype("auto", "cpu") == "bfloat16"
    else:
        assert training.compute_dtype("auto", "cpu") == "float32"
    assert training.compute_dtype("float32", "cpu") == "float32"


@pytest.mark.slow
def test_pipeline_align_unknown_dtype_is_one_line_exit_2(tmp_path):
    store = make_store(tmp_path / "cache")
    args = [*align_overrides(NAME, LAYERS), *TINY, "method=geoalign", "align.dtype=float16"]
    line = one_error_line(cli("align", *args, f"out={tmp_path / 'run'}", cache=store.root, cwd=tmp_path))
    assert "align.dtype" in line and "float32" in line
    assert not (store.root / "models").exists()
