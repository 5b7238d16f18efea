"""Fooling images by gradient ascent (Nguyen et al., section "Gradient ascent").

Evolution needs no gradients; with them, fooling is even easier. Start from noise and climb the
target class's softmax probability directly in pixel space::

    X ← X + lr · ∇_X objective(X)       objective = p_target(X)  or  log p_target(X)
    X ← X · (1 − decay)                 (L2 decay: pulls pixels towards 0, i.e. black)
    X ← blur(X)  every ``blur_every``    (Gaussian blur: suppresses high-frequency noise)
    X ← clip(X, 0, 1)

Unregularised (decay 0, no blur) the result is structured noise that the network calls, say,
"7" with 99.99% confidence; the regularisers make the images smoother and a little more
recognisable (Yosinski et al.'s deep-visualisation regularisers).

Choices (papers.md [C] leaves them open): the start is N(0, 1) noise clipped to [0, 1]; the
default objective is log p (same maximiser as p, but its gradient does not vanish at p ≈ 0, where
a badly scored target starts); ``objective="prob"`` gives the paper's literal version.

All targets climb together in one batch (image ``i`` for ``targets[i]``): the model sees each
image independently (eval mode), so the batch gives exactly what separate runs would. Each
image's starting noise depends only on ``(seed, target)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import validate
from .cores import follow as follow_cores
from .modes import restore, to_eval


@dataclass
class AscentResult:
    """``images`` (T, C, H, W) in [0, 1]; ``confidences`` (T,) their p_target (the final step's, or
    with ``keep_best`` the best step's); ``history`` (steps + 1, T) p_target before the first step
    and after every step."""

    images: torch.Tensor
    confidences: torch.Tensor
    history: torch.Tensor
    targets: torch.Tensor


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur each channel of a batch (N, C, H, W) with a Gaussian of std ``sigma`` pixels."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t * t / (2 * sigma * sigma))
    k = k / k.sum()
    C = x.shape[1]
    pad = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    if pad < radius:  # image smaller than the kernel: trim the kernel
        k = k[radius - pad: radius + pad + 1] / k[radius - pad: radius + pad + 1].sum()
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)  # along width
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)  # along height


def _start_noise(targets: torch.Tensor, shape, seed: int) -> torch.Tensor:
    """N(0, 1) noise clipped to [0, 1], one image per target, each seeded by (seed, target)."""
    images = []
    for t in targets.tolist():
        g = torch.Generator().manual_seed(seed * 1_000_003 + int(t))
        images.append(torch.randn(tuple(shape), generator=g))
    return torch.stack(images).clamp_(0.0, 1.0)


def gradient_ascent(model: nn.Module, targets, steps: int = 500, lr: float = 10.0, decay: float = 0.0,
                    blur_every: int = 0, blur_sigma: float = 0.5, seed: int = 0, shape=(1, 28, 28),
                    objective: str = "logprob", keep_best: bool = False, progress: bool = True) -> AscentResult:
    """Climb ``p_target`` for every target at once (see the module docstring).

    ``targets``: class indices (an int, a list or a 1-D tensor). ``objective``: ``"prob"`` (the
    paper's softmax probability) or ``"logprob"`` (its log: the same maximiser, but the gradient does
    not vanish when p is near 0 or near 1, so one learning rate serves the whole climb). The
    defaults (log p, lr 10) take all ten digits of a LeNet trained 2 epochs past 0.9999 in ~130
    steps; with ``"prob"`` a target that starts at p ≈ 1e-8 has a gradient ≈ 1e-8 and barely moves.
    ``keep_best``: return each target's image at the step where its p_target was highest, not the
    last step's (a fixed rate can overshoot and fall back near the top: a real ImageNet network's
    p climbs past 0.99 and wobbles there). Returns an :class:`AscentResult`.
    """
    if objective not in ("prob", "logprob"):
        raise ValueError(f"objective must be 'prob' or 'logprob', got {objective!r}.")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}.")
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must lie in [0, 1), got {decay}.")
    if blur_every < 0 or (blur_every and blur_sigma <= 0):
        raise ValueError(f"blur_every must be >= 0 and blur_sigma > 0, got {blur_every} and {blur_sigma}.")
    targets = validate.class_indices(targets, "gradient_ascent").reshape(-1)
    if len(targets) == 0:
        raise ValueError("No targets given.")
    validate.check_model(model, "gradient_ascent")
    p = validate._param(model)
    validate.probe(model, torch.zeros(1, *shape, dtype=p.dtype if p is not None else None,
                                      device=p.device if p is not None else None), "gradient_ascent")
    from tqdm.auto import tqdm

    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    modes = to_eval(model)
    x = _start_noise(targets, shape, seed).to(device)
    tdev = targets.to(device)
    rows = torch.arange(len(targets), device=device)
    history = []
    try:
        with torch.enable_grad():
            for step in tqdm(range(steps + 1), desc="gradient ascent", disable=not progress, leave=False):
                follow_cores()
                x.requires_grad_(True)
                logits = model(x)
                if step == 0 and not (0 <= int(targets.min()) and int(targets.max()) < logits.shape[1]):
                    raise ValueError(f"targets must be class indices in [0, {logits.shape[1]}), "
                                     f"got {targets.tolist()}.")
                logp = torch.log_softmax(logits.float(), dim=1)[rows, tdev]
                history.append(logp.detach().exp())  # p_target at the current x
                if keep_best:
                    now = history[-1]
                    if step == 0:
                        best_p, best_x = now.clone(), x.detach().clone()
                    else:
                        up = now > best_p
                        best_p = torch.where(up, now, best_p)
                        best_x[up] = x.detach()[up]
                if step == steps:
                    break
                score = logp if objective == "logprob" else logp.exp()
                # Images are independent, so the gradient of the sum gives each image its own ∇.
                (grad,) = torch.autograd.grad(score.sum(), x)
                with torch.no_grad():
                    x = x.detach() + lr * grad
                    if decay:
                        x = x * (1.0 - decay)
                    if blur_every and (step + 1) % blur_every == 0:
                        x = gaussian_blur(x, blur_sigma)
                    x = x.clamp(0.0, 1.0)
    finally:
        restore(modes)
    history = torch.stack(history).cpu()
    if keep_best:
        return AscentResult(best_x, best_p.cpu(), history, targets)
    return AscentResult(x.detach(), history[-1].clone(), history, targets)


def ascent_lr(model: nn.Module, targets, shape, rms_step: float = 0.02, seed: int = 0) -> float:
    """A learning rate for :func:`gradient_ascent` that makes its first step move the pixels by
    ``rms_step`` (root mean square, on the [0, 1] scale).

    The gradient of log p_target has very different sizes for a trained ImageNet network, an
    untrained one and an MNIST LeNet; fixing the size of the first step instead of the rate makes
    one setting serve them all. Uses the same starting noise as ``gradient_ascent`` (same ``seed``).
    """
    targets = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    x = _start_noise(targets, shape, seed).to(device).requires_grad_(True)
    modes = to_eval(model)
    try:
        with torch.enable_grad():
            logp = torch.log_softmax(model(x).float(), dim=1)[torch.arange(len(targets)), targets.to(device)]
            (grad,) = torch.autograd.grad(logp.sum(), x)
    finally:
        restore(modes)
    rms = grad.pow(2).mean().sqrt().item()
    return float(rms_step / rms) if rms > 0 else 1.0
