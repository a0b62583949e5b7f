"""RTN and the shared grid: values on the grid, level counts, round-trip error bounds, short last groups."""

import pytest
import torch

from qgen.quant.activations import ActFormat
from qgen.quant.grid import WeightFormat, fit_grid, quantize_activation, quantize_weight

pytestmark = pytest.mark.numeric  # also run under every float path: make test-numerics


def _weights(rows=24, cols=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) * torch.rand(rows, 1, generator=g)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [-1, 32, 64, 128])
@pytest.mark.parametrize("symmetric", [False, True])
def test_rtn_values_lie_on_the_grid(bits, group_size, symmetric):
    w = _weights()
    fmt = WeightFormat(bits, group_size, symmetric)
    w_hat, params = quantize_weight(w, fmt)
    col_group = params.column_group()
    scale, zero = params.scale[:, col_group], params.zero[:, col_group]
    q = w_hat / scale + zero
    # every value is scale * (integer - zero) with the integer in [0, 2^b - 1]
    assert torch.allclose(q, q.round(), atol=1e-3)
    assert q.round().min() >= 0 and q.round().max() <= 2**bits - 1
    for s, e in fmt.groups(w.shape[1]):
        for row in w_hat[:, s:e]:
            assert row.unique().numel() <= 2**bits
    # round trip: inside the grid's range the error is at most half a step
    assert ((w - w_hat).abs() <= scale / 2 + 1e-6).all()


def test_more_bits_means_less_error():
    w = _weights(cols=256)
    errors = [((quantize_weight(w, WeightFormat(b, 64))[0] - w) ** 2).mean().item() for b in (2, 3, 4, 8)]
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 1e-3 * errors[0]  # step shrinks 85x from 2 to 8 bits: MSE ~7000x


def test_short_last_group_when_group_size_does_not_divide():
    fmt = WeightFormat(4, 128)
    assert fmt.groups(576) == [(0, 128), (128, 256), (256, 384), (384, 512), (512, 576)]
    w = _weights(rows=8, cols=576)
    w_hat, params = quantize_weight(w, fmt)
    assert params.scale.shape == (8, 5)
    # the short group has its own grid: quantizing it alone gives the same values
    alone, _ = quantize_weight(w[:, 512:], WeightFormat(4, -1))
    assert torch.equal(w_hat[:, 512:], alone)


def test_per_channel_is_one_group_and_zero_rows_survive():
    w = _weights(rows=4, cols=100)
    w[2] = 0
    w_hat, params = quantize_weight(w, WeightFormat(3, -1))
    assert params.scale.shape == (4, 1)
    assert torch.equal(w_hat[2], torch.zeros(100))


def test_symmetric_grid_is_centred():
    scale, zero = fit_grid(torch.tensor([[-3.0, 1.0, 2.0]]), bits=4, symmetric=True)
    assert zero.item() == 8 and scale.item() == pytest.approx(6 / 15)


def test_per_token_activation_quantization():
    x = torch.randn(3, 5, 64)
    x[0, 0, 0] = 50.0  # an outlier only widens its own token's grid
    xq = quantize_activation(x, 8, "per_token")
    per_token_step = x.abs().amax(-1, keepdim=True) / 127
    assert ((xq - x).abs() <= per_token_step / 2 + 1e-6).all()
    assert not ActFormat(16).enabled and ActFormat(8).enabled
