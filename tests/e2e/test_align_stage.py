"""The alignment stage end to end on tiny synthetic cached descriptors (align.synthetic).

Everything goes through ``align.stage.run_alignment`` (and once through ``pipeline align`` in a
real process that is SIGKILLed): aligned entries chain to their parents, reruns reuse them, training
is deterministic by seed and resumable, fusion is what GeoAlign fuses, the exported stream-1 file
loads in the release loader, and bad input is one line with no aligned entry left behind.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cvgl.align.geoalign import Stream1Config
from cvgl.align.geoalign_release import load_stream1
from cvgl.align.isms import ISMS, isms_input
from cvgl.align.stage import run_alignment
from cvgl.align.synthetic import CrossViewWorld, WorldConfig, align_overrides, write_cache
from cvgl.cache.manifest import read_manifest, write_manifest
from cvgl.cache.shards import sum64
from cvgl.cache.store import CacheStore
from cvgl.configs.schema import load_config
from cvgl.core.errors import UserError
from cvgl.core.run_folder import RunFolder
from safetensors.torch import load_file

from tests.helpers import start_cli

ROOT = Path(__file__).resolve().parents[2]
NAME = "syn"
LAYERS = (1, 2)
DIM = 16
# Small enough for seconds; the stream-1 adapter is 16 → 32 with 8 chunks of 4 (nhead 4 → 1 per head).
ISMS_PARAMS = {"out_dim": 8, "epochs": 3, "batch_size": 16}
TINY = ["align.params.isms=" + json.dumps(ISMS_PARAMS)]
EPOCHS = {"epochs": 4}
METHODS = ("isms", "geoalign", "fusion", "emcvgl", "supervised")


# tiny tensors: one torch thread (conftest.py); the CLI subprocesses run with OMP_NUM_THREADS=1
pytestmark = pytest.mark.usefixtures("one_thread")


def make_store(root: Path, *, train: bool = True, dim: int = DIM, labels: bool = True) -> CacheStore:
    world = CrossViewWorld(WorldConfig(dim=dim, layers=LAYERS, seed=3))
    test = world.sample(8, 3, 2, seed=4)
    tr = world.sample(8, 3, 0, seed=5, first_label=100, split="train") if train else None
    if not labels:
        for s in (test, tr):
            if s is not None:
                s.drone_labels = np.full_like(s.drone_labels, -1)
                s.satellite_labels = np.full_like(s.satellite_labels, -1)
    store = CacheStore(root)
    write_cache(store, NAME, test, tr)
    return store


def config(
    method: str, out: Path, *extra: str, seed: int = 0, train: bool = True, params: dict | None = None
):
    ov = (
        align_overrides(NAME, LAYERS, train=train) + TINY + [f"method={method}", f"seed={seed}", f"out={out}"]
    )
    p = dict(EPOCHS) if params is None else params
    if p:
        ov.append("align.params=" + json.dumps({**p, "isms": ISMS_PARAMS}))
    return load_config(None, ov + list(extra))


def align(cfg, store: CacheStore, log=None):
    run = RunFolder(cfg, "align", cache_root=store.root)
    out = run_alignment(cfg, store, run, log=log)
    run.finish()
    return out, run


def entries_of(store: CacheStore) -> set[str]:
    return {k for k in store.keys() if store.has(k)}


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg, msg
    return msg


# ------------------------------------------------------------------------------------------ chaining


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_method_writes_entries_chained_to_parents_and_rerun_reuses(tmp_path, method):
    store = make_store(tmp_path / "cache")
    cfg = config(method, tmp_path / "run1")
    epochs_seen: list[tuple[str, int]] = []
    out, run = align(cfg, store, log=lambda d, e, n, losses: epochs_seen.append((d, e)))
    assert epochs_seen and {a.view for a in out} == {"query_drone", "gallery_satellite"}
    needed = {"isms": LAYERS, "fusion": LAYERS}.get(method, (LAYERS[-1],))
    for a in out:
        assert not a.reused and a.alias == f"{NAME}.{method}.{a.view}"
        m = store.open(a.alias).manifest
        assert m.key == a.key and store.resolve(a.alias) == a.key
        parents = [store.resolve(f"{NAME}.{a.view}@{L}") for L in sorted(needed)]
        assert m.parents == parents and m.spec["parents"] == parents
        assert m.extra["method"] == method and m.extra["run_digest"] == m.spec["run"]
        d, lab, names = store.open(a.key).read()
        assert np.allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)
        src = store.open(f"{NAME}.{a.view}@{LAYERS[-1]}")
        assert names == src.names() and (lab == src.labels()).all()
    info = json.loads((run.path / "run.json").read_text())
    assert info["alignment"]["transductive"] is False
    assert {a.alias for a in out} <= set(info["cache_keys"])
    # the resumable state is gone once the entries are written
    assert not list((store.root / "models" / info["alignment"]["run_digest"]).glob("state-*.pt"))

    epochs_seen.clear()
    again, _ = align(config(method, tmp_path / "run2"), store, log=lambda *a: epochs_seen.append(a))
    assert epochs_seen == []  # nothing trained
    assert all(a.reused for a in again) and {a.key for a in again} == {a.key for a in out}
    # a different seed is a different alignment run: new keys
    other, _ = align(config(method, tmp_path / "run3", seed=1), store)
    assert not {a.key for a in other} & {a.key for a in out}


@pytest.mark.slow
def test_fusion_is_normalized_concat_of_stream1_and_isms_and_export_loads(tmp_path):
    store = make_store(tmp_path / "cache")
    out, run = align(config("fusion", tmp_path / "run"), store)
    s1_conf = json.loads((run.path / "stream1.json").read_text())
    s1cfg = Stream1Config(**s1_conf["stream1"])
    exported, cfg_loaded, epoch = load_stream1(run.path / "stream1_geoalign.t", s1cfg)
    assert epoch == s1cfg.epochs
    direct = load_file(str(run.path / "stream1.safetensors"))
    for k, v in exported.state_dict().items():
        assert torch.equal(v, direct[k]), k
    isms_sd = load_file(str(run.path / "isms.safetensors"))
    isms = ISMS(isms_sd["encoder.weight"].shape[1], isms_sd["encoder.weight"].shape[0])
    isms.load_state_dict(isms_sd)
    isms.eval()
    for a in out:
        branch = "dro" if a.view == "query_drone" else "sat"
        x = {L: torch.from_numpy(store.open(f"{NAME}.{a.view}@{L}").read()[0]) for L in LAYERS}
        with torch.no_grad():
            s1 = exported.describe(x[LAYERS[-1]], branch)
            st2 = isms.encode(isms_input([x[L] for L in LAYERS]))
        want = F.normalize(torch.cat([F.normalize(s1, dim=-1), F.normalize(st2, dim=-1)], dim=-1), dim=-1)
        got = torch.from_numpy(store.open(a.key).read()[0])
        assert got.shape == (x[LAYERS[-1]].shape[0], s1cfg.vec_dim + 8)
        assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize(
    "method,default", [("geoalign", {"match_on": "similarity"}), ("emcvgl", {"init": "isometric"})]
)
@pytest.mark.slow
def test_key_follows_the_trainer_config_not_the_spelling_of_params(tmp_path, method, default):
    """Spelling out a default gives the same entries; changing it gives new ones. The key covers the
    resolved trainer config, so entries trained under an older default are never reused."""
    store = make_store(tmp_path / "cache")
    out, _ = align(config(method, tmp_path / "r1"), store)
    same, _ = align(config(method, tmp_path / "r2", params={**EPOCHS, **default}), store)
    assert [a.key for a in same] == [a.key for a in out] and all(a.reused for a in same)
    flipped = {k: {"similarity": "plan", "isometric": "default"}[v] for k, v in default.items()}
    other, _ = align(config(method, tmp_path / "r3", params={**EPOCHS, **flipped}), store)
    assert not any(a.reused for a in other) and {a.key for a in other}.isdisjoint(a.key for a in out)


# ------------------------------------------------------------------------------------- determinism


def _weights(run_path: Path, name: str) -> bytes:
    return (run_path / f"{name}.safetensors").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("method,ckpt", [("geoalign", "stream1"), ("isms", "isms"), ("emcvgl", "emcvgl")])
def test_same_seed_same_checkpoint_bytes_other_seed_differs(tmp_path, method, ckpt):
    runs = []
    for i, seed in enumerate((0, 0, 1)):
        store = make_store(tmp_path / f"cache{i}")
        _, run = align(config(method, tmp_path / f"run{i}", seed=seed), store)
        runs.append(run.path)
    assert _weights(runs[0], ckpt) == _weights(runs[1], ckpt)
    a, b = load_file(str(runs[0] / f"{ckpt}.safetensors")), load_file(str(runs[2] / f"{ckpt}.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------ resume


class Killed(RuntimeError):
    pass


@pytest.mark.parametrize(
    "method,model,stop",
    [("geoalign", "stream1", 3), ("isms", "isms", 2), ("fusion", "stream1", 2), ("emcvgl", "emcvgl", 2)],
)
@pytest.mark.slow
def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, method, model, stop):
    ref_store = make_store(tmp_path / "ref")
    ref_out, ref_run = align(config(method, tmp_path / "ref_run"), ref_store)

    store = make_store(tmp_path / "cache")

    def crash(desc, epoch, epochs, losses):
        if desc == f"align {model}" and epoch == stop:
            raise Killed(f"killed after epoch {epoch}")

    cfg = config(method, tmp_path / "run")
    with pytest.raises(Killed):
        align(cfg, store, log=crash)
    digest = json.loads((tmp_path / "run" / "run.json").read_text())["alignment"]["run_digest"]
    state = store.root / "models" / digest / f"state-{model}.pt"
    assert state.exists()
    assert int(torch.load(state, weights_only=True)["epoch"]) == stop - 1  # saved after each epoch
    assert entries_of(store) == entries_of(make_store(tmp_path / "fresh"))  # no aligned entry yet

    resumed_epochs: list[tuple[str, int]] = []
    out, run = align(
        config(method, tmp_path / "run2"), store, log=lambda d, e, n, x: resumed_epochs.append((d, e))
    )
    firsts = {}
    for d, e in resumed_epochs:
        firsts.setdefault(d, e)
    assert firsts[f"align {model}"] == stop  # continued, did not start over
    if method == "fusion":
        assert "align isms" not in firsts  # finished before the kill: not retrained
    for name in {"fusion": ("stream1", "isms")}.get(method, (model,)):
        assert _weights(run.path, name) == _weights(ref_run.path, name), name
    assert [a.key for a in out] == [a.key for a in ref_out]
    for a, b in zip(out, ref_out):
        assert np.array_equal(store.open(a.key).read()[0], ref_store.open(b.key).read()[0])
    assert not state.exists()
    # the resumed run's log lists every epoch, including those trained before the kill
    assert (run.path / "history.jsonl").read_text() == (ref_run.path / "history.jsonl").read_text()


@pytest.mark.slow
def test_sigkilled_pipeline_align_resumes_to_the_uninterrupted_result(tmp_path):
    epochs = 25
    params = {"epochs": epochs}
    args = [*align_overrides(NAME, LAYERS), *TINY, "method=geoalign", "align.params=" + json.dumps(params)]
    store = make_store(tmp_path / "cache")
    proc = start_cli("align", *args, "out=killed", cache=store.root, cwd=tmp_path)
    states = store.root / "models"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            found = list(states.glob("*/state-stream1.pt")) if states.exists() else []
            if found:
                break
            time.sleep(0.005)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    (state,) = states.glob("*/state-stream1.pt")
    done = int(torch.load(state, weights_only=True)["epoch"])
    assert 1 <= done < epochs
    assert not any(store.open(k).manifest.extra.get("method") for k in entries_of(store))

    resumed = []
    out, run = align(
        config("geoalign", tmp_path / "resumed", params=params),
        store,
        log=lambda d, e, n, x: resumed.append(e),
    )
    assert resumed[0] == done + 1 and resumed[-1] == epochs

    ref = make_store(tmp_path / "ref")
    ref_out, ref_run = align(config("geoalign", tmp_path / "ref_run", params=params), ref)
    assert _weights(run.path, "stream1") == _weights(ref_run.path, "stream1")
    assert [a.key for a in out] == [a.key for a in ref_out]


# --------------------------------------------------------------------------------------- bad input


def _assert_refused(store: CacheStore, before: set[str], cfg, match: str) -> str:
    with pytest.raises(UserError) as ei:
        align(cfg, store)
    msg = one_line_error(ei)
    assert match in msg, msg
    assert entries_of(store) == before
    assert not [
        a
        for a in store.aliases()
        if ".query_drone@" not in a
        and ".gallery_satellite@" not in a
        and ".drone@" not in a
        and ".satellite@" not in a
    ]
    return msg


def test_supervised_refuses_unlabeled_training_entries(tmp_path):
    store = make_store(tmp_path / "cache", labels=False)
    _assert_refused(store, entries_of(store), config("supervised", tmp_path / "run"), "needs labels")


def test_feature_dimensions_that_differ_between_views_are_refused(tmp_path):
    store = make_store(tmp_path / "cache")
    other = CrossViewWorld(WorldConfig(dim=DIM + 4, layers=LAYERS, seed=3)).sample(8, 3, 2, seed=4)
    # the gallery satellites of another backbone width under the names the stage looks for
    for L in LAYERS:
        store.put_arrays(
            {"kind": "test-wide", "layer": L},
            other.satellite[L],
            other.satellite_labels,
            other.satellite_names,
            alias=f"{NAME}.gallery_satellite@{L}",
        )
    before = entries_of(store)
    for method in ("isms", "geoalign"):
        msg = _assert_refused(store, before, config(method, tmp_path / method), "dimensions differ")
        assert str(DIM) in msg and str(DIM + 4) in msg


def _poison_with_nan(store: CacheStore, alias: str, row: int = 3) -> None:
    """Put a NaN into a complete entry the way an outside tool would: h5py, then fix the checksums."""
    entry = store.open(alias)
    shard = entry.shard_paths()[0]
    with h5py.File(shard, "r+") as f:
        d = f["descriptors"][...]
        d[row, 0] = np.nan
        f["descriptors"][...] = d
        f.attrs["descriptors_sum64"] = str(sum64(d))
    m = read_manifest(entry.dir)
    m.shards[0].bytes = shard.stat().st_size
    write_manifest(entry.dir, m)
    assert np.isnan(store.open(alias).read()[0]).any()


@pytest.mark.parametrize("alias", [f"{NAME}.query_drone@{LAYERS[-1]}", f"{NAME}.satellite@{LAYERS[0]}"])
def test_nan_descriptors_are_refused(tmp_path, alias):
    store = make_store(tmp_path / "cache")
    _poison_with_nan(store, alias)
    before = entries_of(store)
    _assert_refused(store, before, config("fusion", tmp_path / "run"), "NaN")


def test_unknown_params_key_names_the_closest(tmp_path):
    store = make_store(tmp_path / "cache")
    before = entries_of(store)
    msg = _assert_refused(
        store, before, config("geoalign", tmp_path / "a", params={"epocs": 2}), "did you mean 'epochs'"
    )
    assert "epocs" in msg
    _assert_refused(
        store, before, config("emcvgl", tmp_path / "b", params={"pseudo_thresh": 0.1}), "'pseudo_thr'"
    )


@pytest.mark.slow
def test_pipeline_align_bad_params_is_one_line_exit_2(tmp_path):
    store = make_store(tmp_path / "cache")
    before = entries_of(store)
    args = [*align_overrides(NAME, LAYERS), *TINY, "method=geoalign", "align.params={num_expert: 2}"]
    p = start_cli("align", *args, "out=bad", cache=store.root, cwd=tmp_path)
    _, err = p.communicate(timeout=120)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1 and "did you mean 'num_experts'" in lines[0], err
    assert entries_of(store) == before


# ---------------------------------------------------------------------------------------- generator


def test_synthetic_data_is_deterministic_and_cached_under_extraction_names(tmp_path):
    a = CrossViewWorld(WorldConfig(dim=DIM, layers=LAYERS, seed=3)).sample(5, 2, 3, seed=4)
    b = CrossViewWorld(WorldConfig(dim=DIM, layers=LAYERS, seed=3)).sample(5, 2, 3, seed=4)
    c = CrossViewWorld(WorldConfig(dim=DIM, layers=LAYERS, seed=3)).sample(5, 2, 3, seed=5)
    for L in LAYERS:
        assert np.array_equal(a.drone[L], b.drone[L]) and np.array_equal(a.satellite[L], b.satellite[L])
        assert not np.array_equal(a.drone[L], c.drone[L])
        assert a.drone[L].shape == (10, DIM) and a.satellite[L].shape == (8, DIM)
        assert np.allclose(np.linalg.norm(a.drone[L], axis=1), 1.0, atol=1e-5)
    # 3 distractor satellites: labels no drone has
    assert set(a.drone_labels) == set(a.satellite_labels[:5]) and not set(a.satellite_labels[5:]) & set(
        a.drone_labels
    )
    store = CacheStore(tmp_path / "c")
    keys = write_cache(store, "x", a, b)
    assert set(keys) == {
        f"x.{v}@{L}" for v in ("query_drone", "gallery_satellite", "drone", "satellite") for L in LAYERS
    }
    assert write_cache(store, "x", a, b) == keys  # same data, same keys: reused
    e = store.open(f"x.query_drone@{LAYERS[0]}")
    assert e.names()[0].startswith("query_drone/") and (e.labels() == a.drone_labels).all()


@pytest.mark.parametrize(
    "bad", [dict(dim=2), dict(layers=(1, 1)), dict(rotation=float("nan")), dict(noise_drone=-1.0)]
)
def test_synthetic_world_refuses_bad_settings(bad):
    with pytest.raises(UserError) as ei:
        CrossViewWorld(WorldConfig(**bad))
    one_line_error(ei)
    with pytest.raises(UserError):
        CrossViewWorld(WorldConfig(dim=8)).sample(0, 2)
