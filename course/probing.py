"""Do single units mean more than random directions? (Szegedy et al., §3)

Earlier work read meaning into single units: find the held-out images x that maximise the
activation of unit i, ``⟨φ(x), e_i⟩``, and see what they share. Szegedy et al. run the same search
along a *random* direction v, maximising ``⟨φ(x), v⟩``, and find rows that look just as coherent:
the meaning lives in the space of activations, not in its coordinate axes.

Here that becomes a number. Stack the features of the whole held-out set into a matrix
Φ (N × units) and the directions into V (n_dirs × units); then ``Φ Vᵀ`` scores every image along
every direction in one matmul, and one ``topk`` picks each direction's top-k images. The share of
the majority label among those k images (the *purity*) measures how coherent a row is.

>>> feats = activations(model, "fc1", images)                        # doctest: +SKIP
>>> idx, _ = top_k_along(feats, unit_directions(feats.shape[1], [0, 1, 2]), k=8)  # doctest: +SKIP
>>> label_purity(labels[idx])                                        # doctest: +SKIP
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .modes import restore, to_eval


def activations(model: nn.Module, layer: str, images: torch.Tensor,
                batch_size: int = 512, *, of: str = "output") -> torch.Tensor:
    """φ(x): the output of the named ``layer`` for every image, flattened to (N, units).

    A forward hook on ``dict(model.named_modules())[layer]`` catches the output while the model
    runs on batches of ``images`` (evaluation mode, no gradients). Returned on the CPU.
    ``of="input"`` catches what goes *into* the layer instead (e.g. the features a last linear
    layer reads).
    """
    modules = dict(model.named_modules())
    if layer not in modules:
        names = ", ".join(n for n in modules if n)
        raise ValueError(f"No layer {layer!r} in {type(model).__name__}. Layers: {names}.")
    if of not in ("output", "input"):
        raise ValueError(f"of must be 'output' or 'input', got {of!r}.")
    device = next(model.parameters()).device
    caught: list[torch.Tensor] = []
    if of == "output":
        handle = modules[layer].register_forward_hook(
            lambda module, inputs, output: caught.append(output.flatten(1).cpu()))
    else:
        handle = modules[layer].register_forward_pre_hook(
            lambda module, inputs: caught.append(inputs[0].flatten(1).cpu()))
    modes = to_eval(model)
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                model(images[start:start + batch_size].to(device))
    finally:
        handle.remove()
        restore(modes)
    return torch.cat(caught)


def top_k_along(features: torch.Tensor, directions: torch.Tensor,
                k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k images maximising ``⟨φ(x), v⟩`` for each direction v.

    Args:
        features: (N, units), one row φ(x) per image.
        directions: (units,) for one direction or (n_dirs, units) for many.
        k: how many images per direction.
    Returns:
        ``(indices, scores)``, each (n_dirs, k) (or (k,) for a single direction), best first.
        ``indices`` index the rows of ``features``.
    """
    single = directions.dim() == 1
    dirs = directions.unsqueeze(0) if single else directions
    scores = features @ dirs.to(features).T                  # (N, n_dirs): every image, every v
    top = scores.topk(k, dim=0)                              # (k, n_dirs)
    indices, values = top.indices.T, top.values.T
    return (indices[0], values[0]) if single else (indices, values)


def unit_directions(units: int, idx: int | Sequence[int] | torch.Tensor) -> torch.Tensor:
    """The basis vectors e_i for the units ``idx``: rows of the identity, (len(idx), units)."""
    idx = torch.as_tensor(idx).cpu().reshape(-1, 1)
    return torch.zeros(len(idx), units).scatter_(1, idx, 1.0)


def random_directions(units: int, n: int, seed: int = 0) -> torch.Tensor:
    """n directions drawn uniformly on the unit sphere: normalised Gaussian vectors, (n, units)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, units, generator=g)
    return v / v.norm(dim=1, keepdim=True)


def label_purity(labels_of_topk: torch.Tensor) -> torch.Tensor:
    """Share of the most common label in each row of a (n_dirs, k) label matrix: (n_dirs,).

    1.0 when all k images share a label; about 1/k to 2/k for a random draw of MNIST digits.
    A single row (k,) gives a 0-dim tensor.
    """
    labels = labels_of_topk.long()
    rows = labels.reshape(-1, labels.shape[-1])
    counts = torch.nn.functional.one_hot(rows).sum(dim=1)   # (n_dirs, n_classes)
    purity = counts.max(dim=1).values.float() / rows.shape[1]
    return purity.reshape(labels.shape[:-1])


def purity_comparison(model: nn.Module, layer: str, images: torch.Tensor, labels: torch.Tensor,
                      k: int = 8, n_units: int | None = None, n_random: int = 100,
                      seed: int = 0, batch_size: int = 512) -> dict[str, torch.Tensor]:
    """Mean top-k label purity along single units vs. along random directions of one layer.

    One pass over ``images`` gives the features; ``n_units`` units (all if None, else a seeded
    random subset) and ``n_random`` random unit vectors are scored together in one matmul.
    Units that never vary on the set (dead ReLUs) are skipped: their "top k" is an arbitrary tie.

    Returns a dict of tensors: ``units`` (the unit indices used), ``unit_purity`` and
    ``random_purity`` (one value per direction), ``unit_mean`` and ``random_mean``.
    """
    feats = activations(model, layer, images, batch_size=batch_size)
    g = torch.Generator().manual_seed(seed)
    alive = torch.nonzero(feats.std(dim=0) > 0).flatten()
    if n_units is not None and n_units < len(alive):
        alive = alive[torch.randperm(len(alive), generator=g)[:n_units]].sort().values
    n_u = len(alive)
    directions = torch.cat([unit_directions(feats.shape[1], alive),
                            random_directions(feats.shape[1], n_random, seed=seed)])
    idx, _ = top_k_along(feats, directions, k)
    purity = label_purity(labels.cpu()[idx])
    unit_purity, random_purity = purity[:n_u], purity[n_u:]
    return {"units": alive, "unit_purity": unit_purity, "random_purity": random_purity,
            "unit_mean": unit_purity.mean(), "random_mean": random_purity.mean()}
