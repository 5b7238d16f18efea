"""Checks for lesson 00 (welcome)."""
import torch

from . import Hint, exercise


@exercise("0.1", "error rate from logits")
def _error_rate(fn):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 10, generator=g)
    labels = torch.randint(0, 10, (50,), generator=g)
    labels[:20] = logits[:20].argmax(1)
    want = (logits.argmax(1) != labels).float().mean().item()
    got = fn(logits, labels)
    if isinstance(got, torch.Tensor):
        got = got.item()
    if abs(got - 1 + want) < 1e-6:
        raise Hint("you returned the accuracy (share right); the error rate is the share wrong.")
    if abs(got - want * 50) < 1e-6:
        raise Hint("you returned a count of mistakes; divide by the number of images.")
    if abs(got - want) > 1e-6:
        raise Hint("compare the arg-max over the 10 classes (dim=1) with the labels, then average.")
