"""Checks for lesson 04 (transfer of adversarial examples between models)."""
import math

import torch
from torch import nn

from ..attacks import amplify, transfer_error
from . import Hint, exercise


class _Fixed(nn.Module):
    """A 'model' whose answer for image i is stored in its first pixel (10 classes)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(5.0))  # a parameter, so it has a device like any model

    def forward(self, x):
        cls = (x.reshape(len(x), -1)[:, 0] * 9).round().long()
        return torch.nn.functional.one_hot(cls, 10).float() * self.scale


@exercise("4.1", "the transfer error", reference="course.attacks.transfer_error")
def _transfer_error(fn):
    g = torch.Generator().manual_seed(4)
    labels = torch.randint(0, 10, (40,), generator=g)
    answers = labels.clone()
    answers[:13] = (labels[:13] + 1) % 10            # 13 of 40 wrong: error 0.325
    x = torch.rand(40, 1, 28, 28, generator=g)
    x[:, 0, 0, 0] = answers.float() / 9
    model = _Fixed()
    got = fn(model, x, labels)
    want = transfer_error(model, x, labels)
    got = got.item() if isinstance(got, torch.Tensor) and got.numel() == 1 else got
    if not isinstance(got, (int, float)):
        raise Hint("return one number: the share of images the model gets wrong.")
    if abs(got - (1 - want)) < 1e-6:
        raise Hint("that is the accuracy: the error is the share of predictions that differ from the true label.")
    if abs(got - want * len(labels)) < 1e-6:
        raise Hint("that is the count of mistakes: divide by the number of images to get a share.")
    if abs(got - want) > 1e-6:
        raise Hint("predict with the model (arg-max of its logits) and compare with the true labels.")


@exercise("4.2", "amplify a perturbation to a per-pixel stddev σ", reference="course.attacks.amplify")
def _amplify(fn):
    g = torch.Generator().manual_seed(42)
    x = torch.rand(4, 1, 28, 28, generator=g) * 0.6 + 0.2      # away from the box: clipping rarely bites
    r = torch.randn(4, 1, 28, 28, generator=g) * torch.tensor([0.01, 0.03, 0.05, 0.0]).view(4, 1, 1, 1)
    x_adv = x + r
    got = fn(x, x_adv, 0.1)
    want = amplify(x, x_adv, 0.1)
    if not isinstance(got, torch.Tensor) or got.shape != x.shape:
        raise Hint(f"return the amplified images, a tensor shaped like x {tuple(x.shape)}.")
    got = got.detach().float()
    if not torch.isfinite(got).all():
        raise Hint("an image whose perturbation is zero (x′ = x) has no direction to amplify: leave it unchanged "
                   "instead of dividing by a zero norm.")
    if got.min() < 0 or got.max() > 1:
        raise Hint("the amplified images must stay images: clip them to [0, 1].")
    n = x[0].numel()
    d = (got - x).reshape(4, -1)
    std = d.pow(2).mean(1).sqrt()
    if torch.allclose(std[:3], torch.full((3,), 0.1 / math.sqrt(n)), rtol=0.05):
        raise Hint("the norm of each perturbation came out σ, so each pixel moves by about σ/√n: a per-pixel "
                   "standard deviation of σ needs ‖r‖ = σ·√n.")
    flat = r.reshape(4, -1)
    batch = (x + 0.1 * math.sqrt(n) * r / flat.norm()).clamp(0, 1)
    if torch.allclose(got, batch, atol=1e-5):
        raise Hint("normalise each image's perturbation by its own norm, not by the norm of the whole batch.")
    if not torch.allclose(got[3], x[3], atol=1e-6):
        raise Hint("an image whose perturbation is zero (x′ = x) has no direction to amplify: leave it unchanged.")
    if not torch.allclose(got, want, atol=1e-5):
        raise Hint("keep the direction of x′ − x, rescale it so that √(Σr²/n) = σ, add it to x, clip to [0, 1].")
