"""Around the L-BFGS attack: choosing what to attack, baselines of noise, and transfer (Tables 1–4).

Szegedy et al. measure two things about adversarial examples besides their size:

- **Noise of the same size does nothing.** A random perturbation with the distortion of an
  adversarial one barely changes the answer (lesson 03: :func:`noise_of_distortion`).
- **They transfer.** Examples made for one network are often misclassified by another, trained
  with other hyper-parameters (Table 2) or on another half of the data (Tables 3–4). The error is
  measured against the *true* label (:func:`transfer_error`), and compared with Gaussian noise
  (:func:`gaussian_noise`); Tables 3–4 also *amplify* the perturbations to a per-pixel standard
  deviation of 0.1 (:func:`amplify`).

Every function is batched over images and returns tensors on the device of its inputs (errors as
Python floats).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..profiles import setting
from ..train import error_rate, predict_logits
from .lbfgs import distortion

LBFGS_KEYS = ("c_init", "c_factor", "c_steps", "refine_steps", "refine_points", "max_iter", "history")


def lbfgs_settings(profile: str | None = None) -> dict:
    """The keyword arguments of :func:`~course.attacks.lbfgs_attack` in the profile in force
    (``lbfgs.c_init``, ``lbfgs.c_steps``, ... of :mod:`course.profiles`)."""
    return {k: setting(f"lbfgs.{k}", profile) for k in LBFGS_KEYS}


def random_wrong_targets(labels: torch.Tensor, n_classes: int = 10, seed: int = 0) -> torch.Tensor:
    """A seeded random target for each image, uniform over the ``n_classes − 1`` *wrong* classes."""
    labels = torch.as_tensor(labels)
    g = torch.Generator().manual_seed(seed)
    shift = torch.randint(1, n_classes, (len(labels),), generator=g).to(labels.device)
    return (labels + shift) % n_classes


def correct_for_all(models: Sequence[nn.Module], images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A bool mask (N,) of the images that *every* model classifies correctly.

    Attacking only these makes the numbers of different models comparable (same images) and means
    that any error measured afterwards is caused by the perturbation, not by the image.
    """
    ok = torch.ones(len(labels), dtype=torch.bool, device=labels.device)
    for model in models:
        ok &= predict_logits(model, images).argmax(1).to(labels.device) == labels
    return ok


def transfer_error(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """The share of ``images`` that ``model`` gets wrong, against the **true** ``labels``.

    Fed the adversarial examples made for another model, this is the error of Table 2 (it counts
    every wrong answer, not only the attack's target).
    """
    return error_rate(predict_logits(model, images), labels.cpu())


def amplify(x: torch.Tensor, x_adv: torch.Tensor, sigma: float = 0.1) -> torch.Tensor:
    """Rescale each perturbation to a per-pixel standard deviation ``sigma``, then clip to [0, 1].

    ``x + sigma·√n·(x' − x)/‖x' − x‖`` per image (n pixels per image), so that
    ``√(Σ r²/n) = sigma`` before clipping: Tables 3–4's "amplified to stddev 0.1". An image whose
    perturbation is zero has no direction and is returned unchanged.
    """
    if x.shape != x_adv.shape:
        raise ValueError(f"x and x_adv must have the same shape, got {tuple(x.shape)} and {tuple(x_adv.shape)}.")
    r = (x_adv - x).reshape(len(x), -1)
    norm = r.norm(dim=1, keepdim=True)
    scale = torch.where(norm > 0, sigma * math.sqrt(r.shape[1]) / norm.clamp_min(1e-30), 0.0)
    return (x + (scale * r).view_as(x)).clamp(0, 1)


def gaussian_noise(x: torch.Tensor, sigma, seed: int = 0) -> torch.Tensor:
    """``clip(x + sigma·z, 0, 1)`` with z standard normal (seeded); ``sigma`` a number or one per image (N,)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(x.shape, generator=g).to(x.device, x.dtype)
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.dim() == 1:
        s = s.view(-1, *([1] * (x.dim() - 1)))
    return (x + s * z).clamp(0, 1)


def noise_of_distortion(x: torch.Tensor, target: torch.Tensor, seed: int = 0, steps: int = 40) -> torch.Tensor:
    """Random Gaussian perturbations whose distortion, *after* clipping to [0, 1], equals ``target``.

    Clipping removes part of the noise (most MNIST pixels are 0, and half of their noise points
    below 0), so ``clip(x + d·z)`` is less distorted than ``d``. The scale of z is found per image
    by bisection (the distortion grows with it), so a noisy image and an adversarial one of the same
    image are exactly as far from it. ``target`` (N,), one distortion per image.
    """
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(x.shape, generator=g).to(x.device, x.dtype)
    target = torch.as_tensor(target, dtype=x.dtype, device=x.device).reshape(-1)
    shape = (-1, *([1] * (x.dim() - 1)))
    lo, hi = torch.zeros_like(target), torch.full_like(target, 1.0)
    for _ in range(60):  # grow hi until it is far enough (a distortion up to 1 is reachable)
        short = distortion(x, (x + hi.view(shape) * z).clamp(0, 1)) < target
        if not short.any() or (hi > 1e3).all():
            break
        hi = torch.where(short, hi * 2, hi)
    for _ in range(steps):
        mid = (lo + hi) / 2
        short = distortion(x, (x + mid.view(shape) * z).clamp(0, 1)) < target
        lo, hi = torch.where(short, mid, lo), torch.where(short, hi, mid)
    return (x + ((lo + hi) / 2).view(shape) * z).clamp(0, 1)


def transfer_heatmap(ours, rows: Sequence[str], cols: Sequence[str], paper=None, title: str = "", ax=None):
    """One heat map of a transfer table: colour = our error; each cell reads "ours (paper)".

    ``ours`` and ``paper`` are (len(rows), len(cols)) arrays of errors in [0, 1]; a paper cell that
    is None or NaN (not reported) shows only our number. Returns the axis.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    ours = np.asarray(ours.detach().cpu() if isinstance(ours, torch.Tensor) else ours, dtype=float)
    paper = np.full_like(ours, np.nan) if paper is None else np.array(
        [[np.nan if v is None else v for v in row] for row in paper], dtype=float)
    if ax is None:
        _, ax = plt.subplots(figsize=(1.5 * len(cols) + 2, 0.55 * len(rows) + 1.5))
    ax.imshow(ours, cmap="Reds", vmin=0, vmax=1, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(cols)):
            text = f"{ours[i, j]:.0%}" + ("" if np.isnan(paper[i, j]) else f"\n({paper[i, j]:.1%})")
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if ours[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("fed to")
    ax.set_ylabel("made for")
    ax.set_title(title or "error on the true label: ours (paper)", fontsize=10)
    return ax
