"""Polynomial mutation compiled for the CPU (numba): the same distribution as the tensor version in
:mod:`course.evolution.direct`, in four passes over the mutating genes and no tensor temporaries.

The tensor version spends most of its time on the CPU in torch's random generator and a dozen
elementwise passes, each with its dispatch cost, over the ~10% of genes that mutate. Here:

1. **Draws** (compiled). One 64-bit random number per mutating gene, from a counter-based
   generator: ``z_i = mix(seed + i·γ)``, SplitMix64's output function (Steele, Lea & Flood 2014;
   ``γ`` its golden-ratio increment), whose stream passes BigCrush. ``seed`` is ONE 64-bit integer
   drawn from the caller's ``torch.Generator``, so a seeded run stays reproducible and the torch
   stream moves on by one number per mutation. The top 24 bits give ``u = m·2⁻²⁴`` (float32's grid,
   as ``torch.rand``), the low 40 bits ``W = (r + 1)·2⁻⁴⁰ ∈ (0, 1]``, independent of u.
2. **Logarithms** (numpy's SIMD float32 ``log`` over all draws at once): the gap to the next
   mutating gene is geometric, ``1 + ⌊log W / log(1 − rate)⌋``; W ≥ 2⁻⁴⁰ caps a gap at 264 genes
   at the paper's rate (a tail of probability 2⁻⁴⁰ ≈ 1e-12).
3. **Steps** (compiled, vectorised): the polynomial step from u, ``δ = ∓(1 − (2v)^(1/(η+1)))`` with
   v = min(u, 1 − u), negative for u < 0.5, times ``high − low``. When η + 1 is a power of two (the
   paper's η = 15: the 16th root) the power is that many square roots, which are exact IEEE
   operations and vectorise; otherwise ``pow``.
4. **Apply** (compiled): walk the gaps, add each step to its gene and clip to [low, high].

So the result differs from the tensor version's (another random stream) but not in distribution:
the tests check the same known-answer statistics on both. Apple's MPS, CUDA, half precision and
a missing numba take the tensor version (:func:`available` says which applies).
"""
from __future__ import annotations

import functools
import math
import threading

import numpy as np
import torch

try:
    from numba import njit
except ImportError:  # pragma: no cover - numba is a dependency; the tensor version still works
    njit = None

_GAMMA = 0x9E3779B97F4A7C15   # SplitMix64's increment (2⁶⁴ / golden ratio, odd)
_MASK64 = (1 << 64) - 1
_G, _M1, _M2 = np.uint64(_GAMMA), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S16, _S27, _S30, _S31, _S40 = (np.uint64(s) for s in (16, 27, 30, 31, 40))
_LOW16, _LOW24 = np.uint64((1 << 16) - 1), np.uint64((1 << 24) - 1)


def _mix(seed, z):  # pragma: no cover - numba
    """Pass 1a: ``z[i] = mix(seed + i·γ)``, SplitMix64's output function."""
    for i in range(z.size):
        x = seed + np.uint64(i) * _G
        x = (x ^ (x >> _S30)) * _M1
        x = (x ^ (x >> _S27)) * _M2
        z[i] = x ^ (x >> _S31)


def _split(z, w, u):  # pragma: no cover - numba
    """Pass 1b: ``u[i]`` from the top 24 bits of ``z[i]``, ``w[i] = W`` from the low 40.
    (Two passes are faster than one here; int32 conversions vectorise where uint64 → float does not.)"""
    for i in range(z.size):
        x = z[i]
        u[i] = np.float32(np.int32(x >> _S40)) * np.float32(2.0 ** -24)
        w[i] = (np.float32(np.int32((x >> _S16) & _LOW24)) * np.float32(2.0 ** -24)
                + np.float32(np.int32(x & _LOW16) + 1) * np.float32(2.0 ** -40))


def _steps(u, roots, exponent, span, out):  # pragma: no cover - numba
    """Pass 3: ``out[i] = δ(u[i]) · span`` in ``out``'s precision. ``roots`` ≥ 0: the power
    1/(η+1) is that many square roots; −1: ``pow(2v, exponent)``. Each loop is one simple
    vectorisable pass over the draws (the paper's η = 15, four roots, in one)."""
    one, half, two = out.dtype.type(1.0), out.dtype.type(0.5), out.dtype.type(2.0)
    if roots == 4:
        for i in range(u.size):
            x = out.dtype.type(u[i])
            v = np.sqrt(np.sqrt(np.sqrt(np.sqrt(min(x, one - x) * two))))
            step = (one - v) * span
            out[i] = -step if x < half else step
        return
    for i in range(u.size):
        x = out.dtype.type(u[i])
        out[i] = min(x, one - x) * two
    if roots >= 0:
        for _ in range(roots):
            for i in range(out.size):
                out[i] = np.sqrt(out[i])
    else:
        for i in range(out.size):
            out[i] = out[i] ** exponent
    for i in range(out.size):
        step = (one - out[i]) * span
        out[i] = -step if u[i] < half else step


def _gaps(log_w, inv_log_q, gaps):  # pragma: no cover - numba
    """Pass 3b: the geometric gaps ``1 + ⌊log W · (1 / log q)⌋`` (≥ 1: truncation is the floor)."""
    for i in range(log_w.size):
        gaps[i] = 1 + np.int64(np.float64(log_w[i]) * inv_log_q)


def _apply(flat, gaps, steps, pos, low, high):  # pragma: no cover - numba
    """Pass 4: from position ``pos``, walk the gaps; add each step and clip. Returns the last
    position reached (≥ ``flat.size`` once past the end)."""
    n = flat.size
    for i in range(gaps.size):
        pos += gaps[i]
        if pos >= n:
            return pos
        flat[pos] = min(max(flat[pos] + steps[i], low), high)
    return pos


if njit:
    _mix_c = njit(cache=True, nogil=True, boundscheck=False)(_mix)
    _split_c = njit(cache=True, nogil=True, boundscheck=False)(_split)
    _steps_c = njit(cache=True, nogil=True, boundscheck=False)(_steps)
    _gaps_c = njit(cache=True, nogil=True, boundscheck=False)(_gaps)
    _apply_c = njit(cache=True, nogil=True, boundscheck=False)(_apply)

    @njit(cache=True, nogil=True)
    def _uniforms_c(seed, z, w, u):  # pragma: no cover - numba
        """Passes 1a and 1b in one call."""
        _mix_c(seed, z)
        _split_c(z, w, u)

    @njit(cache=True, nogil=True, boundscheck=False)
    def _copy_rows_and_draw_c(store, index, rows, seed, z, w, u):  # pragma: no cover - numba
        """``rows[i] = store[index[i]]`` (the parents), then passes 1a and 1b: one call. Returns
        False, having done nothing, when an index is out of range."""
        n = store.shape[0]
        for i in range(index.size):
            if index[i] < 0 or index[i] >= n:
                return False
        for i in range(index.size):
            rows[i, :] = store[index[i], :]
        _mix_c(seed, z)
        _split_c(z, w, u)
        return True

    @njit(cache=True, nogil=True)
    def _walk_c(flat, log_w, u, gaps, steps, roots, exponent, span, pos, inv_log_q, low, high):  # pragma: no cover
        """Passes 3, 3b and 4 in one call (each Python-to-compiled call costs a few µs)."""
        _gaps_c(log_w, inv_log_q, gaps)
        _steps_c(u, roots, exponent, span, steps)
        return _apply_c(flat, gaps, steps, pos, low, high)
else:  # pragma: no cover
    _mix_c = _split_c = _steps_c = _gaps_c = _apply_c = _uniforms_c = _walk_c = _copy_rows_and_draw_c = None

_DTYPES = (torch.float32, torch.float64)


def available(x: torch.Tensor) -> bool:
    """True when :func:`polynomial_mutation_` can take ``x``: numba present, a float32 or float64
    tensor on the CPU that needs no gradient."""
    return _mix_c is not None and x.is_cpu and x.dtype in _DTYPES and not x.requires_grad


@functools.lru_cache(maxsize=64)
def _roots(eta: float) -> int:
    """How many square roots make the power 1/(η+1), or −1 when η + 1 is not a power of two."""
    m = round(math.log2(eta + 1.0)) if eta + 1.0 >= 1.0 else -1
    return m if m >= 0 and 2.0 ** m == eta + 1.0 else -1


def draw_seed(generator: torch.Generator | None) -> int:
    """One 64-bit seed from ``generator`` (torch's global generator when None), as an unsigned int."""
    s = torch.randint(-(1 << 63), (1 << 63) - 1, (), generator=generator, dtype=torch.int64)
    return int(s) & _MASK64


def _draw_into(seed: int, start: int, z: np.ndarray, w: np.ndarray, u: np.ndarray) -> None:
    """Draws ``start .. start + len(z)`` of the stream into the buffers: ``w`` = log W, ``u``; ``z`` is spent."""
    _uniforms_c(np.uint64((seed + start * _GAMMA) & _MASK64), z, w, u)
    np.log(w, out=w)


def _round(seed: int, start: int, k: int, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Draws ``start .. start + k`` of the stream: (the int64 gaps, the float32 u's)."""
    z, w, u = np.empty(k, np.uint64), np.empty(k, np.float32), np.empty(k, np.float32)
    _draw_into(seed, start, z, w, u)
    gaps = z.view(np.int64)            # z is spent: its memory holds the gaps
    _gaps_c(w, _inv_log_q(rate), gaps)
    return gaps, u


def _inv_log_q(rate: float) -> float:
    return 0.0 if rate >= 1.0 else 1.0 / math.log1p(-rate)   # rate 1: every gap is 1


# The draws' buffers, kept between calls of one size (a generation's mutation is called thousands
# of times with the same size; fresh arrays cost a few µs each), per thread (the compiled passes
# release the GIL), and only up to _KEEP_DRAWS draws (beyond, allocation is a small share).
_KEEP_DRAWS = 1 << 20
_buffers_of_thread = threading.local()


def _buffers(k: int, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(z uint64, w float32, u float32, steps ``dtype``) of ``k`` draws each."""
    key = (k, np.dtype(dtype))
    kept = getattr(_buffers_of_thread, "kept", None)
    if kept is not None and kept[0] == key:
        return kept[1]
    buffers = (np.empty(k, np.uint64), np.empty(k, np.float32), np.empty(k, np.float32), np.empty(k, dtype))
    if k <= _KEEP_DRAWS:
        _buffers_of_thread.kept = (key, buffers)
    return buffers


def polynomial_mutation_(flat: np.ndarray, rate: float, eta: float, seed: int, per_round: int,
                         low: float, high: float, parents: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Mutate the contiguous 1-D float32/float64 array ``flat`` in place (arguments checked by the
    caller; ``0 < rate ≤ 1``): each gene with probability ``rate``, by a polynomial step, clipped.
    ``per_round``: draws per pass (a second round follows in the rare case they fall short).

    ``parents = (store, index)``: first fill ``flat``, seen as ``len(index)`` rows, with the rows
    ``store[index]`` (2-D, C-contiguous, ``flat``'s dtype; int64 indices), in the same compiled call
    as the first draws: the copy a generation makes of its parents, then their mutation."""
    dt = flat.dtype.type
    roots, inv_log_q = _roots(eta), _inv_log_q(rate)
    z, w, u, steps = _buffers(per_round, flat.dtype)
    pos, start = -1, 0
    if parents is not None:
        store, index = parents
        if not _copy_rows_and_draw_c(store, index, flat.reshape(index.size, -1), np.uint64(seed & _MASK64), z, w, u):
            raise IndexError(f"parent indices must lie in [0, {store.shape[0]}), got {index.min()} .. {index.max()}.")
        np.log(w, out=w)
        pos = _walk_c(flat, w, u, z.view(np.int64), steps, roots, dt(1.0 / (eta + 1.0)), dt(high - low), pos,
                      inv_log_q, dt(low), dt(high))
        start += per_round
    while pos < flat.size - 1:   # almost always a single round (the draws of _round, then the walk)
        _draw_into(seed, start, z, w, u)
        pos = _walk_c(flat, w, u, z.view(np.int64), steps, roots, dt(1.0 / (eta + 1.0)), dt(high - low), pos,
                      inv_log_q, dt(low), dt(high))
        start += per_round
    return flat


def draws(n: int, rate: float, seed: int, per_round: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions and u's that :func:`polynomial_mutation_` uses for ``n`` genes (for the
    tests): (sorted int64 positions, float32 u), as :func:`course.evolution.direct.mutation_draws`."""
    positions, us, pos, start = [], [], -1, 0
    while pos < n - 1:
        gaps, u = _round(seed, start, per_round, rate)
        p = pos + np.cumsum(gaps)
        positions.append(p), us.append(u)
        pos, start = int(p[-1]), start + per_round
    p, u = np.concatenate(positions), np.concatenate(us)
    keep = p < n
    return torch.from_numpy(p[keep]), torch.from_numpy(u[keep])
