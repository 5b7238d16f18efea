"""Lipschitz bounds (course.stability): FFT conv norms vs. power iteration, and whole models."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course.models import build_model
from course.stability import (
    LayerBound, avgpool_bound, contrast_norm_bound, conv_layer_bound, conv_operator_norm,
    dense_bound, layer_bounds, maxpool_bound, network_bound, power_iteration_norm,
)

ITERS = 400  # power iterations: small grids keep the spectral gap wide, so this converges


pytestmark = pytest.mark.usefixtures("one_thread")


def _kernel(seed, d=4, c=3, k=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, c, k, k, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("k", [1, 3])
def test_fft_norm_is_exact_for_circular_conv(stride, k):
    """On the torus the FFT value is the operator norm itself (power iteration agrees to 1e-3)."""
    n = 8
    w = _kernel(seed=10 * stride + k, k=k)
    # circular convolution on the n×n torus: wrap k − 1 pixels around, then a "valid" conv
    circular = lambda x: F.conv2d(F.pad(x, (0, k - 1, 0, k - 1), mode="circular"), w, stride=stride)
    exact = power_iteration_norm(circular, (1, 3, n, n), iters=ITERS, dtype=torch.float64)
    bound = conv_operator_norm(w, n, stride=stride, circular=True)
    assert abs(bound - exact) / exact < 1e-3


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", [0, 1])
@pytest.mark.parametrize("n", [8, 9])
def test_fft_norm_bounds_zero_padded_conv(stride, padding, n):
    """For a real zero-padded conv the value is an upper bound, and not a loose one here."""
    w = _kernel(seed=100 * stride + 10 * padding + n)
    conv = lambda x: F.conv2d(x, w, stride=stride, padding=padding)
    true_norm = power_iteration_norm(conv, (1, 3, n, n), iters=ITERS, dtype=torch.float64)
    bound = conv_operator_norm(w, n, stride=stride, padding=padding)
    assert bound >= true_norm * (1 - 1e-9)
    assert bound <= 1.2 * true_norm


def test_stride_scaling_on_subsampling():
    """A 1×1 kernel of ones with stride 2 just subsamples (norm 1): the Δ^(−1) scaling is right."""
    w = torch.ones(1, 1, 1, 1)
    assert conv_operator_norm(w, 8, stride=2, circular=True).item() == pytest.approx(1.0)
    assert conv_operator_norm(w, 8, stride=2).item() == pytest.approx(1.0)


@pytest.mark.parametrize("conv", [
    nn.Conv2d(4, 6, 3, padding=1, groups=2),
    nn.Conv2d(3, 4, 3, padding="same", dilation=2),
    nn.Conv2d(3, 4, (3, 5), stride=(1, 2), padding=(1, 2)),
    nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode="circular"),
], ids=["groups", "dilation-same", "rectangular", "circular"])
def test_conv_layer_bound_variants(conv):
    torch.manual_seed(0)
    n = 10
    linear_part = lambda x: conv._conv_forward(x, conv.weight, None)
    true_norm = power_iteration_norm(linear_part, (1, conv.in_channels, n, n), iters=ITERS)
    bound = conv_layer_bound(conv, n)
    assert bound >= true_norm * (1 - 1e-4)
    if conv.padding_mode == "circular":
        assert abs(bound - true_norm) / true_norm < 1e-3


def test_dense_bound_is_largest_singular_value():
    w = torch.randn(30, 50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert dense_bound(w).item() == pytest.approx(torch.linalg.svdvals(w)[0].item(), rel=1e-10)
    assert dense_bound(w.T).item() == pytest.approx(torch.linalg.svdvals(w)[0].item(), rel=1e-10)


def test_pooling_and_contrast_bounds():
    assert maxpool_bound(2, 2) == 1.0           # non-overlapping: contractive
    assert maxpool_bound(3, 2) == 2.0           # AlexNet's overlapping pool: a pixel in 4 windows
    spike = torch.zeros(1, 1, 7, 7)
    spike[0, 0, 2, 2] = 1.0                     # ...and a single spike meets that bound
    assert F.max_pool2d(spike, 3, 2).norm().item() == pytest.approx(2.0)
    assert avgpool_bound(nn.AvgPool2d(2), (1, 1, 8, 8)).item() == pytest.approx(0.5)
    assert avgpool_bound(nn.AdaptiveAvgPool2d(6), (1, 1, 6, 6)).item() == pytest.approx(1.0)
    assert contrast_norm_bound(0.5, 1.0) == pytest.approx(2.0)


def _check_records(records):
    assert all(isinstance(r, LayerBound) for r in records)
    assert all(r.bound > 0 and math.isfinite(r.bound) for r in records)
    total = network_bound(records)
    assert total > 0 and math.isfinite(total)
    assert total == pytest.approx(math.prod(r.bound for r in records))


def test_layer_bounds_lenet():
    torch.manual_seed(0)
    records = layer_bounds(build_model("lenet"), (1, 1, 28, 28))
    assert [r.name for r in records] == ["conv1", "pool1", "conv2", "pool2", "flatten", "fc1",
                                         "relu", "out"]
    assert [r.input_shape[-1] for r in records[:4]] == [28, 24, 12, 8]
    _check_records(records)


def test_layer_bounds_mlp_and_autoencoder():
    torch.manual_seed(0)
    mlp = layer_bounds(build_model("fc100_100_10"), (1, 28, 28))  # batch axis added
    assert [r.bound for r in mlp if r.kind == "activation"] == [0.25, 0.25]  # sigmoid
    _check_records(mlp)
    ae = layer_bounds(build_model("ae400_10"), (1, 1, 28, 28))
    assert [r.name for r in ae] == ["flatten", "encoder", "code_act", "out"]  # no decoder
    _check_records(ae)


def test_layer_bounds_alexnet():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    records = layer_bounds(torchvision.models.alexnet(weights=None), (1, 3, 224, 224))
    kinds = [r.kind for r in records]
    assert kinds.count("conv") == 5 and kinds.count("linear") == 3 and kinds.count("maxpool") == 3
    _check_records(records)


def test_unknown_layer_is_an_error():
    with pytest.raises(TypeError, match="No Lipschitz bound"):
        layer_bounds(nn.Sequential(nn.Linear(4, 4), nn.Softmax(dim=1)), (1, 4))
