"""The compiled CPU renderer's activations in float32 (:mod:`.cppn_cpu` draws float32 genomes
above 96×96 pixels, ImageNet's 224×224, with node values in float32: a SIMD register holds twice
as many of them as in float64, and the activations need shorter series).

Each is written as arithmetic the compiler vectorises, in place on a tile of pixels (numpy's
float32 sin and exp are SIMD loops too, but one call per node over a whole image pays a pass
through memory each time):

- ``sin``: ``x = k·π/2 + r`` with π/2 split in three float32 parts (``_P1`` has 8 bits, ``_P2``
  12, so ``k·_P1`` is exact and ``k·_P2`` nearly so, and the multiply-adds fuse), ``r`` within
  ±π/4; then the Taylor series of sin to r⁹ and of cos to r⁸ (truncation below 2e-9), picked
  and signed by the quadrant ``k mod 4``. A node whose pre-activation can exceed ``SIN_LIMIT``
  (from its weights: every activation lies in [−1, 1], the inputs within ±√2) uses the library
  sin in float64 instead.
- ``e^s`` for s ≤ 0 (``_exp_tile``): ``s = k·ln 2 + r``, ln 2 in two parts, |r| ≤ ln(2)/2, the
  Taylor series of e^r to r⁷ (truncation below 3e-9), times 2^k built from its exponent bits
  (k ≥ −126: ``s`` is held at −87 first, where e^s is already 2^−125.5).
- ``exp(−x²)`` from it, 0 where x² > 87 (below float32's normal range).
- ``2(σ(x) − 0.5) = tanh(x/2) = (1 − e^{−|x|}) / (1 + e^{−|x|})`` with x's sign, |x| held at 20
  (where the quotient is 1 in float32).
- ``clip(x, −3, 3) / 3``.

Each is within 1.2e-7 of the float64 function on float32 inputs (the tests hold them to it), as
accurate as numpy's float32 loops. Every comparison is written so that a NaN falls through it, so
a NaN pre-activation gives a NaN pixel, as in the other renderers. :func:`activate` applies one to
an array (the benchmark's pixel-math floor uses it).
"""
from __future__ import annotations

import math

import numpy as np

try:
    from numba import njit
except ImportError:  # pragma: no cover - numba is a dependency; the tensor renderers still work
    njit = None

TILE = 2048              # pixels per tile in :func:`activate`, as in the renderer in float32
SIN_LIMIT = 8192.0       # |pre-activation| up to which the reduction above is accurate (|k| < 2¹³)

_f = np.float32
_P1 = _f(1.5703125)                                                   # π/2's first 8 bits
_P2 = _f(math.floor((math.pi / 2 - 1.5703125) * 2 ** 23) / 2 ** 23)   # its next 12
_P3 = _f(math.pi / 2 - float(_P1) - float(_P2))                       # the rest, rounded
_TWO_OVER_PI = _f(2 / math.pi)
_LOG2E = _f(1 / math.log(2))
_LN2_HI = _f(0.693359375)                                             # ln 2's first 9 bits
_LN2_LO = _f(math.log(2) - 0.693359375)
_ZERO, _HALF, _ONE, _THREE = _f(0.0), _f(0.5), _f(1.0), _f(3.0)
_S3, _S5, _S7, _S9 = (_f(c) for c in (-1 / 6, 1 / 120, -1 / 5040, 1 / 362880))
_C2, _C4, _C6, _C8 = (_f(c) for c in (-1 / 2, 1 / 24, -1 / 720, 1 / 40320))
_E2, _E3, _E4, _E5, _E6, _E7 = (_f(1 / math.factorial(n)) for n in range(2, 8))
_EXP_LOW = _f(-87.0)     # e^−87 ≈ 1.6e-38: the last exponent 2^k with k ≥ −126 (a normal float)
_SIGMOID_HIGH = _f(20.0)  # tanh(10) rounds to 1 in float32


def _sin_tile(v, t):  # pragma: no cover - numba
    """v[:t] = sin(v[:t]) for |v| ≤ SIN_LIMIT (see the module docstring)."""
    for i in range(t):
        x = v[i]
        k = np.floor(x * _TWO_OVER_PI + _HALF)
        r = ((x - k * _P1) - k * _P2) - k * _P3
        r2 = r * r
        s = r + r * r2 * (_S3 + r2 * (_S5 + r2 * (_S7 + r2 * _S9)))
        c = _ONE + r2 * (_C2 + r2 * (_C4 + r2 * (_C6 + r2 * _C8)))
        q = k - _f(4.0) * np.floor(k * _f(0.25))                   # quadrant 0..3
        y = c if (q == _ONE or q == _THREE) else s
        v[i] = -y if q >= _f(2.0) else y


def _sin_library_tile(v, t):  # pragma: no cover - numba
    for i in range(t):
        v[i] = _f(math.sin(np.float64(v[i])))


def _exp_tile(e, bits, scale, t):  # pragma: no cover - numba
    """e[:t] = exp(e[:t]) for e ≤ 0, held at −87 below (callers zero what must be 0). ``bits``
    (int32) and ``scale`` (its float32 view) are scratch: 2^k is written as its exponent bits."""
    for i in range(t):
        s = e[i]
        s = _EXP_LOW if s < _EXP_LOW else s
        k = np.floor(s * _LOG2E + _HALF)
        r = (s - k * _LN2_HI) - k * _LN2_LO
        e[i] = _ONE + r * (_ONE + r * (_E2 + r * (_E3 + r * (_E4 + r * (_E5 + r * (_E6 + r * _E7))))))
        bits[i] = (np.int32(k) + np.int32(127)) << np.int32(23)
    for i in range(t):
        e[i] *= scale[i]


def _gaussian_tile(v, e, bits, scale, t):  # pragma: no cover - numba
    """v[:t] = exp(−v²); 0 where v² > 87."""
    for i in range(t):
        e[i] = -(v[i] * v[i])
    _exp_tile(e, bits, scale, t)
    for i in range(t):
        x = v[i]
        v[i] = _ZERO if x * x > -_EXP_LOW else e[i]


def _sigmoid_tile(v, e, bits, scale, t):  # pragma: no cover - numba
    """v[:t] = 2(σ(v) − 0.5) = (1 − e^−|v|) / (1 + e^−|v|) with v's sign, |v| held at 20."""
    for i in range(t):
        a = abs(v[i])
        e[i] = -(_SIGMOID_HIGH if a > _SIGMOID_HIGH else a)
    _exp_tile(e, bits, scale, t)
    for i in range(t):
        y = (_ONE - e[i]) / (_ONE + e[i])
        v[i] = -y if v[i] < _ZERO else y


def _linear_tile(v, t):  # pragma: no cover - numba
    """v[:t] = clip(v, −3, 3) / 3."""
    for i in range(t):
        y = v[i]
        y = -_THREE if y < -_THREE else y
        y = _THREE if y > _THREE else y
        v[i] = y * _f(1.0 / 3.0)


def _activate(a, v, e, bits, scale, t):  # pragma: no cover - numba
    """Activation ``a`` (0 sin, 1 sigmoid, 2 Gaussian, 3 linear, 4 sin beyond SIN_LIMIT) in place."""
    if a == 0:
        _sin_tile(v, t)
    elif a == 1:
        _sigmoid_tile(v, e, bits, scale, t)
    elif a == 2:
        _gaussian_tile(v, e, bits, scale, t)
    elif a == 3:
        _linear_tile(v, t)
    else:
        _sin_library_tile(v, t)


def _apply(a, x):  # pragma: no cover - numba
    """Activation ``a`` (as in :func:`_activate`, 0–3) in place on a C-contiguous float32 array."""
    flat = x.reshape(-1)
    e = np.empty(TILE, np.float32)
    bits = np.empty(TILE, np.int32)
    scale = bits.view(np.float32)
    for start in range(0, flat.size, TILE):
        t = min(TILE, flat.size - start)
        _activate(a, flat[start:start + t], e, bits, scale, t)


if njit is not None:
    # 'contract' lets the compiler fuse a multiply and an add into one FMA (one rounding fewer).
    _jit = njit(cache=True, boundscheck=False, fastmath={"contract"}, error_model="numpy")
    (_sin_tile, _sin_library_tile, _exp_tile, _gaussian_tile, _sigmoid_tile, _linear_tile, _activate) = (
        _jit(f) for f in (_sin_tile, _sin_library_tile, _exp_tile, _gaussian_tile, _sigmoid_tile, _linear_tile,
                          _activate))
    _apply_compiled = _jit(_apply)
else:  # pragma: no cover
    _apply_compiled = None


def activate(a: int, x: np.ndarray) -> np.ndarray:
    """Activation ``a`` (0 sin, 1 2(σ − 0.5), 2 exp(−x²), 3 clip(x, −3, 3)/3) in place on ``x``, a
    C-contiguous float32 array with |x| ≤ SIN_LIMIT for sin, as the renderer applies it; returns x."""
    if x.dtype != np.float32 or not x.flags.c_contiguous:
        raise ValueError(f"activate needs a C-contiguous float32 array, got {x.dtype} "
                         f"({'contiguous' if x.flags.c_contiguous else 'strided'}): pass np.ascontiguousarray(x, np.float32).")
    if a not in (0, 1, 2, 3):
        raise ValueError(f"activation must be 0 (sin), 1 (sigmoid), 2 (Gaussian) or 3 (linear), got {a!r}.")
    _apply_compiled(int(a), x)
    return x
