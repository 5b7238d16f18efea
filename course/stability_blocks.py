"""Lipschitz bounds for timm's EfficientNets (EfficientNet-Lite0 …): batch norm, blocks, residuals.

:func:`course.stability.layer_bounds` treats a network as a chain of leaf modules. An EfficientNet
is not a chain: most blocks add their input back. It is a chain of *units*::

    conv_stem + bn1 (+ ReLU6)  →  blocks  →  conv_head + bn2 (+ ReLU6)  →  global average pool
    →  dropout (the identity at evaluation)  →  classifier (linear)

and each block is a chain of conv + batch-norm (+ activation) layers, e.g. an InvertedResidual::

    conv_pw (1×1) + bn1 + ReLU6  →  conv_dw (depthwise k×k) + bn2 + ReLU6  →  conv_pwl (1×1) + bn3

- **batch norm** at evaluation scales output channel d by ``s_d = γ_d / √(var_d + ε)`` and shifts
  it; the shift moves no distance, and the scale is folded into the conv's kernel
  (:func:`fold_bn`). ``‖diag(s) W‖₂`` is the exact norm of conv + BN, and can be much smaller
  than ``max|s| · ‖W‖₂`` (the two bounds' product).
- **depthwise and grouped convolutions** go through the FFT group by group
  (:func:`course.stability.conv_operator_norm` with ``groups``): the norm is the largest group's.
- **TF "same" padding** (timm's ``Conv2dSame``: zero padding, one pixel more on the right and
  bottom where the total is odd): only the window positions matter. The output's windows cover
  ``E = (O − 1)·Δ + span`` padded pixels along each axis (O outputs, stride Δ); on a torus of
  ``E`` rounded up to a multiple of Δ no window wraps around, so the layer is
  ``crop ∘ (circular conv on that torus) ∘ embed``, whatever the split between the sides, and
  the torus's norm bounds it (:func:`conv_bn_bound`). The bound is tight on large maps and loose
  on small ones, where the padding is a large share of the torus: on Lite0 at 224 px it is
  within 0.1% of the real norm for the 3×3 convs on 112×112, and 1.3× it for the 5×5
  depthwise convs on 7×7 (27.17 against 35.40 for ``blocks.5.2.conv_dw``, checked exactly by
  writing out each channel's 49×49 matrix).
- **activations**: ReLU6 is 1-Lipschitz (``course.stability.ACTIVATION_LIPSCHITZ``).
- **a residual block** ``x ↦ x + f(x)`` is ``(1 + L_f)``-Lipschitz, L_f the product of its
  branch's layers; a block without a skip connection is ``L_f``-Lipschitz.
- **global average pooling** over H×W is linear with norm ``1/√(HW)``; the classifier's is
  ``‖W‖₂``.

A network whose batch norms are already folded into its convs (:mod:`course.imagenet.fold`, what
``course.imagenet.create_model`` gives by default) has the same units, layers, names and bounds
(to float32 rounding): each conv is then paired with the :class:`~course.imagenet.fold.FoldedBatchNorm`
left in its batch norm's place, with ``bn=None``.

Squeeze-excitation (EfficientNet-B0, MobileNetV3) multiplies activations by a function of
themselves and is not handled: :func:`block_bounds` says so rather than return a wrong bound.

:func:`power_iteration_check` puts each conv + BN layer's FFT value beside an iterative lower
bound on the same linear operator, computed with the layer's own forward pass (its real
padding), and beside the circular version of the layer, where the FFT value is exact.

>>> import timm
>>> model = timm.create_model("tf_efficientnet_lite0").eval()
>>> units = block_bounds(model, (1, 3, 224, 224))
>>> network_bound(units)  # doctest: +SKIP
"""
from __future__ import annotations

import copy
import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from course import cores
from course.stability import (  # noqa: F401  (network_bound: re-exported for the product)
    ACTIVATION_LIPSCHITZ,
    LayerBound,
    avgpool_bound,
    conv_operator_norm,
    dense_bound,
    dry_run,
    lanczos_norm,
    network_bound,
    power_iteration_norm,
)

__all__ = ["BlockBound", "ConvBN", "LayerCheck", "block_bounds", "conv_bn_bound",
           "conv_bn_layers", "fold_bn", "format_checks", "network_bound", "power_iteration_check"]

# timm's containers whose forward is the chain of their conv + BN (+ act) layers (+ the skip).
_CHAINS = {"DepthwiseSeparableConv", "InvertedResidual", "EdgeResidual", "ConvBnAct",
           "BatchNormAct2d", "Sequential", "FoldedBatchNorm"}
# What course.imagenet.fold leaves of a batch norm folded into its conv (only its activation):
# paired with the conv like a batch norm, with bn=None (the scale is in the conv's kernel).
_FOLDED = "FoldedBatchNorm"
# Modules that are the identity at evaluation.
_IDENTITIES = (nn.Identity, nn.Dropout)
_IDENTITY_NAMES = {"DropPath"}


class ConvBN(NamedTuple):
    """One linear layer of the network: a convolution and the batch norm that follows it."""

    name: str               # e.g. "blocks.1.0.conv_dw+bn2"
    conv: nn.Conv2d
    bn: nn.Module | None    # None when the conv has no batch norm after it, or it is folded in
    input_shape: tuple      # what the conv saw on the dummy pass, (1, C, H, W)
    output_shape: tuple     # what it produced, (1, D, O_h, O_w)


class BlockBound(NamedTuple):
    """One unit of the chain (stem, block, head, pool, classifier) and its Lipschitz bound."""

    name: str                       # "conv_stem", "blocks.1.0", "conv_head", "global_pool", ...
    kind: str                       # "conv", "block", "residual", "avgpool", "linear"
    bound: float                    # prod(layers) or, for "residual", 1 + prod(layers)
    input_shape: tuple
    layers: tuple[LayerBound, ...]  # the branch: conv+bn layers (kind "conv+bn") and activations


class LayerCheck(NamedTuple):
    """One conv + BN layer's FFT bound beside an iterative lower bound on its norm."""

    name: str
    fft_bound: float        # FFT bound for the real (zero-padded) layer
    power_iteration: float  # lower bound on the real layer's norm: must be <= fft_bound
    circular_fft: float     # FFT norm of the same kernels, circular on the input torus (exact)
    circular_power: float   # lower bound on that circular layer's norm: must match circular_fft
    rel_diff: float         # |circular_fft − circular_power| / circular_fft: below 1e-3


# --- one conv + batch-norm layer ------------------------------------------------------------------

def bn_scale(bn: nn.Module | None, channels: int) -> torch.Tensor:
    """Per-channel factor ``γ / √(running_var + ε)`` of a batch norm at evaluation (1 if None)."""
    if bn is None:
        return torch.ones(channels)
    if bn.running_var is None:
        raise ValueError("A batch norm without running statistics is not a fixed map at "
                         "evaluation; it has no Lipschitz bound here.")
    scale = 1.0 / torch.sqrt(bn.running_var.detach() + bn.eps)
    return scale * bn.weight.detach() if bn.weight is not None else scale


def fold_bn(conv: nn.Conv2d, bn: nn.Module | None) -> torch.Tensor:
    """The kernel of conv followed by batch norm at evaluation: output channel d scaled by
    ``γ_d / √(var_d + ε)``. (The bias, ``β − mean·scale``, only translates, and is left out.)"""
    w = conv.weight.detach()
    return w * bn_scale(bn, w.shape[0]).to(w).view(-1, 1, 1, 1)


def conv_bn_bound(conv: nn.Conv2d, bn: nn.Module | None, input_size: int | Sequence[int],
                  output_size: Sequence[int] | None = None,
                  circular: bool = False) -> torch.Tensor:
    """Bound on the norm of ``x ↦ bn(conv(x))`` at evaluation, for inputs of ``input_size``.

    Zero padding (``circular=False``): an upper bound from the torus holding every window of the
    layer (see the module's docstring), for any padding, symmetric or not (``Conv2dSame``).
    ``output_size`` is the layer's (O_h, O_w); None runs the conv once on zeros to find it.
    ``circular=True``: the exact norm of the same kernels as a circular convolution on the
    ``input_size`` torus (a multiple of the stride).
    """
    (H, W) = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    weight = fold_bn(conv, bn)
    args = dict(stride=conv.stride, dilation=conv.dilation, groups=conv.groups)
    if circular:
        return conv_operator_norm(weight, (H, W), circular=True, **args)
    if conv.padding_mode != "zeros":
        raise NotImplementedError(f"padding_mode={conv.padding_mode!r}: only zero padding is "
                                  f"bounded by conv_bn_bound.")
    if output_size is None:
        with torch.no_grad():
            output_size = conv(conv.weight.new_zeros(1, conv.in_channels, H, W)).shape[-2:]
    extent = [(o - 1) * s + d * (k - 1) + 1 for o, s, d, k in
              zip(output_size, conv.stride, conv.dilation, conv.kernel_size)]
    return conv_operator_norm(weight, extent, padding=0, **args)


# --- walking the network --------------------------------------------------------------------------

def conv_bn_layers(model: nn.Module, input_shape: Sequence[int]) -> list[ConvBN]:
    """Every conv of ``model`` with the batch norm that follows it, in the order they run.

    One forward pass on zeros (in eval mode, restored after) with hooks on every Conv2d, batch
    norm and activation records the order and the shapes; a batch norm is paired with the conv
    that ran just before it, in the same module.

    A network whose batch norms are folded into its convs (``create_model(fold_bn=True)``, the
    default) gives the same layers under the same names, each with ``bn=None``: the conv's
    kernel already holds the scale, and every bound is the same to float32 rounding.
    """
    return [r for r in _trace(model, input_shape) if isinstance(r, ConvBN)]


def block_bounds(model: nn.Module, input_shape: Sequence[int],
                 threads: int | None = 1) -> list[BlockBound]:
    """A Lipschitz bound for each unit of a timm EfficientNet, in the order of the forward pass.

    Units: ``conv_stem`` (conv_stem + bn1 + act), one per block in ``model.blocks`` (kind
    "residual" with bound ``1 + ∏ branch`` when ``block.has_skip``, else "block" with ``∏
    branch``), ``conv_head`` (+ bn2 + act), ``global_pool`` and ``classifier``. Each unit's
    ``layers`` lists its branch: one ``LayerBound`` of kind "conv+bn" per conv (batch norm folded
    in, zero padding bounded on its torus) and one of kind "activation" per activation.
    ``network_bound(units)`` is the product: a Lipschitz bound for the whole network (on the
    logits). ``input_shape`` is (1, 3, H, W) (or (3, H, W)); the conv bounds depend on it.
    ``threads``: torch CPU threads while computing (the thousands of tiny eigenvalue problems
    run fastest on one); None leaves the setting alone.
    """
    for attr in ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "global_pool", "classifier"):
        if not hasattr(model, attr):
            raise TypeError(f"block_bounds walks a timm EfficientNet; {type(model).__name__} has "
                            f"no {attr!r}. For a plain chain of layers use layer_bounds.")
    with cores.threads(threads):
        records = _trace(model, input_shape)
        units: list[tuple[str, list[nn.Module], bool]] = [
            ("conv_stem", [model.conv_stem, model.bn1], False)]
        for i, stage in enumerate(model.blocks):
            for j, block in enumerate(stage):
                units.append((f"blocks.{i}.{j}", [block], bool(getattr(block, "has_skip", False))))
        units.append(("conv_head", [model.conv_head, model.bn2], False))

        out, covered = [], 0
        for name, modules, skip in units:
            _check_supported(name, modules)
            inside = {id(m) for top in modules for m in top.modules()}
            layers = tuple(_layer_bound(r) for r in records if id(_module_of(r)) in inside)
            covered += len(layers)
            if not layers:
                raise RuntimeError(f"{name} did not run on the dummy forward pass.")
            branch = math.prod(layer.bound for layer in layers)
            plain = "conv" if name in ("conv_stem", "conv_head") else "block"
            kind = "residual" if skip else plain
            out.append(BlockBound(name, kind, 1.0 + branch if skip else branch,
                                  layers[0].input_shape, layers))
        if covered != len(records):  # e.g. a conv after the pool (MobileNetV3's head)
            raise NotImplementedError("Some convs or activations run outside conv_stem, blocks "
                                      "and conv_head; block_bounds cannot place them.")
        out += _head_bounds(model, records)
    return out


def power_iteration_check(model: nn.Module, input_shape: Sequence[int], iters: int = 50,
                          seed: int = 0, method: str = "lanczos",
                          threads: int | None = 1) -> list[LayerCheck]:
    """Each conv + BN layer's FFT bound checked against an iterative estimate of its norm.

    For each layer of :func:`conv_bn_layers`, on its input size from the dummy pass:

    - ``fft_bound`` (:func:`conv_bn_bound`) against ``power_iteration``, a lower bound on the norm
      of the real linear operator ``x ↦ s ⊙ (conv(x) − conv bias)``, run through the conv
      module's own forward (its real zero padding, TF "same" included): ``fft_bound ≥
      power_iteration`` must hold;
    - ``circular_fft`` against ``circular_power``, the same kernels as a circular convolution on
      the input torus, where the FFT value is the norm itself: they must agree (``rel_diff``).

    ``method``: "lanczos" (:func:`course.stability.lanczos_norm`, ``2·iters`` passes; reaches
    1e-3 on Lite0 at 224 px in 50 iterations) or "power" (:func:`power_iteration_norm`, about
    ``1/(4·iters)`` low on the large layers at 224 px). The input sizes must be multiples of
    the strides (224 is) for the circular operators to exist.
    """
    if method not in ("lanczos", "power"):
        raise ValueError(f"method must be 'lanczos' or 'power', got {method!r}")
    checks = []
    with cores.threads(threads):
        for layer in conv_bn_layers(model, input_shape):
            conv, shape = layer.conv, layer.input_shape
            p = conv.weight
            real = _real_operator(conv, layer.bn)
            real64 = _real_operator(copy.deepcopy(conv).double(), layer.bn)
            weight = fold_bn(conv, layer.bn)
            circ, circ64 = (_circular_conv(w, shape[-2:], conv.stride, conv.dilation, conv.groups)
                            for w in (weight, weight.double()))
            run = dict(iters=iters, seed=seed, dtype=p.dtype, device=p.device)
            if method == "lanczos":
                zero_pi = float(lanczos_norm(real, shape, final=real64, **run))
                circ_pi = float(lanczos_norm(circ, shape, final=circ64, **run))
            else:
                zero_pi = float(power_iteration_norm(real, shape, **run))
                circ_pi = float(power_iteration_norm(circ, shape, **run))
            fft = float(conv_bn_bound(conv, layer.bn, shape[-2:], layer.output_shape[-2:]))
            cfft = float(conv_bn_bound(conv, layer.bn, shape[-2:], circular=True))
            checks.append(LayerCheck(layer.name, fft, zero_pi, cfft, circ_pi,
                                     abs(cfft - circ_pi) / cfft))
    return checks


def format_checks(checks: Sequence[LayerCheck]) -> str:
    """A text table of :func:`power_iteration_check`'s result, one line per layer."""
    lines = [f"{'':30s} {'zero padding (real layer)':^32s}   {'circular':^30s}",
             f"{'layer':30s} {'FFT bound':>10s} {'iterative':>10s} {'ratio':>9s}   "
             f"{'FFT':>10s} {'iterative':>10s} {'rel diff':>8s}"]
    for c in checks:
        lines.append(f"{c.name:30s} {c.fft_bound:10.4f} {c.power_iteration:10.4f} "
                     f"{c.fft_bound / c.power_iteration:9.4f}   {c.circular_fft:10.4f} "
                     f"{c.circular_power:10.4f} {c.rel_diff:8.1e}")
    return "\n".join(lines)


# --- helpers --------------------------------------------------------------------------------------

def _real_operator(conv: nn.Conv2d, bn: nn.Module | None):
    """``x ↦ s ⊙ (conv(x) − conv bias)``: conv + BN at evaluation less its constant term, run by
    the conv module itself (with its own padding), in the conv's dtype."""
    p = conv.weight
    scale = bn_scale(bn, conv.out_channels).to(p).view(-1, 1, 1)
    bias = conv.bias.detach().view(-1, 1, 1) if conv.bias is not None else 0.0

    def real(x):
        return scale * (conv(x) - bias)
    return real


def _circular_conv(weight, size, stride, dilation, groups):
    """``x ↦ conv2d(x, weight)`` on the ``size`` torus: wrap ``span − 1`` pixels around (by
    indexing, so a kernel may be larger than the torus), then a "valid" convolution. The output
    covers the torus once when the size is a multiple of the stride."""
    idx = [torch.arange(n + d * (k - 1)) % n
           for n, d, k in zip(size, dilation, weight.shape[-2:])]

    def circular(x):
        x = x.index_select(-2, idx[0].to(x.device)).index_select(-1, idx[1].to(x.device))
        return F.conv2d(x, weight, stride=stride, dilation=dilation, groups=groups)
    return circular


class _Act(NamedTuple):
    name: str
    module: nn.Module
    input_shape: tuple


def _module_of(record):
    return record.conv if isinstance(record, ConvBN) else record.module


def _layer_bound(record) -> LayerBound:
    if isinstance(record, ConvBN):
        bound = conv_bn_bound(record.conv, record.bn, record.input_shape[-2:],
                              record.output_shape[-2:])
        return LayerBound(record.name, "conv+bn", float(bound), record.input_shape)
    lipschitz = ACTIVATION_LIPSCHITZ.get(type(record.module))
    if lipschitz is None:
        raise TypeError(f"No Lipschitz constant for the activation {record.name} "
                        f"({type(record.module).__name__}).")
    return LayerBound(record.name, "activation", float(lipschitz(record.module)),
                      record.input_shape)


def _head_bounds(model, records) -> list[BlockBound]:
    """global_pool (average: 1/√(HW) by the Schur test, exact) and the classifier (‖W‖₂)."""
    head_out = next(r.output_shape for r in records
                    if isinstance(r, ConvBN) and r.conv is model.conv_head)
    pool = model.global_pool
    if getattr(pool, "pool_type", "avg") not in ("avg", "fast") and \
            not isinstance(pool, (nn.AdaptiveAvgPool2d, nn.AvgPool2d)):
        raise NotImplementedError(f"global_pool of type {getattr(pool, 'pool_type', pool)!r}: "
                                  f"only average pooling is bounded.")
    pool_bound = float(avgpool_bound(pool, head_out))
    out = [BlockBound("global_pool", "avgpool", pool_bound, head_out,
                      (LayerBound("global_pool", "avgpool", pool_bound, head_out),))]
    fc = model.classifier
    if isinstance(fc, nn.Linear):
        b = float(dense_bound(fc.weight))
        shape = (1, fc.in_features)
        out.append(BlockBound("classifier", "linear", b, shape,
                              (LayerBound("classifier", "linear", b, shape),)))
    elif not isinstance(fc, nn.Identity):
        raise NotImplementedError(f"classifier of type {type(fc).__name__}")
    return out


def _check_supported(name: str, modules: Sequence[nn.Module]) -> None:
    """Refuse units holding anything but chains of conv, batch norm, activations and identities
    (squeeze-excitation, attention, ...): their bound would not be the branch's product."""
    for top in modules:
        for sub_name, m in top.named_modules():
            kind = type(m).__name__
            if (isinstance(m, (nn.Conv2d, nn.modules.batchnorm._BatchNorm) + _IDENTITIES)
                    or type(m) in ACTIVATION_LIPSCHITZ or kind in _CHAINS | _IDENTITY_NAMES):
                continue
            where = f"{name}.{sub_name}" if sub_name else name
            raise NotImplementedError(f"{where} is a {kind}: block_bounds handles chains of "
                                      f"convs, batch norms and activations (plus a skip) only.")


def _trace(model: nn.Module, input_shape: Sequence[int]) -> list:
    """ConvBN and _Act records in the order of one forward pass on zeros (eval mode)."""
    shape = tuple(input_shape)
    p = next(model.parameters())
    x = torch.zeros((1, *shape) if len(shape) == 3 else shape, device=p.device, dtype=p.dtype)
    names = {id(m): n for n, m in model.named_modules()}
    events: list[list] = []  # [name, module, input shape, output shape], in order of the calls
    started: dict[int, list] = {}

    def before(module, inputs):  # a pre-hook: the order of the calls (a batch norm's act runs
        event = [names[id(module)], module, tuple(inputs[0].shape), None]  # inside it)
        events.append(event)
        started[id(module)] = event

    def after(module, inputs, output):
        started[id(module)][3] = tuple(output.shape)

    watched = [m for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.modules.batchnorm._BatchNorm))
               or type(m) in ACTIVATION_LIPSCHITZ or type(m).__name__ == _FOLDED]
    dry_run(model, x, [m.register_forward_pre_hook(before) for m in watched]
            + [m.register_forward_hook(after) for m in watched])

    records, pending = [], None  # pending: a conv waiting for its batch norm
    for name, module, shape_in, shape_out in events:
        folded = type(module).__name__ == _FOLDED
        if folded or isinstance(module, nn.modules.batchnorm._BatchNorm):
            if pending is None or pending[0].rpartition(".")[0] != name.rpartition(".")[0]:
                raise NotImplementedError(f"Batch norm {name} does not follow a conv in the "
                                          f"same module; it cannot be folded.")
            records.append(ConvBN(f"{pending[0]}+{name.rpartition('.')[2]}", pending[1],
                                  None if folded else module, pending[2], pending[3]))
            pending = None
            continue
        if pending is not None:  # a conv with no batch norm after it
            records.append(ConvBN(pending[0], pending[1], None, pending[2], pending[3]))
            pending = None
        if isinstance(module, nn.Conv2d):
            pending = (name, module, shape_in, shape_out)
        else:
            records.append(_Act(name, module, shape_in))
    if pending is not None:
        records.append(ConvBN(pending[0], pending[1], None, pending[2], pending[3]))
    return records
