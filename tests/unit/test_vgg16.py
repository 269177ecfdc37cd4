"""VGG16 conv stack: torchvision-format loading, numerics against an independent forward, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cvgl.core.errors import UserError
from cvgl.extract.vgg16 import (
    CVFT_AERIAL_SIZE,
    CVFT_GROUND_SIZE,
    CVFT_MEAN_BGR,
    load_vgg16,
    preprocess,
)
from safetensors.torch import save_file

# torchvision's vgg16().features, written out here independently of the module under test:
# (index in the Sequential, in_channels, out_channels) of each conv; pools follow indices 2, 7, 14, 21, 28.
TV_CONVS = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256),
            (14, 256, 256), (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512),
            (26, 512, 512), (28, 512, 512)]  # fmt: skip
POOL_AFTER = {2, 7, 14, 21, 28}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def random_torchvision_state(seed: int = 1) -> dict[str, torch.Tensor]:
    """A full-model torchvision-style state dict: features.N.* plus a (small, fake) classifier."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for idx, cin, cout in TV_CONVS:
        state[f"features.{idx}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (2.0 / (9 * cin)) ** 0.5
        state[f"features.{idx}.bias"] = torch.randn(cout, generator=g) * 0.1
    state["classifier.0.weight"] = torch.randn(8, 8, generator=g)  # ignored by the loader
    state["classifier.6.bias"] = torch.randn(8, generator=g)
    return state


def tf_same_pool(x: torch.Tensor) -> torch.Tensor:
    """TensorFlow's 2×2/2 'SAME' max-pool: pad the odd edge (bottom/right) with -inf, then pool."""
    return F.max_pool2d(F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2), value=float("-inf")), 2, 2)


def reference_forward(state: dict[str, torch.Tensor], x: torch.Tensor, cvft: bool) -> torch.Tensor:
    """conv1_1 … conv5_3 (post-ReLU) with four pools, using only torch.nn.functional."""
    for idx, _, _ in TV_CONVS:
        x = F.relu(F.conv2d(x, state[f"features.{idx}.weight"], state[f"features.{idx}.bias"], padding=1))
        if idx in POOL_AFTER and idx != 28:
            x = tf_same_pool(x) if cvft else F.max_pool2d(x, 2, 2)
    return x


@pytest.mark.slow
def test_full_model_pth_loads_and_matches_functional_forward(tmp_path):
    state = random_torchvision_state()
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    model = load_vgg16(path)
    # Odd sizes at several pooling stages, so ceil ('SAME') and floor pooling really differ.
    x = torch.randn(2, 3, 40, 72, generator=torch.Generator().manual_seed(0))
    for cvft in (True, False):
        ours = model.forward_maps(x, "conv5_3", cvft=cvft)
        ref = reference_forward(state, x, cvft)
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    assert model.forward_maps(x, cvft=True).shape[-2:] == (3, 5)
    assert model.forward_maps(x, cvft=False).shape[-2:] == (2, 4)


@pytest.mark.slow
def test_features_only_and_safetensors_load_the_same_weights(tmp_path):
    state = random_torchvision_state()
    feats = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    torch.save(feats, tmp_path / "features.pt")
    save_file(
        {k: v.contiguous() for k, v in state.items() if k.startswith("features.")}, tmp_path / "w.safetensors"
    )
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "wrapped.pth")
    ref = load_vgg16(state).state_dict()
    for name in ("features.pt", "w.safetensors", "wrapped.pth"):
        got = load_vgg16(tmp_path / name).state_dict()
        assert got.keys() == ref.keys()
        for k in ref:
            assert torch.equal(got[k], ref[k]), (name, k)


def test_wrong_shape_names_key_expected_and_found(tmp_path):
    state = random_torchvision_state()
    state["features.10.weight"] = torch.zeros(256, 64, 3, 3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(UserError) as err:
        load_vgg16(tmp_path / "bad.pth")
    msg = str(err.value)
    assert "features.10.weight" in msg and "[256, 128, 3, 3]" in msg and "[256, 64, 3, 3]" in msg
    assert "\n" not in msg


def test_missing_and_unexpected_keys_are_named():
    state = random_torchvision_state()
    del state["features.26.bias"]
    with pytest.raises(UserError, match=r"features\.26\.bias"):
        load_vgg16(state)
    state = random_torchvision_state()
    state["features.1.running_mean"] = torch.zeros(64)
    with pytest.raises(UserError, match="vgg16_bn"):
        load_vgg16(state)


def test_pickled_module_is_refused_with_weights_only(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")
    with pytest.raises(UserError, match="state_dict"):
        load_vgg16(tmp_path / "module.pth")
    with pytest.raises(UserError, match="not found"):
        load_vgg16(tmp_path / "absent.pth")


def test_random_init_is_deterministic_by_seed():
    a, b, c = (
        load_vgg16(seed=3).state_dict(),
        load_vgg16(seed=3).state_dict(),
        load_vgg16(seed=4).state_dict(),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["features.0.weight"], c["features.0.weight"])


def _conv5_map_size(image_size: tuple[int, int], pool: str = "ceil") -> tuple[int, int]:
    """The conv5_3 map size the extraction stores for an input size (``VGGModel.row_shape``)."""
    from cvgl.configs.schema import load_config
    from cvgl.extract.models import VGGModel

    cfg = load_config(
        None,
        ["backbone.name=vgg16", f"backbone.arch={{pool: {pool}}}", "layers=[conv5_3]", "pooling.name=none"],
    )
    return VGGModel(cfg, torch.device("cpu"), "float32").row_shape("conv5_3", image_size)[1:]


@pytest.mark.slow
def test_cvft_input_sizes_give_expected_conv5_maps():
    assert CVFT_GROUND_SIZE == (112, 616) and CVFT_AERIAL_SIZE == (256, 256)
    assert _conv5_map_size(CVFT_GROUND_SIZE) == (7, 39)  # TF 'SAME' pooling, as CVFT's code
    assert _conv5_map_size(CVFT_GROUND_SIZE, pool="floor") == (7, 38)  # torchvision floor pooling
    assert _conv5_map_size(CVFT_AERIAL_SIZE) == (16, 16)
    model = load_vgg16(seed=0)
    with torch.no_grad():
        maps = model.forward_maps(torch.randn(1, 3, *CVFT_GROUND_SIZE))
    assert maps.shape == (1, 512, 7, 39)


def test_pooled_descriptors_are_unit_norm_and_max_is_global_max():
    from cvgl.extract.pooling import pool_maps

    model = load_vgg16(seed=0)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        maps = model.forward_maps(x)
        for pooling in ("max", "avg", "gem"):
            # What the extraction stores for pooling.name=<pooling>, pooling.local_norm=false.
            d = pool_maps(maps, pooling, local_norm=False)
            assert d.shape == (2, 512)
            torch.testing.assert_close(d.norm(dim=1), torch.ones(2))
        torch.testing.assert_close(
            pool_maps(maps, "max", local_norm=False), F.normalize(maps.amax(dim=(2, 3)), dim=1)
        )
    with pytest.raises(UserError, match="pooling"):
        pool_maps(maps, "median")
    with pytest.raises(UserError, match="layer"):
        model.forward_maps(x, "conv6_1")


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["ceil", "floor"])
def test_extraction_model_runs_this_stack_once_for_several_layers(pool):
    """The extraction's VGGModel gives, for every requested layer, this module's maps of that layer
    (pooled with extract.pooling), so the stack tested above is the one that fills the cache."""
    from cvgl.configs.schema import load_config
    from cvgl.extract.models import VGGModel
    from cvgl.extract.pooling import pool_maps

    layers = ["conv3_3", "pool4", "conv5_3"]
    x = torch.randn(2, 3, 40, 72, generator=torch.Generator().manual_seed(1))
    base = ["backbone.name=vgg16", f"backbone.arch={{pool: {pool}}}", f"layers=[{', '.join(layers)}]"]
    maps_model = VGGModel(load_config(None, [*base, "pooling.name=none"]), torch.device("cpu"), "float32")
    gem_model = VGGModel(load_config(None, [*base, "pooling.name=gem"]), torch.device("cpu"), "float32")
    net = load_vgg16(seed=0)
    maps, pooled = maps_model(x), gem_model(x)
    with torch.no_grad():
        for layer in layers:
            alone = net.forward_maps(x, layer, cvft=pool == "ceil")
            assert maps[layer].shape[1:] == maps_model.row_shape(layer, (40, 72))
            torch.testing.assert_close(maps[layer], alone, rtol=0, atol=0)
            torch.testing.assert_close(pooled[layer], pool_maps(alone, "gem"), rtol=0, atol=0)


def test_preprocess_cvft_is_bgr_minus_caffe_means_and_imagenet_is_rgb_mean_std():
    img = np.zeros((4, 5, 3), dtype=np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 20, 30  # R, G, B
    x = preprocess(img, "cvft")
    assert x.shape == (1, 3, 4, 5)
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([30.0, 20.0, 10.0]) - torch.tensor(CVFT_MEAN_BGR))
    y = preprocess(img, "imagenet")
    want = (torch.tensor([10.0, 20.0, 30.0]) / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225]
    )
    torch.testing.assert_close(y[0, :, 3, 4], want)
