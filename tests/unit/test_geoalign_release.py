"""GeoAlign release import/export, checked against a forward pass written here from the spec.

The fake release is built from key names and shapes (the README's "GeoAlign's release" paragraph), not from our
model class, and the expected descriptors come from :func:`reference_stream1` / :func:`reference_isms`
below, which use only the state dict and torch.nn.functional.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from cvgl.align.geoalign import GeoAlignStream1, Stream1Config
from cvgl.align.geoalign_release import (
    export_stream1,
    isms_layers_from_name,
    load_isms,
    load_stream1,
    release_descriptors,
)
from cvgl.core.errors import UserError

OUT, VEC, E, CHUNKS, HEADS = 24, 48, 3, 6, 2  # deliberately not the release sizes
C = VEC // CHUNKS
BACKBONE = "dinov3_vith16plus"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def release_shapes() -> dict[str, tuple[int, ...]]:
    """GeoAlign's AutoEnc_MoE state-dict keys and shapes, from the documented layout."""
    s: dict[str, tuple[int, ...]] = {
        "shared_enc.0.weight": (VEC, OUT),
        "shared_enc.0.bias": (VEC,),
        "shared_enc.1.weight": (VEC,),
        "shared_enc.1.bias": (VEC,),
        "moe_layer.gate.0.weight": (4 * E, VEC),
        "moe_layer.gate.0.bias": (4 * E,),
        "moe_layer.gate.2.weight": (E, 4 * E),
        "moe_layer.gate.2.bias": (E,),
    }
    for e in range(E):
        p = f"moe_layer.experts.{e}."
        s.update(
            {
                p + "pos_embed": (1, CHUNKS, C),
                p + "norm1.g": (C,),
                p + "norm2.g": (C,),
                p + "attn.in_proj_weight": (3 * C, C),
                p + "attn.in_proj_bias": (3 * C,),
                p + "attn.out_proj.weight": (C, C),
                p + "attn.out_proj.bias": (C,),
                p + "ls1.gamma": (C,),
                p + "ls2.gamma": (C,),
                p + "ffn.net.0.weight": (4 * C, C),
                p + "ffn.net.0.bias": (4 * C,),
                p + "ffn.net.3.weight": (C, 4 * C),
                p + "ffn.net.3.bias": (C,),
                p + "proj.weight": (VEC, VEC),
                p + "proj.bias": (VEC,),
            }
        )
    for dec in ("dec1", "dec2"):
        s.update(
            {
                f"{dec}.0.weight": (OUT, VEC),
                f"{dec}.0.bias": (OUT,),
                f"{dec}.1.weight": (OUT,),
                f"{dec}.1.bias": (OUT,),
                f"{dec}.1.running_mean": (OUT,),
                f"{dec}.1.running_var": (OUT,),
                f"{dec}.1.num_batches_tracked": (),
            }
        )
    return s


def random_stream1_sd(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in release_shapes().items():
        if k.startswith("dec2."):
            continue
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(300)
        elif k.endswith("running_var"):
            sd[k] = 0.5 + torch.rand(shape, generator=g)
        else:
            sd[k] = torch.randn(shape, generator=g) / math.sqrt(shape[-1] if len(shape) > 1 else 4)
    sd.update({"dec2." + k[5:]: v for k, v in sd.items() if k.startswith("dec1.")})
    return sd


def reference_stream1(sd: dict[str, torch.Tensor], x: torch.Tensor, drone: bool) -> torch.Tensor:
    """Eval-mode stream-1 descriptor from the state dict alone (per the spec, written independently)."""
    b = F.layer_norm(
        x @ sd["shared_enc.0.weight"].T + sd["shared_enc.0.bias"],
        (VEC,),
        sd["shared_enc.1.weight"],
        sd["shared_enc.1.bias"],
    )
    if not drone:
        return F.normalize(b, dim=-1)
    logits = (
        torch.tanh(b @ sd["moe_layer.gate.0.weight"].T + sd["moe_layer.gate.0.bias"])
        @ sd["moe_layer.gate.2.weight"].T
    )
    probs = torch.softmax(logits + sd["moe_layer.gate.2.bias"], dim=-1)
    top_p, top_i = probs.topk(2, dim=-1)
    w = top_p / (top_p.sum(-1, keepdim=True) + 1e-6)

    def rms(t, gain):
        return t / (t.norm(dim=-1, keepdim=True) * C**-0.5 + 1e-8) * gain

    def expert(e: int, v: torch.Tensor) -> torch.Tensor:
        p = f"moe_layer.experts.{e}."
        n = v.shape[0]
        t = v.view(n, CHUNKS, C) + sd[p + "pos_embed"]
        h = rms(t, sd[p + "norm1.g"])
        q, k, val = (h @ sd[p + "attn.in_proj_weight"].T + sd[p + "attn.in_proj_bias"]).split(C, dim=-1)
        split = lambda z: z.view(n, CHUNKS, HEADS, C // HEADS).transpose(1, 2)  # noqa: E731
        att = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(C // HEADS), dim=-1) @ split(
            val
        )
        att = (
            att.transpose(1, 2).reshape(n, CHUNKS, C) @ sd[p + "attn.out_proj.weight"].T
            + sd[p + "attn.out_proj.bias"]
        )
        t = t + sd[p + "ls1.gamma"] * att
        h = rms(t, sd[p + "norm2.g"])
        f = (
            torch.relu(h @ sd[p + "ffn.net.0.weight"].T + sd[p + "ffn.net.0.bias"])
            @ sd[p + "ffn.net.3.weight"].T
            + sd[p + "ffn.net.3.bias"]
        )
        t = t + sd[p + "ls2.gamma"] * f
        return t.reshape(n, VEC) @ sd[p + "proj.weight"].T + sd[p + "proj.bias"]

    all_out = torch.stack([expert(e, b) for e in range(E)], dim=1)  # [n, E, VEC]
    delta = (all_out.gather(1, top_i[..., None].expand(-1, -1, VEC)) * w[..., None]).sum(1)
    return F.normalize(b + delta, dim=-1)


def reference_isms(sd: dict[str, torch.Tensor], layers: list[torch.Tensor]) -> torch.Tensor:
    x = torch.cat([F.normalize(t, dim=-1) for t in layers], dim=-1)
    z = x @ sd["encoder.weight"].T
    z = (z - sd["bn_whiten.running_mean"]) / torch.sqrt(sd["bn_whiten.running_var"] + 1e-5) * sd[
        "bn_whiten.weight"
    ] + sd["bn_whiten.bias"]
    return F.normalize(z, dim=-1)


def write_release(root: Path, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed + 100)
    (root / "configs").mkdir(parents=True)
    cfg_yaml = {
        "model": {
            "name": "AutoEnc_MoE",
            "out_dim": OUT,
            "vec_dim": VEC,
            "num_experts": E,
            "top_k": 2,
            "noisy_gating": True,
            "dropout": 0.1,
            "num_chunks": CHUNKS,
            "nhead": HEADS,
            "query_num": 700,
        },
        "train": {"epochs": 300, "batch_size": 701, "sinkhorn_eps_start": 0.2, "data_path": "/root/x"},
        "eval": {"dataset": "Feat_Single", "feat": f"feats_test/{BACKBONE}/28"},
    }
    (root / "configs/base_stream1.yml").write_text(yaml.safe_dump(cfg_yaml))
    sd = random_stream1_sd(seed)
    (root / "outputs/base_stream1").mkdir(parents=True)
    torch.save({"model": sd, "epoch": 300}, root / "outputs/base_stream1/300_param.t")
    isd = {
        "encoder.weight": torch.randn(OUT, 2 * OUT, generator=g) / math.sqrt(2 * OUT),
        "bn_whiten.weight": 1 + 0.1 * torch.randn(OUT, generator=g),
        "bn_whiten.bias": 0.1 * torch.randn(OUT, generator=g),
        "bn_whiten.running_mean": 0.05 * torch.randn(OUT, generator=g),
        "bn_whiten.running_var": 0.5 + torch.rand(OUT, generator=g),
        "bn_whiten.num_batches_tracked": torch.tensor(10),
        "decoder.weight": torch.randn(2 * OUT, OUT, generator=g),
        "decoder.bias": torch.randn(2 * OUT, generator=g),
    }
    (root / "outputs/base_stream2").mkdir(parents=True)
    torch.save(isd, root / "outputs/base_stream2/isms_model_26_28.pth")
    feats = {}
    for mode, folder in (("D2S", "feats_test"), ("S2D", "feats_test_s2d")):
        n_sat, n_dro = (9, 20) if mode == "D2S" else (7, 25)
        ids = {"sat": torch.arange(n_sat), "dro": torch.randint(0, 7, (n_dro,), generator=g)}
        names = {v: [f"{int(i):04d}/{v}{j}.jpeg" for j, i in enumerate(ids[v])] for v in ids}
        for layer in (26, 28):
            d = root / folder / BACKBONE / str(layer)
            d.mkdir(parents=True)
            for v in ("sat", "dro"):
                f = torch.randn(len(ids[v]), OUT, generator=g) * 3
                torch.save(f, d / f"{v}_feat")
                torch.save(ids[v], d / f"{v}_id")
                torch.save(names[v], d / f"{v}_name")
                feats[(mode, layer, v)] = f
        feats[(mode, "ids")] = ids
        feats[(mode, "names")] = names
    return {"sd": sd, "isms": isd, "feats": feats}


@pytest.fixture()
def release(tmp_path):
    root = tmp_path / "GeoAlign"
    info = write_release(root)
    info["root"] = root
    return info


@pytest.mark.parametrize("mode", ["D2S", "S2D"])
@pytest.mark.parametrize("fusion", [True, False])
def test_release_descriptors_match_the_spec(release, mode, fusion):
    q, ql, qn, g, gl, gn = release_descriptors(release["root"], mode=mode, fusion=fusion)
    f, sd = release["feats"], release["sd"]
    exp = {}
    for v in ("sat", "dro"):
        s1 = reference_stream1(sd, f[(mode, 28, v)], drone=v == "dro")
        if fusion:
            s2 = reference_isms(release["isms"], [f[(mode, 26, v)], f[(mode, 28, v)]])
            s1 = F.normalize(torch.cat([s1, s2], dim=-1), dim=-1)
        exp[v] = s1
    qv, gv = ("dro", "sat") if mode == "D2S" else ("sat", "dro")
    torch.testing.assert_close(q, exp[qv], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g, exp[gv], atol=1e-5, rtol=1e-4)
    assert q.shape[1] == (VEC + OUT if fusion else VEC)
    assert torch.equal(ql, f[(mode, "ids")][qv]) and torch.equal(gl, f[(mode, "ids")][gv])
    assert qn == f[(mode, "names")][qv] and gn == f[(mode, "names")][gv]


def test_loaded_model_carries_config_and_epoch(release):
    model, cfg, epoch = load_stream1(
        release["root"] / "outputs/base_stream1/300_param.t", release["root"] / "configs/base_stream1.yml"
    )
    assert (cfg.out_dim, cfg.vec_dim, cfg.num_experts, cfg.num_chunks, cfg.nhead) == (
        OUT,
        VEC,
        E,
        CHUNKS,
        HEADS,
    )
    assert epoch == 300 and not model.training


def test_export_then_load_round_trip(tmp_path):
    cfg = Stream1Config(out_dim=OUT, vec_dim=VEC, num_experts=E, num_chunks=CHUNKS, nhead=HEADS, epochs=12)
    torch.manual_seed(0)
    model = GeoAlignStream1(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    model.eval()
    path = export_stream1(
        model, cfg, tmp_path / "out/12_param.t", config_path=tmp_path / "out/base_stream1.yml"
    )
    raw = torch.load(path, weights_only=True)
    assert raw["epoch"] == 12 and set(raw["model"]) == set(release_shapes())
    assert all(tuple(raw["model"][k].shape) == s for k, s in release_shapes().items())
    assert torch.equal(raw["model"]["dec2.0.weight"], raw["model"]["dec1.0.weight"])
    loaded, cfg2, epoch = load_stream1(path, tmp_path / "out/base_stream1.yml")
    assert cfg2.num_chunks == CHUNKS and epoch == 12
    x = torch.randn(11, OUT)
    for view in ("sat", "dro"):
        assert torch.equal(loaded.describe(x, view), model.describe(x, view))
    torch.testing.assert_close(
        loaded.describe(x, "dro"), reference_stream1(raw["model"], x, drone=True), atol=1e-5, rtol=1e-4
    )


def test_dim_mismatch_names_key_expected_and_found(release, tmp_path):
    cfg = Stream1Config(out_dim=OUT, vec_dim=2 * VEC, num_experts=E, num_chunks=CHUNKS, nhead=HEADS)
    with pytest.raises(UserError) as err:
        load_stream1(release["root"] / "outputs/base_stream1/300_param.t", cfg)
    msg = str(err.value)
    assert "shared_enc.0.weight" in msg and f"({VEC}, {OUT})" in msg and f"({2 * VEC}, {OUT})" in msg
    cfg = Stream1Config(out_dim=OUT, vec_dim=VEC, num_experts=E + 1, num_chunks=CHUNKS, nhead=HEADS)
    with pytest.raises(UserError, match="moe_layer.gate.0.weight"):
        load_stream1(release["root"] / "outputs/base_stream1/300_param.t", cfg)


def test_non_geoalign_checkpoints_are_refused(release, tmp_path):
    isms_path = release["root"] / "outputs/base_stream2/isms_model_26_28.pth"
    with pytest.raises(UserError, match="not a GeoAlign stream-1 checkpoint"):
        load_stream1(isms_path)
    code = tmp_path / "pickled.t"
    torch.save({"model": argparse.Namespace(a=1)}, code)  # a pickle that would run code to rebuild
    with pytest.raises(UserError, match="weights_only"):
        load_stream1(code)
    with pytest.raises(UserError, match="not a GeoAlign ISMS"):
        load_isms(release["root"] / "outputs/base_stream1/300_param.t")


@pytest.mark.parametrize(
    "rel",
    [
        "outputs/base_stream2/isms_model_26_28.pth",
        "outputs/base_stream1/300_param.t",
        "configs/base_stream1.yml",
        f"feats_test/{BACKBONE}/26/dro_feat",
        f"feats_test/{BACKBONE}/28/sat_name",
    ],
)
def test_missing_release_file_names_the_path(release, rel):
    (release["root"] / rel).unlink()
    with pytest.raises(UserError, match=rel.split("/")[-1]):
        release_descriptors(release["root"], mode="D2S", fusion=True)


def test_inconsistent_layers_are_refused(release):
    d = release["root"] / f"feats_test/{BACKBONE}/26"
    torch.save(torch.arange(20).flip(0), d / "dro_id")
    with pytest.raises(UserError, match="different images"):
        release_descriptors(release["root"], mode="D2S", fusion=True)
    # Stream 1 alone never reads layer 26.
    assert release_descriptors(release["root"], mode="D2S", fusion=False)[0].shape == (20, VEC)


def test_isms_layers_come_from_the_file_name():
    assert isms_layers_from_name("outputs/base_stream2/isms_model_26_28.pth") == (26, 28)
    assert isms_layers_from_name("isms_model_20_24_28.pth") == (20, 24, 28)
    assert isms_layers_from_name("isms.pth") is None
