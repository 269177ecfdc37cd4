"""DINOv3 backbone: variants, both checkpoint layouts, layer/facet numerics, errors.

Everything runs on tiny random models. The numerics are checked against a forward pass written here
from Meta's definition (``dinov3/models/vision_transformer.py`` and ``dinov3/layers``), fed directly
with the Meta-layout state dict, so neither transformers nor the loader's key mapping is trusted.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from cvgl.core.errors import UserError
from cvgl.extract.dinov3 import FACETS, VARIANTS, load_dinov3, meta_intermediate_size, resolve_variant

# Tiny versions: one GELU-MLP variant, one SwiGLU variant, and the 7B layout (no qkv bias, SwiGLU
# aligned to 64). Widths keep head_dim a multiple of 4 as RoPE needs.
TINY = {
    "dinov3_vits16": {"depth": 3, "hidden_size": 64, "num_heads": 2},
    "dinov3_vith16plus": {"depth": 3, "hidden_size": 80, "num_heads": 2},
    "dinov3_vit7b16": {"depth": 2, "hidden_size": 64, "num_heads": 2},
}


def _randomize(backbone, seed: int) -> None:
    """Give every parameter a non-trivial value (Meta's layer scale 1e-5 would hide mapping errors)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in backbone.model.named_parameters():
            if name.endswith("lambda1"):
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias") or (name.startswith("embeddings.") and p.ndim == 3):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel() if p.ndim > 1 else 1
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))


def _tiny(name: str, seed: int = 0):
    backbone = load_dinov3(name, None, seed=seed, arch_overrides=TINY[name])
    _randomize(backbone, seed + 100)
    return backbone


def _to_meta(backbone, seed: int = 1) -> dict[str, torch.Tensor]:
    """Meta's state dict for a backbone, as ``DinoVisionTransformer.state_dict()`` lays it out.

    The key bias gets random values and a ``bias_mask`` that zeroes it, as in Meta's checkpoints, and a
    ``local_cls_norm`` (training-only) is added, so the loader must drop both.
    """
    v = backbone.variant
    hf = backbone.model.state_dict()
    gen = torch.Generator().manual_seed(seed)
    c, hd = v.hidden_size, v.hidden_size // v.num_heads
    sd = {
        "cls_token": hf["embeddings.cls_token"],
        "storage_tokens": hf["embeddings.register_tokens"],
        "mask_token": hf["embeddings.mask_token"].reshape(1, c),
        "patch_embed.proj.weight": hf["embeddings.patch_embeddings.weight"],
        "patch_embed.proj.bias": hf["embeddings.patch_embeddings.bias"],
        "rope_embed.periods": v.rope_theta ** (2 * torch.arange(hd // 4, dtype=torch.float32) / (hd // 2)),
    }
    for n in range(v.depth):
        h, m = f"model.layer.{n}.", f"blocks.{n}."
        a = h + "attention."
        sd[m + "norm1.weight"] = hf[h + "norm1.weight"]
        sd[m + "norm1.bias"] = hf[h + "norm1.bias"]
        sd[m + "attn.qkv.weight"] = torch.cat(
            [hf[a + "q_proj.weight"], hf[a + "k_proj.weight"], hf[a + "v_proj.weight"]]
        )
        if v.qkv_bias:
            k_bias = torch.randn(c, generator=gen)  # masked to zero by bias_mask below
            sd[m + "attn.qkv.bias"] = torch.cat([hf[a + "q_proj.bias"], k_bias, hf[a + "v_proj.bias"]])
            sd[m + "attn.qkv.bias_mask"] = torch.cat([torch.ones(c), torch.zeros(c), torch.ones(c)])
        sd[m + "attn.proj.weight"] = hf[a + "o_proj.weight"]
        sd[m + "attn.proj.bias"] = hf[a + "o_proj.bias"]
        sd[m + "ls1.gamma"] = hf[h + "layer_scale1.lambda1"]
        sd[m + "norm2.weight"] = hf[h + "norm2.weight"]
        sd[m + "norm2.bias"] = hf[h + "norm2.bias"]
        if v.ffn == "mlp":
            for meta_name, hf_name in (("fc1", "up_proj"), ("fc2", "down_proj")):
                for kind in ("weight", "bias"):
                    sd[f"{m}mlp.{meta_name}.{kind}"] = hf[f"{h}mlp.{hf_name}.{kind}"]
        else:
            for meta_name, hf_name in (("w1", "gate_proj"), ("w2", "up_proj"), ("w3", "down_proj")):
                for kind in ("weight", "bias"):
                    sd[f"{m}mlp.{meta_name}.{kind}"] = hf[f"{h}mlp.{hf_name}.{kind}"]
        sd[m + "ls2.gamma"] = hf[h + "layer_scale2.lambda1"]
    sd["norm.weight"] = hf["norm.weight"]
    sd["norm.bias"] = hf["norm.bias"]
    sd["local_cls_norm.weight"] = torch.randn(c, generator=gen)
    sd["local_cls_norm.bias"] = torch.randn(c, generator=gen)
    return {k: t.clone() for k, t in sd.items()}


def _reference(
    sd: dict[str, torch.Tensor], x: torch.Tensor, num_heads: int, layers: list[int], eps: float = 1e-5
):
    """Meta's ViT forward from its state dict: ``get_intermediate_layers(x, n=layers, norm=True)`` as
    full token sequences, plus each requested block's pre-RoPE q, k, v (what a hook on ``attn.qkv`` sees).
    """
    x = x.double()
    sd = {k: t.double() for k, t in sd.items()}
    c = sd["cls_token"].shape[-1]
    hd = c // num_heads
    ps = sd["patch_embed.proj.weight"].shape[-1]
    b, _, hh, ww = x.shape
    gh, gw = hh // ps, ww // ps
    patches = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=ps)
    prefix = [sd["cls_token"].expand(b, -1, -1)]
    if "storage_tokens" in sd:
        prefix.append(sd["storage_tokens"].expand(b, -1, -1))
    tok = torch.cat(prefix + [patches.flatten(2).transpose(1, 2)], dim=1)
    n_prefix = tok.shape[1] - gh * gw
    # RoPE: patch centres in [-1, 1] per axis, angle 2*pi*coord/period for (y, x) x periods, tiled twice.
    ys = (torch.arange(gh, dtype=torch.float64) + 0.5) / gh * 2 - 1
    xs = (torch.arange(gw, dtype=torch.float64) + 0.5) / gw * 2 - 1
    coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)
    angles = (2 * math.pi * coords[:, :, None] / sd["rope_embed.periods"][None, None, :]).reshape(gh * gw, -1)
    angles = torch.cat([angles, angles], dim=-1)
    cos, sin = angles.cos(), angles.sin()

    def rope(t):
        half = t.shape[-1] // 2
        rotated = torch.cat([-t[..., half:], t[..., :half]], dim=-1)
        roped = t[..., n_prefix:, :] * cos + rotated[..., n_prefix:, :] * sin
        return torch.cat([t[..., :n_prefix, :], roped], dim=-2)

    def ln(t, key):
        return F.layer_norm(t, (c,), sd[key + ".weight"], sd[key + ".bias"], eps)

    tokens, facets = {}, {}
    for n in range(max(layers) + 1):
        m = f"blocks.{n}."
        bias = sd.get(m + "attn.qkv.bias")
        if bias is not None and m + "attn.qkv.bias_mask" in sd:
            bias = bias * sd[m + "attn.qkv.bias_mask"]
        qkv = F.linear(ln(tok, m + "norm1"), sd[m + "attn.qkv.weight"], bias)
        facets[n] = dict(zip(("query", "key", "value"), qkv.split(c, dim=-1)))
        q, k, v = qkv.reshape(b, -1, 3, num_heads, hd).permute(2, 0, 3, 1, 4)
        att = torch.softmax(rope(q) @ rope(k).transpose(-1, -2) / math.sqrt(hd), dim=-1) @ v
        att = att.transpose(1, 2).reshape(b, -1, c)
        tok = tok + sd[m + "ls1.gamma"] * F.linear(att, sd[m + "attn.proj.weight"], sd[m + "attn.proj.bias"])
        y = ln(tok, m + "norm2")
        if m + "mlp.fc1.weight" in sd:
            y = F.linear(
                F.gelu(F.linear(y, sd[m + "mlp.fc1.weight"], sd[m + "mlp.fc1.bias"])),
                sd[m + "mlp.fc2.weight"],
                sd[m + "mlp.fc2.bias"],
            )
        else:
            gate = F.silu(F.linear(y, sd[m + "mlp.w1.weight"], sd[m + "mlp.w1.bias"]))
            y = F.linear(
                gate * F.linear(y, sd[m + "mlp.w2.weight"], sd[m + "mlp.w2.bias"]),
                sd[m + "mlp.w3.weight"],
                sd[m + "mlp.w3.bias"],
            )
        tok = tok + sd[m + "ls2.gamma"] * y
        tokens[n] = ln(tok, "norm")
    return {n: tokens[n] for n in layers}, {n: facets[n] for n in layers}


def _images(b: int = 2, h: int = 32, w: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------
# Variants


# Meta's README: parameter counts of the released backbones.
README_PARAMS_M = {
    "dinov3_vits16": 21,
    "dinov3_vits16plus": 29,
    "dinov3_vitb16": 86,
    "dinov3_vitl16": 300,
    "dinov3_vith16plus": 840,
    "dinov3_vit7b16": 6716,
}


@pytest.mark.slow
def test_variants_follow_meta_rules():
    assert list(VARIANTS) == [
        "dinov3_vits16",
        "dinov3_vits16plus",
        "dinov3_vitb16",
        "dinov3_vitl16",
        "dinov3_vitl16plus",
        "dinov3_vith16plus",
        "dinov3_vit7b16",
    ]
    expected_ffn = {"dinov3_vits16": 1536, "dinov3_vits16plus": 1536, "dinov3_vitb16": 3072, "dinov3_vitl16": 4096,
                    "dinov3_vitl16plus": 4096, "dinov3_vith16plus": 5120, "dinov3_vit7b16": 8192}  # fmt: skip
    for name, v in VARIANTS.items():
        assert v.intermediate_size == expected_ffn[name]
        assert meta_intermediate_size(v.hidden_size, v.ffn, v.ffn_ratio, v.ffn_align) == v.intermediate_size
        assert (v.num_register_tokens, v.num_prefix_tokens, v.patch_size, v.head_dim % 4) == (4, 5, 16, 0)
        assert v.qkv_bias == (name != "dinov3_vit7b16")
        cfg = v.hf_config()
        assert cfg.hidden_act == ("silu" if v.ffn == "swiglu" else "gelu")
        assert cfg.use_gated_mlp == (v.ffn == "swiglu") and cfg.key_bias is False
        assert (cfg.layer_norm_eps, cfg.rope_theta) == (1e-5, 100.0)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(README_PARAMS_M))
def test_full_size_parameter_counts_match_meta_readme(name):
    from transformers import DINOv3ViTModel

    with torch.device("meta"):  # shapes only, no memory
        model = DINOv3ViTModel(VARIANTS[name].hf_config())
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(millions - README_PARAMS_M[name]) / README_PARAMS_M[name] < 0.03


def test_arch_overrides_recompute_ffn_and_are_checked():
    v = resolve_variant("dinov3_vith16plus", {"hidden_size": 80, "num_heads": 2})
    assert v.intermediate_size == 320  # int(int(80 * 6) * 2 / 3) rounded up to 8
    assert resolve_variant("dinov3_vit7b16", {"hidden_size": 64, "num_heads": 2}).intermediate_size == 128
    with pytest.raises(UserError, match="unknown arch_overrides key.*dpeth.*valid keys"):
        resolve_variant("dinov3_vits16", {"dpeth": 2})
    with pytest.raises(UserError, match="multiple of 4 \\* num_heads"):
        resolve_variant("dinov3_vits16", {"hidden_size": 72, "num_heads": 4})
    with pytest.raises(UserError, match="unknown DINOv3 backbone 'dinov3_vitx16'.*dinov3_vits16"):
        load_dinov3("dinov3_vitx16")


# ----------------------------------------------------------------------------------------------------
# Numerics


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TINY))
def test_layers_match_independent_meta_forward(name, tmp_path):
    backbone = _tiny(name)
    sd = _to_meta(backbone)
    torch.save(sd, tmp_path / "meta.pth")
    loaded = load_dinov3(name, tmp_path / "meta.pth", arch_overrides=TINY[name])
    x = _images()
    layers = list(range(loaded.depth))
    ref_tokens, ref_facets = _reference(sd, x, loaded.variant.num_heads, layers)
    got = loaded.forward_layers(x, layers)
    assert set(got) == set(layers)
    for layer in layers:
        assert got[layer].dtype == torch.float32
        torch.testing.assert_close(got[layer].double(), ref_tokens[layer], atol=2e-5, rtol=1e-5)
    for facet in ("query", "key", "value"):
        got_f = loaded.forward_layers(x, layers, facet=facet)
        for layer in layers:
            torch.testing.assert_close(got_f[layer].double(), ref_facets[layer][facet], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["dinov3_vits16", "dinov3_vith16plus"])
def test_layer_equals_transformers_hidden_state_plus_final_norm(name):
    backbone = _tiny(name)
    x = _images(h=48, w=32)
    with torch.inference_mode():
        out = backbone.model(pixel_values=x, output_hidden_states=True)
        # hidden_states[0] is the embedding output, hidden_states[L + 1] the output of block L.
        expected = [backbone.model.norm(h) for h in out.hidden_states[1:]]
    assert len(expected) == backbone.depth
    got = backbone.forward_layers(x, list(range(backbone.depth)))
    for layer, tokens in got.items():
        torch.testing.assert_close(tokens, expected[layer], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[backbone.depth - 1], out.last_hidden_state, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TINY))
def test_meta_pth_and_hf_folder_load_identically(name, tmp_path):
    backbone = _tiny(name)
    torch.save(_to_meta(backbone), tmp_path / "meta.pth")
    backbone.model.save_pretrained(tmp_path / "hf")
    assert (tmp_path / "hf" / "config.json").is_file() and (tmp_path / "hf" / "model.safetensors").is_file()
    from_meta = load_dinov3(name, tmp_path / "meta.pth", arch_overrides=TINY[name])
    from_hf = load_dinov3(name, tmp_path / "hf", arch_overrides=TINY[name])
    x = _images()
    layers = [0, backbone.depth - 1]
    for facet in FACETS:
        a = from_meta.forward_layers(x, layers, facet)
        b = from_hf.forward_layers(x, layers, facet)
        c = backbone.forward_layers(x, layers, facet)
        for layer in layers:
            torch.testing.assert_close(a[layer], b[layer], atol=0, rtol=0)
            torch.testing.assert_close(a[layer], c[layer], atol=0, rtol=0)


def test_sharded_hf_folder_and_meta_safetensors_load(tmp_path):
    from safetensors.torch import save_file

    name = "dinov3_vith16plus"
    backbone = _tiny(name)
    backbone.model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    save_file(_to_meta(backbone), str(tmp_path / "meta.safetensors"))  # Meta's names, recognised by keys
    x = _images()
    expected = backbone.forward_layers(x, [1])[1]
    for source in ("sharded", "meta.safetensors"):
        loaded = load_dinov3(name, tmp_path / source, arch_overrides=TINY[name])
        torch.testing.assert_close(loaded.forward_layers(x, [1])[1], expected, atol=0, rtol=0)


def test_checkpoint_periods_drive_rope(tmp_path):
    """Meta's rope_embed.periods buffer is used as stored, not recomputed."""
    name = "dinov3_vits16"
    sd = _to_meta(_tiny(name))
    sd["rope_embed.periods"] = sd["rope_embed.periods"] * 1.7
    torch.save(sd, tmp_path / "meta.pth")
    loaded = load_dinov3(name, tmp_path / "meta.pth", arch_overrides=TINY[name])
    x = _images()
    ref, _ = _reference(sd, x, 2, [2])
    torch.testing.assert_close(loaded.forward_layers(x, [2])[2].double(), ref[2], atol=2e-5, rtol=1e-5)


def test_early_stop_runs_no_deeper_block_and_matches_full_pass():
    backbone = _tiny("dinov3_vith16plus")
    calls = {n: 0 for n in range(backbone.depth)}
    for n, block in enumerate(backbone.model.model.layer):
        block.register_forward_hook(lambda *_, n=n: calls.__setitem__(n, calls[n] + 1))
    x = _images()
    full = backbone.forward_layers(x, [0, 1, 2])
    assert all(count == 1 for count in calls.values())
    calls.update({n: 0 for n in calls})
    early = backbone.forward_layers(x, [1])
    assert calls == {0: 1, 1: 1, 2: 0}
    torch.testing.assert_close(early[1], full[1], atol=0, rtol=0)
    calls.update({n: 0 for n in calls})
    backbone.forward_layers(x, [1], facet="key")  # needs block 1's input only
    assert calls == {0: 1, 1: 0, 2: 0}


def test_output_layout_any_resolution_and_order():
    backbone = _tiny("dinov3_vits16")
    x = _images(b=3, h=64, w=16)
    for facet in FACETS:
        out = backbone.forward_layers(x, [2, 0, 2], facet=facet)
        assert list(out) == [2, 0]  # duplicates dropped, caller's order kept
        for tokens in out.values():
            assert tokens.shape == (3, backbone.num_prefix_tokens + 4 * 1, backbone.hidden_size)
    assert backbone.num_prefix_tokens == 5 and backbone.patch_size == 16
    assert (backbone.name, backbone.depth, backbone.hidden_size) == ("dinov3_vits16", 3, 64)


def test_batch_items_are_independent():
    backbone = _tiny("dinov3_vith16plus")
    x = _images(b=3)
    together = backbone.forward_layers(x, [2])[2]
    alone = backbone.forward_layers(x[1:2], [2])[2]
    torch.testing.assert_close(together[1:2], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_random_init_is_deterministic_by_seed_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = load_dinov3("dinov3_vits16", seed=7, arch_overrides={"depth": 2})
    after = torch.rand(1)
    assert torch.equal(before, after)
    b = load_dinov3("dinov3_vits16", seed=7, arch_overrides={"depth": 2})
    c = load_dinov3("dinov3_vits16", seed=8, arch_overrides={"depth": 2})
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["embeddings.patch_embeddings.weight"], sc["embeddings.patch_embeddings.weight"])
    assert a.source == "random(seed=7)" and not a.training
    a.train()
    assert not a.model.training  # frozen: RoPE's train-time coordinate jitter must never switch on


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_close_to_cpu_float32():
    backbone = _tiny("dinov3_vith16plus")
    x = _images(b=2, h=64, w=64)
    cpu = backbone.forward_layers(x, [2])[2]
    backbone.to("cuda")
    gpu = backbone.forward_layers(x, [2])[2].float().cpu()
    assert F.cosine_similarity(cpu.flatten(1), gpu.flatten(1)).min() > 0.99
    backbone.cuda_autocast_dtype = None  # float32 on CUDA: close to the CPU result
    gpu32 = backbone.forward_layers(x, [2])[2].cpu()
    torch.testing.assert_close(gpu32, cpu, atol=1e-3, rtol=1e-3)


# ----------------------------------------------------------------------------------------------------
# Errors


def test_wrong_variant_names_the_parameter_and_both_shapes(tmp_path):
    small = load_dinov3("dinov3_vits16", seed=0, arch_overrides={"depth": 1})
    torch.save(_to_meta(small), tmp_path / "vits16.pth")
    with pytest.raises(UserError) as err:
        load_dinov3("dinov3_vitb16", tmp_path / "vits16.pth", arch_overrides={"depth": 1})
    msg = str(err.value)
    assert msg.startswith("weights do not fit dinov3_vitb16: ")
    assert "is [1, 1, 384], expected [1, 1, 768]" in msg or "is [1152, 384], expected [2304, 768]" in msg
    assert "pick the backbone.name that matches the checkpoint" in msg and "\n" not in msg

    small.model.save_pretrained(tmp_path / "hf")
    with pytest.raises(
        UserError, match=r"weights do not fit dinov3_vitb16: .* is \[.*384.*\], expected \[.*768.*\]"
    ):
        load_dinov3("dinov3_vitb16", tmp_path / "hf", arch_overrides={"depth": 1})


def test_wrong_ffn_kind_or_depth_lists_missing_and_unexpected_keys(tmp_path):
    torch.save(_to_meta(load_dinov3("dinov3_vits16", arch_overrides={"depth": 1})), tmp_path / "s.pth")
    with pytest.raises(
        UserError,
        match=r"dinov3_vits16plus: missing blocks\.0\.mlp\.w1\.weight.*unexpected blocks\.0\.mlp\.fc1",
    ):
        load_dinov3("dinov3_vits16plus", tmp_path / "s.pth", arch_overrides={"depth": 1})
    with pytest.raises(UserError, match=r"missing blocks\.1\..*"):
        load_dinov3("dinov3_vits16", tmp_path / "s.pth", arch_overrides={"depth": 2})


def test_bad_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_dinov3("dinov3_vits16", tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot load .*junk.pth"):
        load_dinov3("dinov3_vits16", tmp_path / "junk.pth")
    torch.save({"blocks.0": [1, 2]}, tmp_path / "lists.pth")
    with pytest.raises(UserError, match="state dict of tensors"):
        load_dinov3("dinov3_vits16", tmp_path / "lists.pth")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(UserError, match="no model.safetensors"):
        load_dinov3("dinov3_vits16", tmp_path / "empty_dir")
    torch.save({"foo.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="neither a Meta DINOv3 state dict"):
        load_dinov3("dinov3_vits16", tmp_path / "other.pth")


def test_hf_config_with_other_heads_is_rejected(tmp_path):
    backbone = load_dinov3("dinov3_vits16", arch_overrides=TINY["dinov3_vits16"])
    backbone.model.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["num_attention_heads"] = 4
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="config.json num_attention_heads is 4, expected 2"):
        load_dinov3("dinov3_vits16", tmp_path / "hf", arch_overrides=TINY["dinov3_vits16"])


def test_unmasked_key_bias_is_rejected(tmp_path):
    sd = _to_meta(_tiny("dinov3_vits16"))
    del sd["blocks.1.attn.qkv.bias_mask"]
    torch.save(sd, tmp_path / "m.pth")
    with pytest.raises(UserError, match="blocks.1.attn.qkv has a non-zero key bias"):
        load_dinov3("dinov3_vits16", tmp_path / "m.pth", arch_overrides=TINY["dinov3_vits16"])


def test_bad_inputs_are_user_errors():
    backbone = _tiny("dinov3_vits16")
    with pytest.raises(UserError, match="multiples of 16, got 30x48"):
        backbone.forward_layers(_images(h=30), [0])
    with pytest.raises(UserError, match=r"\[B, 3, H, W\]"):
        backbone.forward_layers(torch.zeros(3, 32, 32), [0])
    with pytest.raises(UserError, match="from 0 to 2"):
        backbone.forward_layers(_images(), [3])
    with pytest.raises(UserError, match="from 0 to 2"):
        backbone.forward_layers(_images(), [])
    with pytest.raises(UserError, match="unknown facet 'attn'.*token, query, key, value"):
        backbone.forward_layers(_images(), [0], facet="attn")
