"""A fully connected net cut at a hidden layer: the activations there, and the layers above.

For the per-layer variant of adversarial training an "image" is the output of a hidden layer:
the attack treats the sub-network *above* that layer as the model and the activation vector as
its input. With sigmoid units every activation lies in [0, 1], the same box the L-BFGS attack
keeps pixels in, so :func:`course.attacks.lbfgs_attack` runs on activations unchanged.

Layer 0 is the input (the flattened pixels), layer i (1 ≤ i ≤ n) the output of hidden layer i.
"""
from __future__ import annotations

import torch
from torch import nn


def n_hidden_layers(model: nn.Module) -> int:
    """The number of hidden layers of a course MLP; a clear error for any other model."""
    names = getattr(model, "hidden_names", None)
    if names is None or not all(hasattr(model, f"fc{i}") and hasattr(model, f"act{i}") for i in names):
        raise TypeError(f"Per-layer adversarial training needs a fully connected course MLP (fc1, act1, ..., out), "
                        f"got {type(model).__name__}.")
    return len(names)


def _check_layer(model: nn.Module, layer: int) -> None:
    n = n_hidden_layers(model)
    if not 0 <= layer <= n:
        raise ValueError(f"layer must be 0 (the input) to {n} (the last hidden layer), got {layer}.")


@torch.no_grad()
def activations_at(model: nn.Module, images: torch.Tensor, layer: int) -> torch.Tensor:
    """The flattened outputs of hidden layer ``layer`` for ``images`` (layer 0: the pixels), (N, width)."""
    _check_layer(model, layer)
    h = images.reshape(len(images), -1)
    for i in model.hidden_names[:layer]:
        h = getattr(model, f"act{i}")(getattr(model, f"fc{i}")(h))
    return h


class LayersAbove(nn.Module):
    """The sub-network of ``model`` above hidden layer ``layer``: maps its activations to logits.

    It *shares* the model's modules: training it trains the model's upper layers. Dropout, where
    the model has it, is applied as in the model's forward pass.
    """

    def __init__(self, model: nn.Module, layer: int):
        super().__init__()
        _check_layer(model, layer)
        self.layer = layer
        self.dropout = bool(model.config.get("dropout")) if hasattr(model, "config") else False
        self.blocks = nn.ModuleList()
        for i in model.hidden_names[layer:]:
            parts = [getattr(model, f"fc{i}"), getattr(model, f"act{i}")]
            if self.dropout:
                parts.append(getattr(model, f"drop{i}"))
            self.blocks.append(nn.Sequential(*parts))
        self.out = model.out

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h.reshape(len(h), -1)
        for block in self.blocks:
            h = block(h)
        return self.out(h)
