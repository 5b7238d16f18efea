"""Weights too small to matter, set to zero: the same outputs, up to 10× faster on a CPU.

Weight decay alone moves the weights that the data never reaches — the rows of a dead ReLU unit, the
weights from MNIST's always-black border pixels — so they shrink geometrically until they are
*subnormal* (below 2⁻¹²⁶ ≈ 1.2e-38 in float32) or make subnormal products. An x86 CPU computes with
subnormal numbers through a microcode assist that costs about a hundred cycles each: a trained LeNet's
forward pass on 200 images takes 250 ms instead of 31 ms, FC100-100-10's 7.7 ms instead of 0.73 ms
(one thread, measured on this course's 2-core machine). GPUs compute them at full speed.

A weight below ``tiny_threshold(dtype)`` (2⁻¹⁰⁰ ≈ 7.9e-31 in float32 and bfloat16) times an input x
adds at most 7.9e-31·|x| to a sum, which moves a float32 sum's last bit only if the sum is below
2²⁴ times that (1.3e-23·|x|); the sums of the course's networks (biases, pixels, activations) are far
larger, so the logits stay the same bit for bit (the tests check it on trained networks). Training
does change: PyTorch's Adam divides a gradient far below its ``eps`` by ``eps``, so such a weight
grows back by orders of magnitude within a few steps, where a zero stays zero. That is why trained
models are flushed once, when :func:`course.train_model` returns them, and only the fine-tuning loops
that follow flush as they go (every ``FLUSH_EVERY`` steps: a flush of LeNet and its Adam state costs
about a tenth of a training step).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

FLUSH_EVERY = 16
_EXPONENT = {torch.float32: -100, torch.bfloat16: -100, torch.float64: -1000}


def tiny_threshold(dtype: torch.dtype) -> float | None:
    """The magnitude below which a weight of ``dtype`` is zeroed (None: such weights are left alone)."""
    e = _EXPONENT.get(dtype)
    return None if e is None else 2.0 ** e


@torch.no_grad()
def flush_tiny_(tensors: Iterable[torch.Tensor]) -> int:
    """Set every entry with ``|x| < tiny_threshold(x.dtype)`` to zero, in place; returns how many
    (zeros included).

    Tensors of other dtypes (integers, float16) are left as they are; NaN and infinities too."""
    n = 0
    for t in tensors:
        threshold = tiny_threshold(t.dtype)
        if threshold is None or t.numel() == 0:
            continue
        small = t.abs() < threshold
        t.masked_fill_(small, 0.0)
        n += int(small.sum())
    return n


def flush_tiny_weights_(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Zero ``model``'s tiny parameters and floating buffers (and ``optimizer``'s tiny state, e.g.
    Adam's moments); returns the number of entries now zero that were below the threshold."""
    tensors = [p.data for p in model.parameters()]
    tensors += [b for b in model.buffers() if b.is_floating_point()]
    if optimizer is not None:
        tensors += [v for state in optimizer.state.values() for v in state.values()
                    if torch.is_tensor(v) and v.is_floating_point() and v.dim() > 0]
    return flush_tiny_(tensors)


__all__ = ["FLUSH_EVERY", "flush_tiny_", "flush_tiny_weights_", "tiny_threshold"]
