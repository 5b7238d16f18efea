"""Checks shared by the public entry points (attack, MAP-Elites, gradient ascent, bounds).

A model with NaN weights, one that returns a 1-D output, float64 images for a float32 model or a
class target of 1.7 used to be attacked, evolved or bounded without a word — clean images back
with distortion 0, an archive that "has nothing inserted yet", NaN images — or to fail deep inside
with a raw IndexError or dtype error. Each check here raises at the entry point instead, with a
message that names the function, the problem and the fix. They run once per call, on one image,
so they cost nothing next to the work they guard.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .modes import evaluating


def _param(model: nn.Module) -> torch.Tensor | None:
    """The model's first floating-point parameter (its dtype and device are the model's)."""
    return next((p for p in model.parameters() if p.is_floating_point()), None)


def all_finite(t: torch.Tensor) -> bool:
    """True when every entry of the floating-point ``t`` is finite (no NaN, no ±inf).

    First the sum: it is finite only if every entry is (a NaN or an inf makes it NaN or inf), and a
    sum is one vectorised pass, where ``isfinite(t).all()`` is 10-20× slower on the CPU (0.45 ms
    for a 100×784 weight). Only a sum that overflows or is NaN takes the exact test."""
    return math.isfinite(float(t.detach().sum())) or bool(torch.isfinite(t.detach()).all())


def check_model(model, where: str) -> None:
    """``model`` is an ``nn.Module`` whose weights are all finite."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{where}: the model must be a torch.nn.Module, got {type(model).__name__}.")
    if all(all_finite(t) for t in [*model.parameters(), *model.buffers()] if t.is_floating_point() and not t.is_meta):
        return
    bad = [name for name, t in [*model.named_parameters(), *model.named_buffers()]
           if t.is_floating_point() and not t.is_meta and not all_finite(t)]
    if bad:
        raise ValueError(
            f"{where}: the model's weights contain NaN or inf ({', '.join(bad[:3])}{' …' if len(bad) > 3 else ''}), "
            "so every output would be NaN. A diverged training or a damaged checkpoint does this: retrain "
            "it (e.g. course.train_model(name, fresh=True), with a smaller learning rate if it diverged) "
            "or load good weights.")


def check_images(model: nn.Module, images, where: str) -> None:
    """``images`` are a finite floating-point tensor of the model's dtype."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise TypeError(f"{where}: images must be a floating-point torch.Tensor (N, ...) with pixels in "
                        f"[0, 1], got {getattr(images, 'dtype', type(images).__name__)}. "
                        "Convert with torch.as_tensor(images).float() / 255 for 8-bit pixels.")
    param = _param(model)
    if param is not None and images.dtype != param.dtype:
        raise TypeError(f"{where}: the images are {images.dtype} but the model's weights are {param.dtype}. "
                        f"Convert the images with images.to({param.dtype}) (for float32: images.float()).")
    if images.numel() and not all_finite(images):
        n = int((~torch.isfinite(images.reshape(len(images), -1))).any(1).sum())
        raise ValueError(f"{where}: {n} of the {len(images)} images contain NaN or inf pixels. "
                         "Replace them (e.g. torch.nan_to_num(images).clamp(0, 1)) or drop those images.")


def check_logits(out, n: int, where: str) -> int:
    """``out`` is (n, classes) logits, all finite; returns the number of classes."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{where}: the model must return a tensor of logits (N, classes), got "
                        f"{type(out).__name__}. Return the logits themselves (e.g. not a tuple or a dict).")
    if out.dim() != 2 or out.shape[0] != n:
        raise ValueError(f"{where}: the model must return logits of shape (N, classes) — here ({n}, classes) "
                         f"— but it returned shape {tuple(out.shape)}. Keep one row per image and one column "
                         "per class: no .squeeze(), .flatten() or .max() at the end of forward.")
    if out.shape[1] < 2:
        raise ValueError(f"{where}: the model returns {out.shape[1]} score per image; a classifier with at "
                         "least 2 classes is needed (return one logit per class).")
    finite = torch.isfinite(out).all(1)
    if not bool(finite.all()):
        i = int((~finite).nonzero()[0])
        raise ValueError(f"{where}: the model returned NaN or inf logits (image {i}: "
                         f"{out[i, :4].tolist()}…), so nothing can be optimised. Check its weights (a "
                         "diverged training or a damaged checkpoint: retrain with fresh=True) and its "
                         "inputs (finite pixels in [0, 1]).")
    return out.shape[1]


def probe(model: nn.Module, images: torch.Tensor, where: str) -> int:
    """Run ``model`` on the first image; return its number of classes, or explain why it cannot be used.

    Only one image goes through, so an error the model raises names the shape of that one image's
    batch; it is reported with the shape of the whole batch the caller passed.
    """
    one = images[:1]
    try:
        with torch.no_grad(), evaluating(model):   # a probe in training mode would move batch norms' statistics
            out = model(one)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        if isinstance(e, torch.cuda.OutOfMemoryError):
            raise
        said = str(e).replace(str(tuple(one.shape)), str(tuple(images.shape)))
        raise ValueError(f"{where}: the model cannot take images of shape {tuple(images.shape)} "
                         f"({len(images)} image(s) of shape {tuple(images.shape[1:])}): {said}") from e
    return check_logits(out, 1, where)


def class_indices(values, where: str, name: str = "targets") -> torch.Tensor:
    """``values`` (an int, a list, a tensor) as a long tensor of class indices; floats are refused.

    ``torch.as_tensor(1.7, dtype=torch.long)`` is 1: a target of 1.7 would silently become class 1.
    """
    try:
        t = torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{where}: {name} must be integer class indices (an int, a list of ints or an "
                        f"integer tensor), got {values!r}.") from e
    if t.numel() and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
        flat = t.reshape(-1).tolist()
        odd = [v for v in flat if t.is_floating_point() and not float(v).is_integer()]
        shown = odd[0] if odd else flat[0]
        raise TypeError(f"{where}: {name} must be integer class indices, got {shown!r} ({t.dtype}). "
                        f"Pass ints, e.g. {name}=[1, 7]; if you meant to round, do it yourself "
                        "(torch.round(t).long()).")
    return t.long()
