"""Pooling: GeoAlign's per-image recipe reproduced by the batched implementation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from cvgl.core.errors import UserError
from cvgl.extract.pooling import POOLINGS, pool

PREFIX = 5  # CLS + 4 registers
GRID = (3, 4)


def _tokens(b: int = 4, c: int = 16, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(b, PREFIX + GRID[0] * GRID[1], c, generator=gen) * 3).to(dtype)


def _slow_geoalign(tokens: torch.Tensor, agg: str, p: float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """GeoAlign's extractor, image by image: patch tokens as a [C, h, w] map (CLS and registers
    dropped, as get_intermediate_layers(reshape=True) does), each location L2-normalized over channels,
    then the aggregator, then L2 normalization."""
    out = []
    for image in tokens.float():
        fmap = image[PREFIX:].reshape(*GRID, -1).permute(2, 0, 1)  # [C, h, w]
        fmap = F.normalize(fmap, p=2, dim=0)
        if agg == "gem":
            vec = fmap.clamp(min=eps).pow(p).mean(dim=(1, 2)).pow(1.0 / p)
        elif agg == "avg":
            vec = fmap.mean(dim=(1, 2))
        else:
            vec = fmap.max(dim=1).values.max(dim=1).values
        out.append(F.normalize(vec, dim=0))
    return torch.stack(out)


@pytest.mark.parametrize("method", ["gem", "avg", "max"])
def test_spatial_pools_equal_geoalign_per_image_loop(method):
    tokens = _tokens()
    got = pool(tokens, PREFIX, method)
    assert got.shape == (4, 16) and got.dtype == torch.float32
    torch.testing.assert_close(got, _slow_geoalign(tokens, method), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(4))


def test_gem_parameters_and_prefix_are_honoured():
    tokens = _tokens()
    torch.testing.assert_close(
        pool(tokens, PREFIX, "gem", p=2.0, eps=1e-3), _slow_geoalign(tokens, "gem", 2.0, 1e-3)
    )
    # Changing the CLS or register tokens must not change a spatial descriptor.
    changed = tokens.clone()
    changed[:, :PREFIX] = 100.0
    for method in ("gem", "avg", "max"):
        torch.testing.assert_close(
            pool(changed, PREFIX, method), pool(tokens, PREFIX, method), atol=0, rtol=0
        )


def test_local_norm_off_pools_raw_tokens():
    tokens = _tokens()
    patches = tokens[:, PREFIX:]
    torch.testing.assert_close(
        pool(tokens, PREFIX, "avg", local_norm=False), F.normalize(patches.mean(1), dim=1)
    )
    torch.testing.assert_close(
        pool(tokens, PREFIX, "max", local_norm=False), F.normalize(patches.amax(1), dim=1)
    )


def test_cls_is_normalized_first_token():
    tokens = _tokens()
    torch.testing.assert_close(
        pool(tokens, PREFIX, "cls"), tokens[:, 0] / tokens[:, 0].norm(dim=1, keepdim=True)
    )


def test_bf16_tokens_pool_in_float32():
    tokens = _tokens(dtype=torch.bfloat16)
    for method in POOLINGS:
        got = pool(tokens, PREFIX, method)
        assert got.dtype == torch.float32
        if method != "cls":
            torch.testing.assert_close(got, _slow_geoalign(tokens, method), atol=1e-6, rtol=1e-6)


def test_batch_rows_are_independent():
    tokens = _tokens(b=5)
    for method in POOLINGS:
        torch.testing.assert_close(
            pool(tokens, PREFIX, method)[2:3], pool(tokens[2:3], PREFIX, method), atol=1e-7, rtol=0
        )


def test_bad_arguments_are_user_errors():
    tokens = _tokens()
    assert POOLINGS == ("gem", "avg", "max", "cls")
    with pytest.raises(UserError, match="unknown pooling 'vlad'; use one of gem, avg, max, cls"):
        pool(tokens, PREFIX, "vlad")
    with pytest.raises(UserError, match="no patch tokens"):
        pool(tokens[:, :PREFIX], PREFIX, "gem")
    with pytest.raises(UserError, match="needs a CLS token"):
        pool(tokens, 0, "cls")
    with pytest.raises(UserError, match=r"\[batch, tokens, channels\]"):
        pool(tokens[0], PREFIX, "gem")
    with pytest.raises(UserError, match="p must be > 0"):
        pool(tokens, PREFIX, "gem", p=0.0)
