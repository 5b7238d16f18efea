"""Polynomial mutation compiled for the CPU (numba): the same distribution as the tensor version in
:mod:`course.evolution.direct`, in three passes over the mutating genes and no tensor temporaries.

The tensor version spends most of its time on the CPU in torch's random generator and a dozen
elementwise passes, each with its dispatch cost, over the ~10% of genes that mutate. Here:

1. **Draws and steps** (compiled, one vectorised loop). One 64-bit random number per mutating
   gene, from a counter-based generator: ``z_i = mix(seed + i·γ)``, SplitMix64's output function
   (Steele, Lea & Flood 2014; ``γ`` its golden-ratio increment), whose stream passes BigCrush.
   ``seed`` is ONE 64-bit integer drawn from the caller's ``torch.Generator``, so a seeded run stays
   reproducible and the torch stream moves on by one number per mutation. The top 24 bits give
   ``u = m·2⁻²⁴`` (float32's grid, as ``torch.rand``), the low 40 bits ``W = (r + 1)·2⁻⁴⁰ ∈ (0, 1]``,
   independent of u. From u at once the polynomial step, ``δ = ∓(1 − (2v)^(1/(η+1)))`` with
   v = min(u, 1 − u), negative for u < 0.5, times ``high − low``. When η + 1 is a power of two (the
   paper's η = 15: the 16th root) the power is that many square roots, which are exact IEEE
   operations and vectorise; otherwise ``pow``. Only W and the step are stored.
2. **Logarithms** (numpy's SIMD float32 ``log`` over all draws at once): the gap to the next
   mutating gene is geometric, ``1 + ⌊log W / log(1 − rate)⌋``; W ≥ 2⁻⁴⁰ caps a gap at 264 genes
   at the paper's rate (a tail of probability 2⁻⁴⁰ ≈ 1e-12).
3. **Walk** (compiled): the gaps from the logarithms, and at each gene its step added and the sum
   clipped to [low, high].

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


def _mix64(x):  # pragma: no cover - numba
    """SplitMix64's output function of the 64-bit counter ``x``."""
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


def _split64(x):  # pragma: no cover - numba
    """(u, W) from the 64 bits ``x``: u from the top 24, W from the low 40 (float32 both)."""
    u = np.float32(np.int32(x >> _S40)) * np.float32(2.0 ** -24)
    w = (np.float32(np.int32((x >> _S16) & _LOW24)) * np.float32(2.0 ** -24)
         + np.float32(np.int32(x & _LOW16) + 1) * np.float32(2.0 ** -40))
    return u, w


def _step(x, roots, exponent, span, one, half, two):  # pragma: no cover - numba
    """The polynomial step of ``x`` (u in the genes' precision) times ``span``: ``roots`` ≥ 0, the
    power 1/(η+1) is that many square roots; −1, ``pow(2v, exponent)``. The paper's η = 15 (four
    roots) is written out: the draws' loop then vectorises."""
    v = min(x, one - x) * two
    if roots == 4:
        v = np.sqrt(np.sqrt(np.sqrt(np.sqrt(v))))
    elif roots >= 0:
        for _ in range(roots):
            v = np.sqrt(v)
    else:
        v = v ** exponent
    step = (one - v) * span
    return -step if x < half else step


def _draw(seed, roots, exponent, span, steps, w):  # pragma: no cover - numba
    """Pass 1: for each draw i, the counter ``seed + i·γ`` mixed, split into u and
    W; ``w[i] = W`` and ``steps[i]`` = u's step, in ``steps``' precision. (The counter is added up,
    ``+ γ`` a step: the same integers modulo 2⁶⁴ as multiplying out, and the loop vectorises.)"""
    dt = steps.dtype.type
    one, half, two = dt(1.0), dt(0.5), dt(2.0)
    counter = seed
    for i in range(w.size):
        u, w[i] = _split64(_mix64(counter))
        counter += _G
        steps[i] = _step(dt(u), roots, exponent, span, one, half, two)


def _walk(flat, log_w, steps, pos, inv_log_q, low, high):  # pragma: no cover - numba
    """Pass 3: from position ``pos``, step by the geometric gaps
    ``1 + ⌊log W · (1 / log q)⌋`` (≥ 1: truncation is the floor); add each step and clip. Returns
    the last position reached (≥ ``flat.size`` once past the end)."""
    n = flat.size
    for i in range(log_w.size):
        pos += 1 + np.int64(np.float64(log_w[i]) * inv_log_q)
        if pos >= n:
            return pos
        flat[pos] = min(max(flat[pos] + steps[i], low), high)
    return pos


if njit:
    _fast = dict(cache=True, nogil=True, boundscheck=False)
    _mix64 = njit(inline="always", **_fast)(_mix64)
    _split64 = njit(inline="always", **_fast)(_split64)
    _step = njit(inline="always", **_fast)(_step)
    _draw_c = njit(**_fast)(_draw)
    _walk_c = njit(**_fast)(_walk)

    @njit(**_fast)
    def _copy_rows_and_draw_c(store, index, rows, seed, roots, exponent, span, steps, w):  # pragma: no cover
        """``rows[i] = store[index[i]]`` (the parents), then :func:`_draw`: one call. Returns False,
        having done nothing, when an index is out of range. (An element loop for the copy: numba's
        slice assignment ``rows[i, :] = store[j, :]`` takes 3-4× as long.)"""
        n, width = store.shape[0], rows.shape[1]
        for i in range(index.size):
            if index[i] < 0 or index[i] >= n:
                return False
        for i in range(index.size):
            src, dst = store[index[i]], rows[i]
            for j in range(width):
                dst[j] = src[j]
        _draw_c(seed, roots, exponent, span, steps, w)
        return True

    # The raw stream, for the tests (:func:`draws`): the same scalar functions as the mutation's.
    @njit(**_fast)
    def _mix_c(seed, z):  # pragma: no cover - numba
        """``z[i] = mix(seed + i·γ)``."""
        counter = seed
        for i in range(z.size):
            z[i] = _mix64(counter)
            counter += _G

    @njit(**_fast)
    def _uniforms_c(seed, u, w):  # pragma: no cover - numba
        """``u[i], w[i]`` of draw i (W itself, not its logarithm)."""
        counter = seed
        for i in range(u.size):
            u[i], w[i] = _split64(_mix64(counter))
            counter += _G
else:  # pragma: no cover
    _draw_c = _walk_c = _copy_rows_and_draw_c = _mix_c = _uniforms_c = None

_DTYPES = (torch.float32, torch.float64)


def available(x: torch.Tensor) -> bool:
    """True when :func:`polynomial_mutation_` can take ``x``: numba present, a float32 or float64
    tensor on the CPU that needs no gradient."""
    return _walk_c is not None and x.is_cpu and x.dtype in _DTYPES and not x.requires_grad


@functools.lru_cache(maxsize=64)
def _roots(eta: float) -> int:
    """How many square roots make the power 1/(η+1), or −1 when η + 1 is not a power of two."""
    m = round(math.log2(eta + 1.0)) if eta + 1.0 >= 1.0 else -1
    return m if m >= 0 and 2.0 ** m == eta + 1.0 else -1


def draw_seed(generator: torch.Generator | None) -> int:
    """One 64-bit seed from ``generator`` (torch's global generator when None), as an unsigned int."""
    s = torch.randint(-(1 << 63), (1 << 63) - 1, (), generator=generator, dtype=torch.int64)
    return int(s) & _MASK64


def _start(seed: int, start: int) -> np.uint64:
    """The counter of draw ``start`` of the stream ``seed``."""
    return np.uint64((seed + start * _GAMMA) & _MASK64)


def _round(seed: int, start: int, k: int, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Draws ``start .. start + k`` of the stream: (the int64 gaps, the float32 u's), as the
    mutation's passes make them (numpy's float32 log; the gap's formula of :func:`_walk`)."""
    u, w = np.empty(k, np.float32), np.empty(k, np.float32)
    _uniforms_c(_start(seed, start), u, w)
    return 1 + (np.log(w).astype(np.float64) * _inv_log_q(rate)).astype(np.int64), u


def _inv_log_q(rate: float) -> float:
    return 0.0 if rate >= 1.0 else 1.0 / math.log1p(-rate)   # rate 1: every gap is 1


# The draws' buffers, kept between calls of one size (a generation's mutation is called thousands
# of times with the same size; fresh arrays cost a few µs each), per thread (the compiled passes
# release the GIL), and only up to _KEEP_DRAWS draws (beyond, allocation is a small share).
_KEEP_DRAWS = 1 << 20
_buffers_of_thread = threading.local()


def _buffers(k: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(w float32, steps ``dtype``) of ``k`` draws each."""
    key = (k, np.dtype(dtype))
    kept = getattr(_buffers_of_thread, "kept", None)
    if kept is not None and kept[0] == key:
        return kept[1]
    buffers = (np.empty(k, np.float32), np.empty(k, dtype))
    if k <= _KEEP_DRAWS:
        _buffers_of_thread.kept = (key, buffers)
    return buffers


class Mutation:
    """Polynomial mutation of one contiguous 1-D float32/float64 array ``flat``, in place, with its
    parameters (η, the clip range) and the views and constants it needs made once: for a caller
    that mutates the same memory again and again (map_elites' children, through
    :meth:`course.evolution.direct.DirectEncoding.bind_offspring`), where making them anew each
    generation cost as much as the compiled passes themselves. :func:`polynomial_mutation_` makes
    one per call. ``rows``: the number of rows ``flat`` holds when it is to be filled with parents.
    ``own_buffers``: the draws' scratch arrays are this object's, kept with the constants of the last
    rate (for one long-lived user); otherwise the thread's shared ones, looked up per call.
    """

    def __init__(self, flat: np.ndarray, eta: float, low: float, high: float, rows: int | None = None,
                 own_buffers: bool = False):
        dt = flat.dtype.type
        self.flat, self.rows = flat, None if rows is None else flat.reshape(rows, -1)
        self._roots, self._exponent = _roots(eta), dt(1.0 / (eta + 1.0))
        self._span, self._low, self._high = dt(high - low), dt(low), dt(high)
        self._own, self._key, self._bound = own_buffers, None, None

    def _scratch(self, rate: float, per_round: int) -> tuple[np.ndarray, np.ndarray, float]:
        """(w, steps, 1 / log(1 − rate)) for this rate and round size."""
        if not self._own:
            return (*_buffers(per_round, self.flat.dtype), _inv_log_q(rate))
        if self._key != (rate, per_round):
            self._key = (rate, per_round)
            self._bound = (np.empty(per_round, np.float32), np.empty(per_round, self.flat.dtype), _inv_log_q(rate))
        return self._bound

    def __call__(self, rate: float, seed: int, per_round: int, store: np.ndarray | None = None,
                 index: np.ndarray | None = None) -> np.ndarray:
        """Mutate ``flat`` (``0 < rate ≤ 1``; arguments checked by the caller), drawing from
        ``seed``, ``per_round`` draws a pass (a second round follows in the rare case they fall
        short). ``store``, ``index``: first fill ``flat``, seen as ``len(index)`` rows, with the rows
        ``store[index]`` (2-D, C-contiguous, ``flat``'s dtype; int64 indices), in the same compiled
        call as the first draws: the copy a generation makes of its parents, then their mutation."""
        flat, roots, exponent, span = self.flat, self._roots, self._exponent, self._span
        w, steps, inv_log_q = self._scratch(rate, per_round)
        pos, start = -1, 0
        if store is not None:
            if not _copy_rows_and_draw_c(store, index, self.rows, _start(seed, 0), roots, exponent, span, steps, w):
                raise IndexError(f"parent indices must lie in [0, {store.shape[0]}), got {index.min()} .. {index.max()}.")
            np.log(w, out=w)
            pos = _walk_c(flat, w, steps, pos, inv_log_q, self._low, self._high)
            start = per_round
        while pos < flat.size - 1:   # almost always a single round
            _draw_c(_start(seed, start), roots, exponent, span, steps, w)
            np.log(w, out=w)
            pos = _walk_c(flat, w, steps, pos, inv_log_q, self._low, self._high)
            start += per_round
        return flat


def polynomial_mutation_(flat: np.ndarray, rate: float, eta: float, seed: int, per_round: int,
                         low: float, high: float, parents: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Mutate the contiguous 1-D float32/float64 array ``flat`` in place (arguments checked by the
    caller; ``0 < rate ≤ 1``): each gene with probability ``rate``, by a polynomial step, clipped.
    ``per_round``: draws per pass. ``parents = (store, index)``: first fill ``flat`` with the rows
    ``store[index]`` (see :class:`Mutation`, which this makes and calls once)."""
    if parents is None:
        return Mutation(flat, eta, low, high)(rate, seed, per_round)
    store, index = parents
    return Mutation(flat, eta, low, high, rows=index.size)(rate, seed, per_round, store, index)


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
