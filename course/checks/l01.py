"""Checks for lesson 01 (training the MNIST models)."""
import copy

import torch

from ..models import build_model, weight_decay_penalty
from ..train import train_step
from . import Hint, exercise


@exercise("1.1", "the weight-decay term", reference="course.models.weight_decay_penalty")
def _weight_decay(fn):
    torch.manual_seed(0)
    model = build_model("fc100_100_10")
    got = fn(model, 0.01)
    want = weight_decay_penalty(model, 0.01).item()
    got = got.item() if isinstance(got, torch.Tensor) else float(got)
    with_bias = 0.005 * sum(p.pow(2).sum() for p in model.parameters()).item()
    if abs(got - with_bias) < 1e-6 * max(1, abs(want)) and abs(with_bias - want) > 1e-9:
        raise Hint("biases are not decayed: keep only the weight matrices (parameters with 2 or more dimensions).")
    if abs(got - 2 * want) < 1e-5 * max(1.0, want):
        raise Hint("close: the course's convention is (λ/2)·Σ‖W‖², so that the gradient is λ·W.")
    if abs(got - want / 0.005) < 1e-4 * want / 0.005:
        raise Hint("multiply the sum of squares by λ/2.")
    if abs(got - want) > 1e-5 * max(1.0, want):
        raise Hint("the penalty is λ/2 times the sum, over weight matrices, of the squared entries (not the norm itself).")


@exercise("1.2", "one training step", reference="course.train.train_step")
def _train_step(fn):
    torch.manual_seed(0)
    ref = build_model("fc100_100_10")
    mine = copy.deepcopy(ref)
    x = torch.rand(16, 1, 28, 28)
    y = torch.randint(0, 10, (16,))
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
    opt_mine = torch.optim.SGD(mine.parameters(), lr=0.1)
    before = [p.detach().clone() for p in mine.parameters()]
    got = fn(mine, opt_mine, x, y, 1e-3)
    want = train_step(ref, opt_ref, x, y, 1e-3)
    got = got.item() if isinstance(got, torch.Tensor) else got
    changed = any(not torch.equal(a, b) for a, b in zip(mine.parameters(), before))
    if not changed:
        raise Hint("the weights did not change: call loss.backward() and optimizer.step().")
    if got is None:
        raise Hint("return the loss as a number (loss.item()).")
    if abs(got - want) > 1e-5:
        raise Hint("the loss should be the mean cross-entropy of the logits plus the weight-decay penalty (λ/2)·Σ‖W‖².")
    for a, b in zip(mine.parameters(), ref.parameters()):
        if not torch.allclose(a, b, atol=1e-6):
            raise Hint("the loss is right but the update differs: zero the gradients first (optimizer.zero_grad()), "
                       "then backward, then step — once.")
