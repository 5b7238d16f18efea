"""2×2 max pooling (stride 2) compiled for the CPU: ``nn.MaxPool2d(2)``'s numbers, several times faster.

On a CPU, PyTorch's ``max_pool2d`` on a contiguous (NCHW) tensor walks each window with scalar
code: LeNet's two pools took 22 ms of an 84 ms training step at batch 128 (one thread, session 11),
and about a quarter of its forward pass. Here one compiled (numba) loop over the windows writes the
maximum and which of the four elements held it (one byte per window); the backward pass puts each
window's gradient back on that element.

The numbers are PyTorch's to the bit: each window picks the same element by PyTorch's own rule —
scanning (0, 0), (0, 1), (1, 0), (1, 1), the first strict maximum, or the last NaN — and the
backward pass adds the gradient to a zero, as PyTorch does. So LeNet trains to the same weights,
bit for bit, either way, and its checkpoints are the same. Anything else (other windows, padding,
``return_indices``, half precision, a non-contiguous tensor, a GPU, where cuDNN is fast, or no
numba) goes to ``nn.MaxPool2d`` itself.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

try:
    from numba import njit
except ImportError:  # pragma: no cover - numba is a dependency; PyTorch's pool still works
    njit = None


def _forward(x, out, idx):  # pragma: no cover - numba
    """out[p, i, j] = max of x[p, 2i:2i+2, 2j:2j+2]; idx[p, i, j] = which (0-3, row-major)."""
    P, h, w = out.shape
    for p in range(P):
        for i in range(h):
            top, bottom, o, q = x[p, 2 * i], x[p, 2 * i + 1], out[p, i], idx[p, i]
            for j in range(w):
                m, k = top[2 * j], 0
                v = top[2 * j + 1]
                if v > m or v != v:           # PyTorch's test (v > max or isnan(v)), in its order
                    m, k = v, 1
                v = bottom[2 * j]
                if v > m or v != v:
                    m, k = v, 2
                v = bottom[2 * j + 1]
                if v > m or v != v:
                    m, k = v, 3
                o[j], q[j] = m, k


def _backward(grad, idx, grad_x):  # pragma: no cover - numba
    """grad_x (zeros) += grad at each window's chosen element."""
    P, h, w = grad.shape
    for p in range(P):
        for i in range(h):
            g, q = grad[p, i], idx[p, i]
            for j in range(w):
                k = q[j]
                grad_x[p, 2 * i + k // 2, 2 * j + k % 2] += g[j]


if njit is not None:
    _forward = njit(cache=True, boundscheck=False)(_forward)
    _backward = njit(cache=True, boundscheck=False)(_backward)


def _as_planes(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().reshape(-1, t.shape[-2], t.shape[-1])


def _pool(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = x.new_empty((*x.shape[:-2], x.shape[-2] // 2, x.shape[-1] // 2))
    idx = torch.empty(out.shape, dtype=torch.uint8)
    _forward(_as_planes(x), _as_planes(out), _as_planes(idx))
    return out, idx


class _MaxPool2x2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        out, idx = _pool(x)
        ctx.save_for_backward(idx)
        ctx.input_shape = x.shape
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (idx,) = ctx.saved_tensors
        grad_x = grad.new_zeros(ctx.input_shape)
        _backward(_as_planes(grad.contiguous()), _as_planes(idx), _as_planes(grad_x))
        return grad_x


def compiled(x: torch.Tensor) -> bool:
    """Whether :func:`max_pool_2x2` runs ``x`` through the compiled loop (else ``F.max_pool2d``)."""
    return (njit is not None and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and x.dim() in (3, 4) and x.shape[-2] >= 2 and x.shape[-1] >= 2 and x.numel() > 0
            and x.is_contiguous())


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2)`` (floor mode, no padding) of a (N, C, H, W) or (C, H, W) tensor."""
    if not compiled(x):
        return F.max_pool2d(x, 2)
    if torch.is_grad_enabled() and x.requires_grad:
        return _MaxPool2x2.apply(x)
    return _pool(x)[0]


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d``; a 2×2 window of stride 2 runs :func:`max_pool_2x2` (compiled on a CPU).

    A subclass, so that everything that knows ``nn.MaxPool2d`` (the Lipschitz bounds, hooks,
    ``repr``) sees one; any other setting is ``nn.MaxPool2d``'s own forward.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        two = (self.kernel_size in (2, (2, 2)) and self.stride in (2, (2, 2)) and self.padding in (0, (0, 0))
               and self.dilation in (1, (1, 1)) and not self.ceil_mode and not self.return_indices)
        return max_pool_2x2(x) if two else super().forward(x)
