"""The archive's insertion compiled for the CPU (numba): every cell takes its best offspring if
strictly better, in one pass, where the tensor version (:meth:`course.evolution.Archive.update`)
costs about ten small tensor operations (max, compare, nonzero, two gathers, a scatter, a where),
each with its dispatch cost, which for a small classifier is a large share of a generation.

The same semantics to the bit: per cell the first offspring of highest probability (``max``'s
choice on ties), a NaN anywhere in a cell's column making that cell's best NaN and so never
better (as ``torch.max`` propagates NaN), strict improvement only, the winners' genomes copied
into the archive's rows and the scores returned as a new array (the old one is kept in the run's
history). It applies to a tensor of genomes, float32 or float64, with float32 probabilities and
scores on the CPU (:func:`applies`); anything else (a dict of CPPN tensors, a GPU) takes the
tensor version.
"""
from __future__ import annotations

import numpy as np
import torch

try:
    from numba import njit
except ImportError:  # pragma: no cover - numba is a dependency; the tensor version still works
    njit = None


def _insert(probs, scores, store, children, new_scores, better):  # pragma: no cover - numba
    """``store[c] = children[winner]`` for every cell ``c`` whose best probability beats
    ``scores[c]``; ``new_scores``, ``better`` written; returns how many cells changed."""
    B, C = probs.shape
    changed = 0
    for c in range(C):
        best, who, nan = probs[0, c], 0, probs[0, c] != probs[0, c]
        for b in range(1, B):
            p = probs[b, c]
            if p > best:
                best, who = p, b
            elif p != p:
                nan = True
        if not nan and best > scores[c]:
            src, dst = children[who], store[c]
            for j in range(dst.size):  # (an element loop: numba's slice assignment is 3-4× slower)
                dst[j] = src[j]
            new_scores[c], better[c] = best, True
            changed += 1
        else:
            new_scores[c], better[c] = scores[c], False
    return changed


_insert_c = njit(cache=True, nogil=True, boundscheck=False)(_insert) if njit else None


def binds(store, children) -> bool:
    """True when an :class:`Inserter` can take this archive's ``store`` and these ``children``:
    numba, tensors on the CPU, float32 or float64 of one dtype and row shape, contiguous, no gradients."""
    return (_insert_c is not None and isinstance(store, torch.Tensor) and isinstance(children, torch.Tensor)
            and store.is_cpu and children.is_cpu
            and store.dtype == children.dtype and store.dtype in (torch.float32, torch.float64)
            and store.shape[1:] == children.shape[1:] and store.is_contiguous() and children.is_contiguous()
            and not children.requires_grad)


def takes(probs: torch.Tensor, scores: torch.Tensor) -> bool:
    """True when the compiled insertion can take these probabilities and scores: float32 on the CPU,
    no gradients."""
    return (probs.dtype == torch.float32 and probs.is_cpu and not probs.requires_grad
            and scores.dtype == torch.float32 and scores.is_cpu)


def applies(store, children, probs: torch.Tensor, scores: torch.Tensor) -> bool:
    """True when :func:`insert_` can take these (:func:`binds` and :func:`takes`)."""
    return binds(store, children) and takes(probs, scores)


class Inserter:
    """:func:`insert_` for one (store, children) pair, again and again: the arrays' views made once.

    :meth:`course.evolution.Archive.update` keeps one while it is handed the same children tensor
    (map_elites' children memory, every generation); :attr:`children` and :meth:`holds` say which.
    """

    def __init__(self, store: torch.Tensor, children: torch.Tensor):
        self.children, self._shape, self._ptr = children, children.shape, children.data_ptr()
        self.probs_shape = (children.shape[0], store.shape[0])   # (offspring, cells) it takes
        # (numpy's reshape of the .numpy() views: a fraction of a torch view's cost)
        self._store = store.numpy().reshape(store.shape[0], -1)
        self._rows = children.numpy().reshape(children.shape[0], -1)

    def holds(self, children: torch.Tensor) -> bool:
        """Whether ``children`` is the very tensor bound here, over the same memory and shape."""
        return children is self.children and children.shape == self._shape and children.data_ptr() == self._ptr

    def __call__(self, probs: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        n_cells = self._store.shape[0]
        new_scores = np.empty(n_cells, np.float32)
        better = np.empty(n_cells, np.bool_)
        changed = _insert_c(np.ascontiguousarray(probs.numpy()), scores.numpy(), self._store, self._rows,
                            new_scores, better)
        return torch.from_numpy(new_scores), torch.from_numpy(better), int(changed)


def insert_(store: torch.Tensor, children: torch.Tensor, probs: torch.Tensor,
            scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Insert scored ``children`` into ``store`` in place (see the module docstring). Returns
    (new scores, the (cells,) bool mask of cells that changed, how many changed)."""
    return Inserter(store, children)(probs, scores)
