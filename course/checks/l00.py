"""Checks for lesson 00 (welcome)."""
import torch

from . import Hint, exercise


@exercise("0.1", "error rate from logits", reference="course.train.error_rate")
def _error_rate(fn):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 10, generator=g)
    labels = torch.randint(0, 10, (50,), generator=g)
    labels[:20] = logits[:20].argmax(1)
    got = fn(logits, labels)
    want = (logits.argmax(1) != labels).float().mean().item()
    if isinstance(got, torch.Tensor):
        got = got.item()
    if abs(got - 1 + want) < 1e-6:
        raise Hint("you returned the accuracy (share right); the error rate is the share wrong.")
    if abs(got - want * 50) < 1e-6:
        raise Hint("you returned a count of mistakes; divide by the number of images.")
    if abs(got - want) > 1e-6:
        raise Hint("compare the arg-max over the 10 classes (dim=1) with the labels, then average.")


@exercise("0.2", "pixels in [0, 1]")
def _unit_range(fn):
    g = torch.Generator().manual_seed(1)
    raw = torch.randint(0, 256, (4, 1, 28, 28), generator=g, dtype=torch.uint8)
    raw[0, 0, 0, 0], raw[0, 0, 0, 1] = 0, 255
    got = fn(raw.clone())
    if not isinstance(got, torch.Tensor):
        raise Hint("return a tensor of the same shape as the input.")
    if not got.is_floating_point():
        raise Hint("the result is still an integer tensor: convert to float before dividing "
                   "(floor division // sends almost every pixel to 0).")
    if got.shape != raw.shape:
        raise Hint(f"keep the shape {tuple(raw.shape)}; you returned {tuple(got.shape)}.")
    want = raw.float() / 255.0
    if torch.allclose(got, raw.float() / 256.0):
        raise Hint("the brightest byte is 255, so divide by 255: a white pixel must become exactly 1.")
    if not torch.allclose(got, want, atol=1e-6):
        raise Hint("map byte 0 to 0.0 and byte 255 to 1.0, linearly.")
