"""Configuration: typed validation, closest-key suggestions, overrides, shipped configs."""

import pytest
from cvgl.configs import resolve_config_path, shipped_configs
from cvgl.configs.schema import Config, load_config
from cvgl.core.errors import UserError


def test_unknown_key_suggests_closest_valid_key(tmp_path):
    with pytest.raises(
        UserError, match=r"unknown config key 'backbone.layrs'; did you mean 'backbone.layers'\?"
    ):
        load_config(None, ["backbone.layrs=[1]"])
    p = tmp_path / "c.yaml"
    p.write_text("retreive:\n  protocol: u1652\n")
    with pytest.raises(UserError, match="did you mean 'retrieve'"):
        load_config(p)
    p.write_text("pooling:\n  nme: gem\n")
    with pytest.raises(UserError, match="did you mean 'pooling.name'"):
        load_config(p)


def test_overrides_are_typed_and_shorthands_map_to_sections():
    cfg = load_config(
        None, ["backbone.layers=[26,28]", "query=a", "protocol=cvft", "fusion=false", "seed=3", "out=x/y"]
    )
    assert cfg.backbone.layers == [26, 28]
    assert cfg.retrieve.query == "a" and cfg.retrieve.protocol == "cvft"
    assert cfg.align.fusion is False and cfg.seed == 3 and cfg.out == "x/y"
    assert load_config(None, ["preprocess.resize=none"]).preprocess.resize is None
    assert load_config(None, ["preprocess.resize=224"]).preprocess.resize == 224


def test_bad_values_and_choices_are_one_line_errors():
    for override, msg in [
        ("extract.batch_size=abc", "must be an integer"),
        ("protocol=atlas", "is not one of u1652, geoalign, cvft"),
        ("align.fusion=maybe", "must be true or false"),
        ("backbone.layers={a: 1}", "must be a list"),
        ("nonsense", "not of the form"),
    ]:
        with pytest.raises(UserError, match=msg) as e:
            load_config(None, [override])
        assert "\n" not in str(e.value)


def test_defaults_match_geoalign_recipe():
    cfg = Config()
    assert cfg.backbone.name == "dinov3_vith16plus" and cfg.backbone.layers == [26, 28]
    assert cfg.pooling.name == "gem" and cfg.pooling.p == 3.0 and cfg.pooling.eps == 1e-6
    assert cfg.preprocess.mean == [0.485, 0.456, 0.406]


def test_shipped_configs_resolve_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "demo" in shipped_configs()
    for ref in ("demo", "demo.yaml", "configs/demo.yaml"):
        assert resolve_config_path(ref).name == "demo.yaml"
    for name in shipped_configs():
        load_config(name)  # every shipped config validates
    with pytest.raises(UserError, match="not found"):
        resolve_config_path("nope.yaml")


def test_only_rank_zero_keeps_a_run_folder_under_torchrun(tmp_path, monkeypatch):
    """`torchrun … -m pipeline extract` runs the command once per rank: one run folder, not one per rank."""
    import json
    import shutil

    from cvgl.core.run_folder import RunFolder

    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, [])
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    other = RunFolder(cfg, "extract")
    other.record_keys({"a": "b" * 64})
    assert other.scratch and other.path.is_dir() and not other.path.is_relative_to(tmp_path)
    other.finish()
    assert not other.path.exists() and not (tmp_path / "runs").exists()
    failed = RunFolder(cfg, "extract")
    failed.fail("boom")  # a failing rank keeps its record
    assert json.loads((failed.path / "run.json").read_text())["error"] == "boom"
    shutil.rmtree(failed.path)
    monkeypatch.setenv("RANK", "0")
    leader = RunFolder(cfg, "extract")
    leader.finish()
    assert not leader.scratch
    assert json.loads((leader.path / "run.json").read_text())["status"] == "complete"
    # RANK without a multi-process WORLD_SIZE (a scheduler's variable, not torchrun): a normal folder
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "1")
    alone = RunFolder(cfg, "extract")
    alone.finish()
    assert not alone.scratch and alone.path.exists()
    assert len(list((tmp_path / "runs").iterdir())) == 2


def test_old_align_isms_section_is_read_into_align_params_with_one_warning(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("align:\n  method: fusion\n  isms: {layers: [1], out_dim: 64, lr: 0.001}\n")
    with pytest.warns(FutureWarning, match="align.isms is deprecated") as caught:
        cfg = load_config(str(old), ["align.isms.epochs=7", "align.params={epochs: 2}"])
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    # As before, replacing align.params keeps the (old) ISMS section.
    assert cfg.align.layers == [1]
    assert cfg.align.params == {"epochs": 2, "isms": {"out_dim": 64, "lr": 0.001, "epochs": 7}}


def test_isms_settings_enter_only_the_keys_of_methods_that_train_isms():
    from types import SimpleNamespace

    from cvgl.align.registry import get, resolve_params

    inputs = SimpleNamespace(layers=SimpleNamespace(single=2))
    keys = {}
    for isms in ({"out_dim": 32}, {"out_dim": 64}):
        for method in ("isms", "geoalign", "emcvgl", "fusion"):
            cfg = load_config("demo", [f"method={method}", "align.dtype=float32", f"align.params.isms={isms}"])
            m = get(method)
            params = resolve_params(m, cfg.align.params, {"in_dim": 64})
            keys.setdefault(method, []).append(m.key(cfg, params, inputs))
    assert keys["geoalign"][0] == keys["geoalign"][1] and keys["emcvgl"][0] == keys["emcvgl"][1]
    assert keys["isms"][0] != keys["isms"][1] and keys["fusion"][0] != keys["fusion"][1]
