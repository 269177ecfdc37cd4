"""Stream 1's CPU dropout: the distribution and attention of nn.Dropout / nn.MultiheadAttention."""

from __future__ import annotations

import pytest
import torch
from cvgl.align.geoalign import attention_train, dropout_mask, fast_dropout


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mask_drops_p_and_rescales_the_rest(dtype):
    torch.manual_seed(0)
    m = dropout_mask((200, 1000), 0.1, dtype)
    assert m.dtype == dtype and m.shape == (200, 1000)
    assert m.float().unique().tolist() == [0.0, float(torch.tensor(1 / 0.9, dtype=dtype))]
    dropped = (m == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.003  # 200,000 draws: ±0.0007 is one standard deviation


def test_masks_follow_the_torch_seed():
    torch.manual_seed(3)
    a = dropout_mask((64, 64), 0.3, torch.float32)
    b = dropout_mask((64, 64), 0.3, torch.float32)
    torch.manual_seed(3)
    assert torch.equal(a, dropout_mask((64, 64), 0.3, torch.float32))
    assert not torch.equal(a, b)


def test_eval_and_zero_p_leave_the_input_alone():
    x = torch.randn(5, 7)
    assert fast_dropout(x, 0.1, False) is x
    assert fast_dropout(x, 0.0, True) is x


def test_gradient_is_the_mask():
    torch.manual_seed(1)
    x = torch.randn(300, 40, requires_grad=True)
    y = fast_dropout(x, 0.25, True)
    y.sum().backward()
    assert torch.equal((y.detach() == 0), (x.grad == 0))
    assert torch.allclose(x.grad[x.grad != 0], torch.tensor(1 / 0.75))


def test_attention_matches_multihead_attention_without_dropout():
    torch.manual_seed(0)
    attn = torch.nn.MultiheadAttention(32, 4, dropout=0.0, batch_first=True).train()
    h = torch.randn(6, 10, 32)
    want = attn(h, h, h, need_weights=False)[0]
    assert torch.allclose(attention_train(attn, h), want, atol=1e-5)
