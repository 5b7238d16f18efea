"""Upper bounds on a network's Lipschitz constant, layer by layer (Szegedy et al., §4.3).

If every layer φ_k satisfies ``‖φ_k(x + r) − φ_k(x)‖ ≤ L_k ‖r‖``, the whole network satisfies
``‖φ(x + r) − φ(x)‖ ≤ (L_1 · L_2 ⋯ L_K) ‖r‖``. Each L_k is easy to bound:

- **dense layer** ``x ↦ Wx + b``: the largest singular value ``‖W‖₂`` (the bias only translates);
- **convolution**: it is linear too, so ``‖W‖₂`` again, but W is huge. The Fourier transform
  diagonalises convolutions, which turns ``‖W‖₂`` into the largest singular value of a small
  ``D × (C·Δ²)`` matrix A(ξ) at each frequency ξ (see :func:`conv_operator_norm`);
- **activations**: the largest slope, 1 for ReLU and tanh, **1/4** for the logistic sigmoid
  (the paper says 1 for all; 1/4 is the true constant, and what we use);
- **max-pooling**: contractive (1) when the windows do not overlap (the paper's case). With
  overlapping windows one pixel can feed m windows and the constant is up to √m
  (torchvision's AlexNet pools 3×3 with stride 2: m = 4, bound 2);
- **contrast normalisation** ``x ↦ x / (ε + ‖x‖²)^γ``: ``ε^(−γ)`` (:func:`contrast_norm_bound`).

A large product does not prove that adversarial examples exist; a small one would rule them out.
Networks with batch norm and residual blocks (timm's EfficientNets): :mod:`course.stability_blocks`.

>>> from course.models import build_model
>>> bounds = layer_bounds(build_model("lenet"), (1, 1, 28, 28))
>>> network_bound(bounds)  # doctest: +SKIP
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, NamedTuple, Sequence

import torch
from torch import nn

from . import validate
from .modes import restore, to_eval

# Largest slope of each elementwise activation: its Lipschitz constant.
ACTIVATION_LIPSCHITZ: dict[type, Callable[[nn.Module], float]] = {
    nn.ReLU: lambda m: 1.0,
    nn.ReLU6: lambda m: 1.0,
    nn.Tanh: lambda m: 1.0,             # tanh'(0) = 1
    nn.Sigmoid: lambda m: 0.25,         # σ'(x) = σ(x)(1 − σ(x)) ≤ 1/4, at x = 0
    nn.Softplus: lambda m: 1.0,         # slope σ(βx) < 1
    nn.SiLU: lambda m: 1.09984,         # x·σ(x): slope σ(x)(1 + x(1 − σ(x))) ≤ 1.099839
    nn.LeakyReLU: lambda m: max(1.0, abs(m.negative_slope)),
    nn.ELU: lambda m: max(1.0, m.alpha),
}
# Layers that do not change distances at all (at evaluation time: dropout is the identity).
ISOMETRIES = (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout)


class LayerBound(NamedTuple):
    """One layer's Lipschitz bound, as listed by :func:`layer_bounds`."""

    name: str               # the module's name in ``model.named_modules()``
    kind: str               # "linear", "conv", "maxpool", "avgpool", "activation", "isometry", ...
    bound: float            # L_k: ‖φ_k(x + r) − φ_k(x)‖ ≤ L_k ‖r‖
    input_shape: tuple      # the shape the layer saw on the dummy pass


# --- dense layers -------------------------------------------------------------------------------

def spectral_norm(matrices: torch.Tensor) -> torch.Tensor:
    """Largest singular value of each matrix in a batch (..., m, n), real or complex.

    The same numbers as ``torch.linalg.matrix_norm(A, ord=2)``, computed as ``√λ_max(G)`` with G
    the Gram matrix on the smaller side (``AAᴴ`` or ``AᴴA``): a Hermitian eigenvalue problem is
    several times cheaper than an SVD (AlexNet's 4096×9216 FC1: ~6 s against ~50 s on one core).
    """
    a = matrices.detach()
    ah = a.mH
    gram = a @ ah if a.shape[-2] <= a.shape[-1] else ah @ a
    return torch.linalg.eigvalsh(gram)[..., -1].clamp_min(0).sqrt()


def dense_bound(weight: torch.Tensor) -> torch.Tensor:
    """‖W‖₂, the largest singular value of a (out, in) weight matrix: exact for ``x ↦ Wx + b``."""
    return spectral_norm(weight)


# --- convolutions -------------------------------------------------------------------------------

def conv_operator_norm(weight: torch.Tensor, input_size: int | Sequence[int], stride=1,
                       padding=0, dilation=1, groups: int = 1,
                       circular: bool = False) -> torch.Tensor:
    """Operator norm of the 2-D convolution ``x ↦ conv2d(x, weight, stride, padding)`` (no bias).

    **Stride 1, circular.** On an M×M torus the convolution acts on each Fourier frequency ξ
    separately: ``ŷ(ξ) = A(ξ) x̂(ξ)``, with ``A(ξ)[d, c] = ŵ_{d,c}(ξ)`` the D×C matrix of the
    kernels' DFT coefficients (up to a conjugation, which changes no singular value). The DFT is
    unitary up to a constant, so ``‖W‖₂ = max_ξ σ_max(A(ξ))``.

    **Stride Δ.** Split the input into its Δ² polyphase components ``x_a[m] = x[Δm + a]``
    (an orthogonal re-indexing). A stride-Δ convolution on the M-torus is a stride-1 convolution
    on the (M/Δ)-torus from C·Δ² input channels, with the kernel's polyphase components
    ``w_a[j] = w[Δj + a]``. In terms of the kernel's DFT on the full M-grid, the coefficients
    ``ŵ(ξ + l·M/Δ)`` at the Δ² aliases l of ξ mix the polyphase DFTs through a Δ×Δ DFT matrix
    per axis, which has all singular values √Δ. Hence::

        ‖W‖₂ = max_{ξ ∈ grid of size M/Δ} σ_max(A(ξ)) · Δ^(−1),
        A(ξ) = [ŵ_{d,c}(ξ + l·M/Δ)]_{d, (c, l)}     a D × (C·Δ²) matrix.

    papers.md writes the scaling as Δ^(−2); with the unnormalised DFT used here it is Δ^(−1) on
    A(ξ), i.e. Δ^(−2) on A(ξ)A(ξ)ᴴ, whose largest eigenvalue is σ_max². Check: a 1×1 kernel of
    ones with stride 2 only subsamples (norm 1); its unscaled A(ξ) is a row of four ones, norm 2.

    **Zero padding (the layer's real operator).** Pad the input as the layer does, to size
    ``H + 2p``, round that up to a multiple of Δ, and view the padded image as a torus of that
    size M. No window of the real convolution wraps around, so the real operator is
    ``crop ∘ (circular conv on the M-torus) ∘ embed``: embedding into zeros is an isometry and
    cropping never increases a norm. The value returned is therefore an **upper bound** for a
    zero-padded layer (tight as the image grows), and **exact** for the circular operator.

    Args:
        weight: (D, C/groups, kh, kw) kernels.
        input_size: the layer's input height and width (an int for square inputs).
        stride, padding, dilation: ints or pairs, as in :func:`torch.nn.functional.conv2d`
            (``padding`` per side).
        groups: grouped convolutions are block-diagonal; the norm is the largest block's.
        circular: compute the norm of the circular convolution on the ``input_size`` torus
            (``padding`` is then ignored; the size must be a multiple of the stride; a kernel
            larger than the torus wraps around it).

    Batched: one ``fft2`` over all (real) kernels, one batched :func:`spectral_norm` over all
    frequencies.
    """
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    (H, W) = _pair(input_size)
    D, Cg, kh, kw = weight.shape
    if dh > 1 or dw > 1:  # a dilated kernel is an ordinary kernel with zeros between its taps
        dilated = weight.new_zeros(D, Cg, dh * (kh - 1) + 1, dw * (kw - 1) + 1)
        dilated[..., ::dh, ::dw] = weight
        weight, kh, kw = dilated, dilated.shape[-2], dilated.shape[-1]
    if circular:
        if H % sh or W % sw:
            raise ValueError(f"A circular convolution needs the input size {(H, W)} to be a "
                             f"multiple of the stride {(sh, sw)}.")
        Mh, Mw = H, W
    else:
        Mh, Mw = _round_up(H + 2 * ph, sh), _round_up(W + 2 * pw, sw)
    if kh == 1 and kw == 1:  # a 1×1 kernel's DFT is the same at every frequency: one is enough
        Mh, Mw = sh, sw
    if kh > Mh or kw > Mw:
        if not circular:  # cannot happen with the padded size, which holds at least one window
            raise ValueError(f"Kernel {(kh, kw)} larger than the grid {(Mh, Mw)}.")
        weight = _wrap_kernel(weight, Mh, Mw)  # on a small torus the taps wrap around and add up
        kh, kw = weight.shape[-2:]
    nh, nw = Mh // sh, Mw // sw  # size of the output torus (and of the ξ grid)

    # ŵ on the full M-grid (fft2 zero-pads the kernel to M×M): (G, D/G, C/G, Mh, Mw)
    spectrum = torch.fft.fft2(weight.detach().reshape(groups, D // groups, Cg, kh, kw),
                              s=(Mh, Mw))
    # frequency index = l·n + ξ: split each axis into (alias l, frequency ξ), then gather the
    # Δ² aliases of each ξ next to the input channels -> (G, nh, nw, D/G, C/G · sh · sw)
    spectrum = spectrum.reshape(groups, D // groups, Cg, sh, nh, sw, nw)
    A = spectrum.permute(0, 4, 6, 1, 2, 3, 5).reshape(groups, nh, nw, D // groups, Cg * sh * sw)
    # real kernels: A(−ξ) is the complex conjugate of A(ξ) up to column order (same singular
    # values), so the half-plane ξ_w ≤ nw/2 already holds the maximum: half the work
    A = A[:, :, : nw // 2 + 1]
    return spectral_norm(A).max() / math.sqrt(sh * sw)


def conv_layer_bound(conv: nn.Conv2d, input_size: int | Sequence[int]) -> torch.Tensor:
    """:func:`conv_operator_norm` for an ``nn.Conv2d`` layer on inputs of ``input_size`` (H, W).

    Zero padding gives an upper bound; ``padding_mode="circular"`` the exact norm when the layer
    is a true circular convolution (output covering the torus once). Reflect and replicate
    padding copy pixels (the padding map itself has norm > 1) and are not handled.
    """
    (H, W), k = _pair(input_size), conv.kernel_size
    span = [d * (kk - 1) + 1 for d, kk in zip(conv.dilation, k)]
    if conv.padding == "same":
        padding = [math.ceil((s - 1) / 2) for s in span]  # covers PyTorch's (possibly uneven) split
    elif conv.padding == "valid":
        padding = [0, 0]
    else:
        padding = list(conv.padding)
    args = dict(stride=conv.stride, dilation=conv.dilation, groups=conv.groups)
    if conv.padding_mode == "zeros":
        return conv_operator_norm(conv.weight, (H, W), padding=padding, **args)
    if conv.padding_mode == "circular":
        outs = [(n + 2 * p - s) // st + 1
                for n, p, s, st in zip((H, W), padding, span, conv.stride)]
        if all(n % st == 0 and o <= n // st and s <= n
               for n, o, s, st in zip((H, W), outs, span, conv.stride)):
            return conv_operator_norm(conv.weight, (H, W), circular=True, **args)
    raise NotImplementedError(f"No bound for padding_mode={conv.padding_mode!r} with these sizes.")


# --- other layers -------------------------------------------------------------------------------

def maxpool_bound(kernel_size, stride, dilation=1) -> float:
    """Lipschitz constant bound √m of max-pooling, m = most windows any one pixel falls into.

    ``|max_i a_i − max_i b_i| ≤ max_i |a_i − b_i|``, so each output moves by at most the largest
    change in its window, and ``‖Δout‖² ≤ Σ_windows Σ_{i∈window} Δx_i² ≤ m ‖Δx‖²``. Along one
    axis a pixel is in at most ``ceil(span / stride)`` windows (and at most ``k``). With
    non-overlapping windows (stride ≥ kernel) m = 1: Szegedy's "contractive".
    """
    m = 1
    for k, s, d in zip(_pair(kernel_size), _pair(stride if stride is not None else kernel_size),
                       _pair(dilation)):
        m *= min(k, math.ceil((d * (k - 1) + 1) / s))
    return math.sqrt(m)


def avgpool_bound(pool: nn.Module, input_shape: Sequence[int]) -> torch.Tensor:
    """Bound on an average-pooling layer's norm by the Schur test, ``‖A‖₂ ≤ √(‖A‖₁ ‖A‖_∞)``.

    Pooling is linear with non-negative weights, acting the same on every channel, so its largest
    row sum is ``max(A·1)`` and its largest column sum ``max(Aᵀ·1)``: one forward and one
    backward pass of the layer on a single channel of ones. Exact for uniform non-overlapping
    windows (k×k, stride k: 1/k) and for the identity (AlexNet's 6×6 → 6×6 adaptive pool).
    """
    ones = torch.ones(1, 1, *input_shape[-2:], requires_grad=True)
    out = pool(ones)
    (col_sums,) = torch.autograd.grad(out.sum(), ones)
    return (out.max() * col_sums.max()).sqrt().detach()


def batchnorm_bound(bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """At evaluation, batch norm scales channel c by ``γ_c / √(var_c + ε)``: the largest |scale|."""
    scale = 1.0 / torch.sqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach()
    return scale.abs().max()


def contrast_norm_bound(eps: float, gamma: float) -> float:
    """``ε^(−γ)`` bounds the contrast normalisation ``x ↦ x / (ε + ‖x‖²)^γ`` (Szegedy §4.3).

    Its Jacobian is ``(ε + r²)^(−γ) (I − 2γ x xᵀ / (ε + r²))``, r = ‖x‖: eigenvalues
    ``(ε + r²)^(−γ)`` and ``(ε + r²)^(−γ)(1 − 2γ r²/(ε + r²))``, both at most ``ε^(−γ)`` in size
    when 0 ≤ γ ≤ 1, with equality at x = 0. (torchvision's AlexNet has no such layer.)
    """
    if not 0 <= gamma <= 1:
        raise ValueError(f"The bound ε^(−γ) holds for 0 ≤ γ ≤ 1, got γ={gamma}.")
    return eps ** (-gamma)


# --- checking a bound: power iteration ------------------------------------------------------------

def power_iteration_norm(layer_fn: Callable[[torch.Tensor], torch.Tensor],
                         input_shape: Sequence[int], iters: int = 200, seed: int = 0,
                         dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """‖J‖₂ of a *linear* map ``layer_fn`` (e.g. a conv without its bias), by power iteration.

    Repeats ``v ← JᵀJ v / ‖JᵀJ v‖``: ``J v`` is the forward pass and ``Jᵀ u`` a vector-Jacobian
    product (autograd's backward pass with ``grad_outputs=u``), so the matrix is never formed.
    Returns ``‖J v‖`` for the final unit vector v, a *lower* bound on ‖J‖₂ at every step that
    converges to it: the check of the FFT bound computed on the real operator.
    The start vector is drawn on the CPU (the same on every device) and moved to ``device``
    (None: it stays on the CPU), which must be where ``layer_fn``'s weights are.
    """
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(tuple(input_shape), generator=g, dtype=dtype).to(device)
    v = v / v.norm()
    for _ in range(iters):
        x = v.detach().requires_grad_(True)
        y = layer_fn(x)
        (jtjv,) = torch.autograd.grad(y, x, grad_outputs=y.detach())  # Jᵀ(J v)
        v = jtjv / jtjv.norm()
    with torch.no_grad():
        return layer_fn(v).norm()


def lanczos_norm(layer_fn: Callable[[torch.Tensor], torch.Tensor], input_shape: Sequence[int],
                 iters: int = 50, seed: int = 0, dtype: torch.dtype = torch.float32,
                 device=None, final: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 ) -> torch.Tensor:
    """‖J‖₂ of a *linear* map ``layer_fn``, by the Lanczos method on JᵀJ: power iteration, sped up.

    Power iteration is slow on a big convolution: the top of its spectrum is a continuum (the
    singular values at neighbouring frequencies are almost equal), and after k steps the estimate
    is still about ``1/(4k)`` too low (measured on EfficientNet-Lite0's ``blocks.1.0.conv_dw`` on
    112×112: 2e-3 after 100 steps, 1.3e-3 after 200). Lanczos uses the same k products ``JᵀJ v``
    from the same random start, but returns the best vector of the whole Krylov space they span
    instead of the last one (which is in that space): an error of about ``1/k²`` (4e-4 after
    50 steps there).

    Two passes of the three-term recurrence, each storing three vectors (no re-orthogonalisation):
    the first builds the tridiagonal matrix T, the second sums the Lanczos vectors with the
    weights of T's top eigenvector into a vector v. Returns ``‖J v‖ / ‖v‖``: like
    :func:`power_iteration_norm`, a *lower* bound on ‖J‖₂ for an explicit vector v, however
    rounding disturbed the recurrence, up to the rounding of that last pass: in float32 it can
    land 1e-5 above ‖J‖₂ on a layer with a million inputs. ``final``, the same map in float64
    (or None), evaluates that ratio once in float64 instead. Costs ``2 · iters`` forward and
    backward passes.
    """
    g = torch.Generator().manual_seed(seed)
    q0 = torch.randn(tuple(input_shape), generator=g, dtype=dtype).to(device)
    q0 = q0 / q0.norm()
    alphas, betas, _ = _lanczos_pass(layer_fn, q0, iters)
    k = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if k > 1:
        off = torch.tensor(betas[: k - 1], dtype=torch.float64)
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    top = torch.linalg.eigh(t).eigenvectors[:, -1]
    *_, v = _lanczos_pass(layer_fn, q0, k, coeffs=top.tolist())
    with torch.no_grad():
        if final is not None:
            v = v.double()
            return final(v).norm() / v.norm()
        return layer_fn(v).norm() / v.norm()


def _lanczos_pass(layer_fn, q: torch.Tensor, iters: int, coeffs: Sequence[float] | None = None):
    """``iters`` Lanczos steps on JᵀJ from the unit vector q: (alphas, betas, Σ coeffs_j q_j).
    Stops early when the Krylov space is invariant (β ≈ 0: JᵀJ has few distinct eigenvalues)."""
    q_prev, beta = torch.zeros_like(q), 0.0
    alphas: list[float] = []
    betas: list[float] = []
    acc = torch.zeros_like(q) if coeffs is not None else None
    for j in range(iters):
        if acc is not None:
            acc += coeffs[j] * q
            if j == iters - 1:
                break
        x = q.detach().requires_grad_(True)
        y = layer_fn(x)
        (w,) = torch.autograd.grad(y, x, grad_outputs=y.detach())  # Jᵀ(J q)
        alpha = float((q * w).sum())
        w = w - alpha * q - beta * q_prev
        alphas.append(alpha)
        betas.append(float(w.norm()))
        if betas[-1] <= 1e-6 * max(abs(a) for a in alphas):
            break
        q_prev, q, beta = q, w / betas[-1], betas[-1]
    return alphas, betas, acc


# --- a whole model ------------------------------------------------------------------------------

def layer_bounds(model: nn.Module, input_shape: Sequence[int]) -> list[LayerBound]:
    """A Lipschitz bound for every layer of ``model``, in the order the forward pass runs them.

    One dummy forward pass on zeros of ``input_shape`` (e.g. ``(1, 1, 28, 28)``; a missing batch
    axis is added) with a hook on every leaf module records which layers run, in which order, and
    each one's input shape (a convolution's bound depends on its input size). Layers that do not
    run (AE400-10's decoder) are left out. Operations called as functions (``torch.flatten``,
    ``F.relu``) have no module and are invisible to hooks; they must be 1-Lipschitz for the
    product to remain a bound.
    """
    validate.check_model(model, "layer_bounds")
    if isinstance(input_shape, torch.Tensor) or not all(isinstance(d, numbers.Integral) and d > 0 for d in input_shape):
        got = f"a tensor of shape {tuple(input_shape.shape)}" if isinstance(input_shape, torch.Tensor) else repr(input_shape)[:80]
        raise ValueError(f"layer_bounds: input_shape must be positive integers such as (1, 1, 28, 28), got "
                         f"{got}. Pass images.shape, not the images.")
    seen = _trace_leaf_inputs(model, input_shape)
    modules = dict(model.named_modules())
    records = []
    for name, shape in seen.items():
        kind, bound = _bound_of(modules[name], shape)
        records.append(LayerBound(name, kind, float(bound), shape))
    return records


def network_bound(bounds: Sequence[LayerBound]) -> float:
    """The product of the per-layer bounds: a Lipschitz bound for the whole network."""
    return math.prod(b.bound for b in bounds)


def _bound_of(module: nn.Module, shape: tuple) -> tuple[str, float | torch.Tensor]:
    if isinstance(module, nn.Linear):
        return "linear", dense_bound(module.weight)
    if isinstance(module, nn.Conv2d):
        return "conv", conv_layer_bound(module, shape[-2:])
    if isinstance(module, nn.MaxPool2d):
        return "maxpool", maxpool_bound(module.kernel_size, module.stride, module.dilation)
    if isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return "avgpool", avgpool_bound(module, shape)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "batchnorm", batchnorm_bound(module)
    for cls, lipschitz in ACTIVATION_LIPSCHITZ.items():
        if type(module) is cls:
            return "activation", lipschitz(module)
    if isinstance(module, ISOMETRIES):
        return "isometry", 1.0
    raise TypeError(f"No Lipschitz bound for {type(module).__name__}. Supported: Linear, Conv2d, "
                    f"MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, BatchNorm, "
                    f"{', '.join(c.__name__ for c in ACTIVATION_LIPSCHITZ)}, and reshapes.")


def _trace_leaf_inputs(model: nn.Module, input_shape: Sequence[int]) -> dict[str, tuple]:
    """Leaf-module name -> input shape, in the order of the forward pass (first call of each)."""
    shape = tuple(input_shape)
    param = next(model.parameters(), None)
    x = torch.zeros((1, *shape) if len(shape) in (1, 3) else shape,
                    device=param.device if param is not None else None,
                    dtype=param.dtype if param is not None else None)
    seen: dict[str, tuple] = {}

    def record(name):
        def hook(module, inputs):
            seen.setdefault(name, tuple(inputs[0].shape))
        return hook

    dry_run(model, x, [m.register_forward_pre_hook(record(n))
                       for n, m in model.named_modules() if n and not any(m.children())])
    return seen


def dry_run(model: nn.Module, x: torch.Tensor, handles) -> None:
    """One forward pass of ``x`` in evaluation mode, no gradients, for the hooks ``handles`` to
    watch; then every module's mode back and the hooks removed (whatever happens)."""
    modes = to_eval(model)
    try:
        with torch.no_grad():
            model(x)
    finally:
        restore(modes)
        for h in handles:
            h.remove()


def _wrap_kernel(weight: torch.Tensor, Mh: int, Mw: int) -> torch.Tensor:
    """The kernel of the same circular convolution on an Mh×Mw torus: tap (i, j) lands on
    (i mod Mh, j mod Mw), and taps landing on the same pixel add up."""
    *lead, kh, kw = weight.shape
    qh, qw = -(-kh // Mh), -(-kw // Mw)
    padded = torch.nn.functional.pad(weight, (0, qw * Mw - kw, 0, qh * Mh - kh))
    return padded.reshape(*lead, qh, Mh, qw, Mw).sum(dim=(-4, -2))


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
