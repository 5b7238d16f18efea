"""Checks for lesson 08 (fooling images by gradient ascent)."""
import math

import torch
from torch import nn

from . import Hint, exercise


def _toy_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.Tanh(), nn.Linear(16, 10)).double().eval()


def reference_step(model, x, targets, lr):
    x = x.detach().clone().requires_grad_(True)
    logp = torch.log_softmax(model(x), dim=1)[torch.arange(len(targets)), targets]
    (grad,) = torch.autograd.grad(logp.sum(), x)
    return (x.detach() + lr * grad).clamp(0.0, 1.0)


@exercise("8.1", "one gradient-ascent step in the box", reference="course.fooling.gradient_ascent")
def _ascent_step(fn):
    model = _toy_model()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 1, 6, 6, generator=g, dtype=torch.float64)
    x[0, 0, 0, :3] = torch.tensor([0.0, 1.0, 0.999], dtype=torch.float64)  # pixels at and near the box
    targets = torch.tensor([3, 0, 7, 3])
    lr = 2.0
    got = fn(model, x.clone(), targets.clone(), lr)
    want = reference_step(model, x, targets, lr)
    if got is None:
        raise Hint("return the new images (same shape as x).")
    got = torch.as_tensor(got).detach().to(torch.float64)
    if got.shape != x.shape:
        raise Hint(f"return images of the same shape as x: expected {tuple(x.shape)}, got {tuple(got.shape)}.")
    if torch.allclose(got, want, atol=1e-8):
        return

    def unclipped(sign=1.0, prob=False):
        xx = x.clone().requires_grad_(True)
        logp = torch.log_softmax(model(xx), dim=1)[torch.arange(len(targets)), targets]
        (gr,) = torch.autograd.grad((logp.exp() if prob else logp).sum(), xx)
        return x + sign * lr * gr

    if got.min() < -1e-12 or got.max() > 1 + 1e-12:
        if torch.allclose(got, unclipped(), atol=1e-8):
            raise Hint("the step is right, but pixels left the valid range: clip the result to [0, 1] (the box constraint).")
        raise Hint("pixels must stay in [0, 1] after the step: clip.")
    if torch.allclose(got, unclipped(-1.0).clamp(0, 1), atol=1e-8):
        raise Hint("that step goes downhill: gradient *ascent* adds lr·∇ log p (or you minimised cross-entropy with the wrong sign).")
    if torch.allclose(got, unclipped(prob=True).clamp(0, 1), atol=1e-8):
        raise Hint("close: the course climbs log p_target, not p itself (same maximiser, but the gradient of p "
                   "vanishes where p is tiny).")
    if torch.allclose(got, x, atol=1e-12):
        raise Hint("the images did not change: add lr times the gradient of log p_target with respect to the pixels.")
    raise Hint("each image climbs log softmax(model(x))[target] of its own target: take the gradient of the sum "
               "over the batch (each image's gradient is its own), add lr·∇, clip to [0, 1].")


def reference_kernel(sigma):
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-t * t / (2 * sigma * sigma))
    return k / k.sum()


@exercise("8.2", "the Gaussian blur kernel")
def _kernel(fn):
    for sigma in (0.5, 1.0, 1.7):
        got = fn(sigma)
        want = reference_kernel(sigma)
        if got is None:
            raise Hint("return the 1-D kernel weights as a tensor.")
        got = torch.as_tensor(got, dtype=torch.float64).reshape(-1)
        r = (len(want) - 1) // 2
        if len(got) != len(want):
            raise Hint(f"for σ = {sigma} the kernel should reach r = ⌈3σ⌉ pixels each side (at least 1): "
                       f"2r + 1 taps, got {len(got)}.")
        if abs(float(got.sum()) - 1.0) > 1e-6:
            if torch.allclose(got / got.sum(), want, atol=1e-6):
                raise Hint("the shape is right: normalise the weights to sum to 1, or blurring darkens/brightens the image.")
            raise Hint("the weights must sum to 1 (blurring keeps the mean brightness).")
        t = torch.arange(-r, r + 1, dtype=torch.float64)
        alt = torch.exp(-t * t / (sigma * sigma))
        if torch.allclose(got, alt / alt.sum(), atol=1e-6):
            raise Hint("the Gaussian's exponent is −t²/(2σ²): the factor 2 is missing.")
        if not torch.allclose(got, want, atol=1e-6):
            raise Hint("weight at offset t ∝ exp(−t²/(2σ²)) for t = −r … r, r = ⌈3σ⌉, then normalised.")
