"""The compiled 2×2 max pool gives PyTorch's max pool's numbers, forward and backward, to the bit."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course.models import build_model
from course.models.pooling import MaxPool2d, compiled, max_pool_2x2
from course.train import train_step


def _grads(pool, x, g):
    x = x.detach().clone().requires_grad_()
    y = pool(x)
    (gx,) = torch.autograd.grad(y, x, g)
    return y.detach(), gx


def _same(a, b):
    """Equal bit for bit, NaN where NaN, and the same sign of zero."""
    return a.shape == b.shape and torch.equal(torch.nan_to_num(a, nan=7.0), torch.nan_to_num(b, nan=7.0)) \
        and torch.equal(a.isnan(), b.isnan()) and torch.equal(torch.signbit(a), torch.signbit(b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(3, 4, 24, 24), (2, 3, 25, 9), (5, 8, 8)])
def test_ties_nans_and_odd_sizes_match_pytorch_bit_for_bit(dtype, shape):
    g = torch.Generator().manual_seed(11)
    x = torch.randint(-2, 3, shape, generator=g).to(dtype)       # many ties inside a window
    flat = x.view(-1)
    flat[torch.randperm(flat.numel(), generator=g)[:flat.numel() // 9]] = float("nan")
    flat[torch.randperm(flat.numel(), generator=g)[:flat.numel() // 9]] = float("-inf")
    assert compiled(x)
    out_shape = (*shape[:-2], shape[-2] // 2, shape[-1] // 2)
    grad = torch.randn(out_shape, generator=g, dtype=dtype)
    grad.view(-1)[::5] = -0.0                                     # PyTorch adds to a zero: +0 results
    want = _grads(lambda t: F.max_pool2d(t, 2), x, grad)
    got = _grads(max_pool_2x2, x, grad)
    assert _same(got[0], want[0]), "forward differs from F.max_pool2d"
    assert _same(got[1], want[1]), "input gradient differs from F.max_pool2d's (ties, NaN, or -0)"


def test_random_values_and_no_grad_path():
    x = torch.randn(4, 20, 24, 24, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(max_pool_2x2(x), F.max_pool2d(x, 2))
    with torch.inference_mode():
        assert torch.equal(max_pool_2x2(x), F.max_pool2d(x, 2))


def test_other_settings_and_inputs_go_to_pytorch():
    x = torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(3))
    assert not compiled(x.contiguous(memory_format=torch.channels_last))
    assert not compiled(x.to(torch.bfloat16))
    assert torch.equal(max_pool_2x2(x.to(torch.bfloat16)), F.max_pool2d(x.to(torch.bfloat16), 2))
    assert torch.equal(MaxPool2d(3, stride=2)(x), nn.MaxPool2d(3, stride=2)(x))
    assert torch.equal(MaxPool2d(2, ceil_mode=True)(x[..., :9, :9]), F.max_pool2d(x[..., :9, :9], 2, ceil_mode=True))
    assert isinstance(MaxPool2d(2), nn.MaxPool2d)            # what the Lipschitz bounds look for


def test_lenet_trains_to_the_same_weights_as_with_pytorchs_pool():
    ours, plain = build_model("lenet"), build_model("lenet")
    plain.load_state_dict(ours.state_dict())
    plain.pool1, plain.pool2 = nn.MaxPool2d(2), nn.MaxPool2d(2)
    assert type(ours.pool1) is MaxPool2d
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in (ours, plain)]
    g = torch.Generator().manual_seed(5)
    for _ in range(4):
        x = torch.rand(32, 1, 28, 28, generator=g)
        x[:, :, :6] = 0                          # blank rows, as MNIST has: tied windows after conv1
        y = torch.randint(0, 10, (32,), generator=g)
        losses = [train_step(m, o, x, y, 5e-4) for m, o in zip((ours, plain), opts)]
        assert losses[0] == losses[1]
    for (name, p), q in zip(ours.named_parameters(), plain.parameters()):
        assert torch.equal(p, q), name
