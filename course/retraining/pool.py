"""A pool of adversarial examples (Szegedy et al., "Adversarial training").

The pool has a fixed size. Every so often a random share of it is *replaced* by fresh adversarial
examples made against the current network (the old ones were made against an older network and
grow stale), and every training batch has a few pool entries *mixed* in::

    pool = AdversarialPool(adv_images, labels)        # labels: the TRUE classes of the originals
    pool.replace(0.2, (fresh_images, fresh_labels))   # 20% of the slots, chosen at random
    pool.put((some_images, their_labels))             # as many random slots as there are examples
    x, y = pool.mix(batch_x, batch_y, k=32)           # the batch plus 32 pool entries

The entries can be images or hidden activations (any shape after the first axis): the per-layer
variant keeps one pool per layer.
"""
from __future__ import annotations

import torch


class AdversarialPool:
    """A fixed-size pool of ``(example, label)`` pairs as two tensors on one device."""

    def __init__(self, examples: torch.Tensor, labels: torch.Tensor):
        if not isinstance(examples, torch.Tensor) or not isinstance(labels, torch.Tensor):
            raise TypeError("examples and labels must be tensors.")
        if examples.dim() < 2 or len(examples) == 0:
            raise ValueError(f"A pool needs at least one example with a batch axis, got shape {tuple(examples.shape)}.")
        if labels.shape != (len(examples),):
            raise ValueError(f"One label per example: {len(examples)} examples but labels of shape "
                             f"{tuple(labels.shape)}.")
        self.examples = examples.detach().clone()
        self.labels = labels.detach().clone().long()

    def __len__(self) -> int:
        return len(self.examples)

    def __repr__(self) -> str:
        return f"AdversarialPool(size={len(self)}, shape={tuple(self.examples.shape[1:])})"

    def n_replace(self, fraction: float) -> int:
        """How many slots :meth:`replace` changes for ``fraction``: ``round(fraction · size)``."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction is a share of the pool in [0, 1], got {fraction}.")
        return int(round(fraction * len(self)))

    def replace(self, fraction: float, fresh, generator: torch.Generator | None = None) -> torch.Tensor:
        """Overwrite ``round(fraction · size)`` distinct slots, drawn at random, with fresh entries.

        ``fresh`` is ``(examples, labels)`` with at least that many rows (the first ones are used).
        Returns the indices of the replaced slots. The size never changes.
        """
        n = self.n_replace(fraction)
        fx, fy = fresh
        if len(fx) < n or len(fy) < n:
            raise ValueError(f"Replacing {fraction:.0%} of a pool of {len(self)} needs {n} fresh examples, "
                             f"got {len(fx)}.")
        return self.put((fx[:n], fy[:n]), generator)

    def put(self, fresh, generator: torch.Generator | None = None) -> torch.Tensor:
        """Overwrite ``len(fresh examples)`` distinct slots, drawn at random, with all of ``fresh``.

        For a refresh where only some attacks gave usable examples: the pool takes as many as there
        are (at most its size) and keeps its size. Returns the indices of the replaced slots.
        """
        fx, fy = fresh
        if len(fx) != len(fy):
            raise ValueError(f"One label per fresh example: {len(fx)} examples, {len(fy)} labels.")
        if len(fx) > len(self):
            raise ValueError(f"{len(fx)} fresh examples do not fit a pool of {len(self)}.")
        if tuple(fx.shape[1:]) != tuple(self.examples.shape[1:]):
            raise ValueError(f"Fresh examples of shape {tuple(fx.shape[1:])} do not fit a pool of "
                             f"{tuple(self.examples.shape[1:])}.")
        n = len(fx)
        slots = torch.randperm(len(self), generator=generator)[:n].to(self.examples.device)
        self.examples[slots] = fx.detach().to(self.examples)
        self.labels[slots] = fy.to(self.labels)
        return slots

    def sample(self, k: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``k`` entries drawn uniformly with replacement."""
        if k < 0:
            raise ValueError(f"k must be ≥ 0, got {k}.")
        idx = torch.randint(len(self), (k,), generator=generator).to(self.examples.device)
        return self.examples[idx], self.labels[idx]

    def mix(self, batch_x: torch.Tensor, batch_y: torch.Tensor, k: int,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch with ``k`` pool entries appended (images and their labels travel together)."""
        if tuple(batch_x.shape[1:]) != tuple(self.examples.shape[1:]):
            raise ValueError(f"The batch has examples of shape {tuple(batch_x.shape[1:])}, the pool "
                             f"{tuple(self.examples.shape[1:])}.")
        px, py = self.sample(k, generator)
        return torch.cat([batch_x, px.to(batch_x)]), torch.cat([batch_y, py.to(batch_y.device)])
