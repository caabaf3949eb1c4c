import pytest
import torch

from nxmiformer.compression import fake_quantize, fake_quantize_activations, quantize_to_int, weight_scales


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("shape", [(7, 16), (32, 64)])
def test_equals_torch_fake_quantize_per_channel(bits, shape):
    torch.manual_seed(bits)
    w = torch.randn(shape) * torch.rand(shape[0], 1) * 3
    qmax = 2 ** (bits - 1) - 1
    scale = w.abs().amax(1) / qmax
    ref = torch.fake_quantize_per_channel_affine(w, scale, torch.zeros(shape[0], dtype=torch.int32), 0, -qmax, qmax)
    torch.testing.assert_close(fake_quantize(w, bits), ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(fake_quantize(w, bits, scale=scale), ref, rtol=0, atol=1e-6)
    # given scales smaller than max-abs clamp exactly like torch's kernel
    small = scale * 0.5
    ref_small = torch.fake_quantize_per_channel_affine(w, small, torch.zeros(shape[0], dtype=torch.int32), 0, -qmax, qmax)
    torch.testing.assert_close(fake_quantize(w, bits, scale=small), ref_small, rtol=0, atol=1e-6)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_values_lie_on_integer_grid(bits):
    torch.manual_seed(0)
    w = torch.randn(9, 12)
    q, scale = quantize_to_int(w, bits)
    assert q.dtype == torch.int8
    assert int(q.abs().max()) == 2 ** (bits - 1) - 1
    torch.testing.assert_close(fake_quantize(w, bits), q.float() * scale[:, None], rtol=0, atol=1e-7)
    # rounding error at most half a step per row
    err = (fake_quantize(w, bits) - w).abs()
    assert torch.all(err <= scale[:, None] / 2 + 1e-6)


@pytest.mark.parametrize(
    "group_size,expected_distinct",
    [(None, 8), (2, 4), (3, 3), (8, 1), (-1, 1)],
)
def test_group_sizes(group_size, expected_distinct):
    torch.manual_seed(0)
    w = torch.randn(8, 16) * torch.arange(1, 9).float()[:, None]
    scale = weight_scales(w, 4, group_size)
    assert scale.shape == (8,)
    assert len(torch.unique(scale)) == expected_distinct
    # every row's values fit its group's grid
    assert torch.all(w.abs().amax(1) <= scale * 7 + 1e-5)
    if group_size == -1:
        torch.testing.assert_close(scale, (w.abs().max() / 7).expand(8))


def test_all_zero_rows_give_zeros_not_nan():
    w = torch.randn(4, 8)
    w[1] = 0
    out = fake_quantize(w, 4)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], torch.zeros(8))
    assert torch.equal(fake_quantize(torch.zeros(3, 4), 8), torch.zeros(3, 4))


def test_straight_through_gradient():
    w = torch.randn(4, 8, requires_grad=True)
    upstream = torch.randn(4, 8)
    (fake_quantize(w, 4) * upstream).sum().backward()
    torch.testing.assert_close(w.grad, upstream)


def test_activation_fake_quant_is_per_token():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    x[0, 0] *= 100
    out = fake_quantize_activations(x, 8)
    step = x.abs().amax(-1, keepdim=True) / 127
    assert torch.all((out - x).abs() <= step / 2 + 1e-6)
    x.requires_grad_(True)
    fake_quantize_activations(x, 8).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))


@pytest.mark.parametrize("bits", [1, 9, 16, True])
def test_bad_bits(bits):
    with pytest.raises(ValueError, match="2..8"):
        fake_quantize(torch.randn(2, 4), bits)
