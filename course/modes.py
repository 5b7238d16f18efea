"""Evaluation mode for a while, then every module's own mode back."""
from __future__ import annotations

from contextlib import contextmanager

from torch import nn


@contextmanager
def evaluating(model: nn.Module):
    """``with evaluating(model): ...`` runs the block with ``model`` in evaluation mode (dropout off,
    batch norm on its running statistics), then gives **each submodule** its own mode back.

    ``model.train(was_training)`` would not: it sets every submodule to the top module's flag. A
    fresh wrapper (``nn.Module()`` starts in training mode) around a network in evaluation mode
    would so switch the network to training mode on the way out, and its batch norms would then
    normalise by each batch's statistics and overwrite their running ones.
    """
    modes = to_eval(model)
    try:
        yield model
    finally:
        restore(modes)


def to_eval(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """Switch ``model`` to evaluation mode; returns every submodule's earlier mode for :func:`restore`."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    return modes


def restore(modes: list[tuple[nn.Module, bool]]) -> None:
    """Give each module the mode :func:`to_eval` recorded."""
    for m, mode in modes:
        m.training = mode


__all__ = ["evaluating", "restore", "to_eval"]
