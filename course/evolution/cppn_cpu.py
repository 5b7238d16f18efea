"""The CPPN renderer compiled for the CPU (numba): each genome drawn node by node, over tiles of
pixels, in ONE compiled call for the whole population.

The batched tensor renderer in :mod:`course.evolution.cppn` pays per step for dense terms (every
earlier node, connected or not), gathers and a dispatch per activation group; the per-genome numpy
one pays a Python-level call per connection and per node. Here each node is two tight loops over
a tile of pixels: its own connections only (a multiply, then a multiply-add per further source),
then its activation. Node values stay in a small block that fits the cache, in float64 (the CPU
default up to 96×96 pixels: MNIST's lessons) or in float32 (above: ImageNet's 224×224), as the
inputs' dtype says. The loop runs over tiles, then genomes, each genome's plan made first.

The activations are written as arithmetic the compiler vectorises (numba's ``math.sin`` and
``math.exp`` are scalar library calls, several nanoseconds each); in float32 they are
:mod:`.cppn_float32`'s, in float64 these:

- ``sin``: Cody–Waite reduction by π/2 (fdlibm's 33-bit split, exact for |x| < 2²⁰·π/2), then the
  Taylor series of sin and cos on [−π/4, π/4] to x¹³ / x¹⁴ (error below 1e-12), picked by quadrant.
  A node whose pre-activation can exceed ``_SIN_LIMIT`` (from its weights: every activation lies
  in [−1, 1], the inputs within ±√2) uses the library ``sin`` instead.
- ``exp(−x²)`` and ``2(σ(x) − 0.5) = (1 − e^{−|x|}) / (1 + e^{−|x|})`` (with x's sign): ``e^s``
  for s ≤ 0 as the Taylor series of ``e^{s/2^m}`` (|s/2^m| ≤ 0.7) squared m times; below float32's
  range the result is 0 (Gaussian) or ±1 (sigmoid), as float32 rounds it anyway.
- ``clip(x, −3, 3) / 3``.

Each pixel is then ``min(|output|, 1)`` rounded to float32 once. So the image is the exact CPPN of
the float32 weights up to about 1e-12 before that one rounding: the tests hold it to the float64
reference at float32 rounding, tighter than the float32 tensor and numpy renderers, whose node
values are rounded to float32 at every node. A genome's image never depends on where it sits in
the batch. In float32 the image is as accurate as the other float32 renderers' and 1.9–2.4x as fast
as in float64. Float32 genomes only (float64 ones, used by the tests for exact comparisons, keep the
numpy and tensor renderers, whose activations are accurate to the last bit of float64).
"""
from __future__ import annotations

import math

import numpy as np

from . import cppn_float32

try:
    from numba import njit, types
    from numba.extending import overload
except ImportError:  # pragma: no cover - numba is a dependency; the tensor version still works
    njit = None

N_INPUTS = 4          # as in cppn.py (x, y, d, bias); not imported, so that cppn.py can import this file
# Bytes per node per tile: 2,048 pixels in float32 (cppn_float32.TILE), 1,024 in float64; a tile's
# node values (nodes × TILE_BYTES) stay in the L2 cache. (At 224×224 in float32, 2,048 pixels were
# 15% faster than 1,024: longer runs of each image written out; 4,096 no faster.)
TILE_BYTES = cppn_float32.TILE * np.dtype(np.float32).itemsize
_SIN_LIMIT = 1.0e5    # |pre-activation| up to which the reduction above is accurate (far below 2²⁰·π/2)
_INPUT_BOUND = math.sqrt(2.0)   # |x|, |y| ≤ 1, d ≤ √2, bias 1

_PIO2_1 = 1.57079632673412561417e+00    # π/2's first 33 bits: k·_PIO2_1 is exact for |k| < 2²⁰
_PIO2_1T = 6.07710050650619224932e-11   # π/2 − _PIO2_1
_TWO_OVER_PI = 0.63661977236758134308


def _sin_tile(v, t):  # pragma: no cover - numba
    """v[:t] = sin(v[:t]), vectorised (see the module docstring)."""
    for i in range(t):
        x = v[i]
        k = np.floor(x * _TWO_OVER_PI + 0.5)
        r = (x - k * _PIO2_1) - k * _PIO2_1T                       # r ∈ [−π/4, π/4] (+ a rounding)
        r2 = r * r
        s = r + r * r2 * (-1.0 / 6 + r2 * (1.0 / 120 + r2 * (-1.0 / 5040 + r2 * (
            1.0 / 362880 + r2 * (-1.0 / 39916800 + r2 * (1.0 / 6227020800))))))
        c = 1.0 + r2 * (-0.5 + r2 * (1.0 / 24 + r2 * (-1.0 / 720 + r2 * (1.0 / 40320 + r2 * (
            -1.0 / 3628800 + r2 * (1.0 / 479001600))))))
        q = k - 4.0 * np.floor(k * 0.25)                           # quadrant 0..3
        y = c if (q == 1.0 or q == 3.0) else s
        v[i] = -y if q >= 2.0 else y


def _exp_taylor(h):  # pragma: no cover - numba
    """e^h for |h| ≤ 0.65, Taylor to h¹¹ (relative error below 1e-11)."""
    return 1.0 + h * (1.0 + h * (1.0 / 2 + h * (1.0 / 6 + h * (1.0 / 24 + h * (1.0 / 120 + h * (
        1.0 / 720 + h * (1.0 / 5040 + h * (1.0 / 40320 + h * (1.0 / 362880 + h * (
            1.0 / 3628800 + h * (1.0 / 39916800)))))))))))


def _pow64(e):  # pragma: no cover - numba
    """e⁶⁴, as six squarings (written out: a loop here would stop the caller's loop vectorising)."""
    e *= e
    e *= e
    e *= e
    e *= e
    e *= e
    return e * e


def _gaussian_tile(v, t):  # pragma: no cover - numba
    """v[:t] = exp(−v²) = (e^{−v²/256})²⁵⁶; 0 where v² > 104 (float32 rounds e^−104 to 0)."""
    for i in range(t):
        x2 = v[i] * v[i]
        e = _pow64(_exp_taylor(min(x2, 104.0) * (-1.0 / 256)))
        e *= e
        e *= e                                                     # ^256
        y = 0.0 if x2 > 104.0 else e
        v[i] = y if x2 == x2 else x2                               # NaN stays NaN


def _sigmoid_tile(v, t):  # pragma: no cover - numba
    """v[:t] = 2(σ(v) − 0.5) = tanh(v / 2), as (1 − e^−|v|) / (1 + e^−|v|) with v's sign, where
    e^−|v| = (e^{−|v|/64})⁶⁴ and |v| is capped at 40 (e^−40 ≈ 4e-18 leaves 1 in float64)."""
    for i in range(t):
        x = v[i]
        a = x if x >= 0.0 else -x
        e = _pow64(_exp_taylor((a if a < 40.0 else 40.0) * (-1.0 / 64)))
        y = (1.0 - e) / (1.0 + e)
        y = -y if x < 0.0 else y
        v[i] = y if x == x else x


def _linear_tile(v, t):  # pragma: no cover - numba
    for i in range(t):
        x = v[i]
        y = (-3.0 if x < -3.0 else (3.0 if x > 3.0 else x)) * (1.0 / 3.0)
        v[i] = y if x == x else x


def _sin_library_tile(v, t):  # pragma: no cover - numba
    for i in range(t):
        v[i] = math.sin(v[i])


def _order(conn, p, n_nodes, n_outputs, state, stack, next_src, order):  # pragma: no cover - numba
    """Genome p's nodes that some output depends on, sources before the nodes they feed (a
    depth-first post-order from the outputs over ``conn[p, dst, src]``); their number, or −1 if a
    cycle is met (a genome the mutation operators cannot make)."""
    for i in range(n_nodes):
        state[i] = 2 if i < N_INPUTS else 0          # 0 unseen, 1 on the path, 2 done
    n = 0
    for out_node in range(N_INPUTS, N_INPUTS + n_outputs):
        if state[out_node] == 2:
            continue
        top = 0
        stack[0], next_src[0], state[out_node] = out_node, 0, 1
        while top >= 0:
            node = stack[top]
            src = next_src[top]
            while src < n_nodes and not (conn[p, node, src] and state[src] != 2):
                src += 1
            if src == n_nodes:                       # every source done: the node is next
                state[node] = 2
                order[n] = node
                n += 1
                top -= 1
            elif state[src] == 1:
                return -1
            else:
                next_src[top] = src + 1
                top += 1
                stack[top], next_src[top], state[src] = src, 0, 1
    return n


def _activate64(a, v, t):  # pragma: no cover - numba
    """Activation ``a`` (0 sin, 1 sigmoid, 2 Gaussian, 3 linear, 4 sin beyond _SIN_LIMIT) in place."""
    if a == 0:
        _sin_tile(v, t)
    elif a == 1:
        _sigmoid_tile(v, t)
    elif a == 2:
        _gaussian_tile(v, t)
    elif a == 3:
        _linear_tile(v, t)
    else:
        _sin_library_tile(v, t)


def _activate(a, v, e, bits, scale, t):  # pragma: no cover - replaced by its overload below
    """Activation ``a`` on tile ``v``, in v's precision: float64 here, float32 in :mod:`.cppn_float32`
    (``e``, ``bits``, ``scale``: its scratch)."""


def _plans(weight, conn, act, n_nodes, C, sin_limit):  # pragma: no cover - numba
    """Every genome's plan: its ``n[p]`` nodes in ``order[p]``, each with its ``n_src`` sources
    ``src``, their weights ``w`` and its activation ``kind`` (4: sin beyond ``sin_limit``). The
    first element is −1, or the first genome with a cycle."""
    P = weight.shape[0]
    state = np.empty(n_nodes, np.int8)
    stack = np.empty(n_nodes, np.int64)
    next_src = np.empty(n_nodes, np.int64)
    order = np.empty((P, n_nodes), np.int64)
    n = np.empty(P, np.int64)
    n_src = np.empty((P, n_nodes), np.int64)
    src = np.empty((P, n_nodes, n_nodes), np.int32)
    w = np.empty((P, n_nodes, n_nodes), np.float32)
    kind = np.empty((P, n_nodes), np.int64)
    for p in range(P):
        n[p] = _order(conn, p, n_nodes, C, state, stack, next_src, order[p])
        if n[p] < 0:
            return p, order, n, n_src, src, w, kind
        for j in range(n[p]):
            k = order[p, j]
            m = 0
            reach = 0.0
            for s in range(n_nodes):
                if conn[p, k, s]:
                    src[p, j, m], w[p, j, m] = s, weight[p, k, s]
                    reach += abs(np.float64(weight[p, k, s])) * (_INPUT_BOUND if s < N_INPUTS else 1.0)  # |activations| ≤ 1
                    m += 1
            n_src[p, j] = m
            a = act[p, k]
            kind[p, j] = 4 if (a == 0 and not reach <= sin_limit) else a   # NaN: the library sin
    return -1, order, n, n_src, src, w, kind


def _render(weight, conn, act, n_nodes, inputs, out, sin_limit, at_zero):  # pragma: no cover - numba
    """Genomes as :class:`~course.evolution.cppn.CPPNEncoding` holds them (``weight`` (P, N, N)
    float32 and ``conn`` (P, N, N) bool as [genome, dst, src], ``act`` (P, N)), of which the first
    ``n_nodes`` slots can be alive; ``inputs`` (4, HW) float64 or float32, the precision of the node
    values. Writes min(|output|, 1) into ``out`` (P, C, HW) float32; a node without connections is
    ``at_zero[kind]``, its activation at 0. Returns −1, or the first genome with a cycle (nothing
    is drawn).

    First every genome's plan, then tile by tile every genome: a tile's inputs are copied once
    for the whole population (at 224×224, once per genome had cost as much as the multiply-adds)."""
    P = weight.shape[0]
    C, HW = out.shape[1], inputs.shape[1]
    bad, order, n, n_src, src, w, kind = _plans(weight, conn, act, n_nodes, C, sin_limit)
    if bad >= 0:
        return bad
    tile = TILE_BYTES // inputs.itemsize
    T = min(tile, HW)
    V = np.empty((n_nodes, T), inputs.dtype)         # node values by slot, on one tile of pixels
    one = np.ones(1, inputs.dtype)[0]
    e = np.empty(T, np.float32)                      # the float32 activations' scratch
    bits = np.empty(T, np.int32)
    scale = bits.view(np.float32)
    for start in range(0, HW, tile):
        t = min(tile, HW - start)
        for s in range(N_INPUTS):
            for i in range(t):
                V[s, i] = inputs[s, start + i]
        for p in range(P):
            for j in range(n[p]):
                v = V[order[p, j]]
                if n_src[p, j] == 0:                 # no connection: the constant activation(0)
                    c0 = at_zero[kind[p, j]]
                    for i in range(t):
                        v[i] = c0
                    continue
                wj, u = w[p, j, 0], V[src[p, j, 0]]  # (float32 weights: exact in float64 too)
                for i in range(t):
                    v[i] = wj * u[i]
                for q in range(1, n_src[p, j]):
                    wj, u = w[p, j, q], V[src[p, j, q]]
                    for i in range(t):
                        v[i] += wj * u[i]
                _activate(kind[p, j], v, e, bits, scale, t)
            for c in range(C):
                u = V[N_INPUTS + c]
                o = out[p, c]
                for i in range(t):
                    y = abs(u[i])
                    o[start + i] = one if y > one else y     # NaN stays NaN
    return -1


if njit is not None:
    # 'contract' lets the compiler fuse a multiply and an add into one FMA (one rounding fewer).
    _jit = njit(cache=True, boundscheck=False, fastmath={"contract"}, error_model="numpy")
    _sin_tile, _exp_taylor, _pow64, _gaussian_tile, _sigmoid_tile, _linear_tile, _sin_library_tile, _order = (
        _jit(f) for f in (_sin_tile, _exp_taylor, _pow64, _gaussian_tile, _sigmoid_tile, _linear_tile,
                          _sin_library_tile, _order))
    _activate64, _plans = _jit(_activate64), _jit(_plans)

    @overload(_activate)
    def _activate_in_precision(a, v, e, bits, scale, t):
        if v.dtype == types.float32:
            return lambda a, v, e, bits, scale, t: cppn_float32._activate(a, v, e, bits, scale, t)
        return lambda a, v, e, bits, scale, t: _activate64(a, v, t)

    _render_compiled = _jit(_render)
else:  # pragma: no cover
    _render_compiled = None


def available() -> bool:
    return _render_compiled is not None


def render(weight: np.ndarray, conn: np.ndarray, act: np.ndarray, n_nodes: int, inputs: np.ndarray,
           out: np.ndarray, at_zero) -> None:
    """Draw every genome into ``out`` (P, C, HW) float32, in the precision of ``inputs`` (float64 or
    float32); ``at_zero`` the four activations at 0 (sin, sigmoid, Gaussian, linear: the value of a
    node without connections); the other arguments as :func:`_render`'s."""
    if inputs.dtype not in (np.float64, np.float32):
        raise ValueError(f"inputs must be float64 or float32 (the precision to draw in), got {inputs.dtype}.")
    limit = _SIN_LIMIT if inputs.dtype == np.float64 else cppn_float32.SIN_LIMIT
    bad = _render_compiled(np.ascontiguousarray(weight, np.float32), np.ascontiguousarray(conn, np.bool_),
                           np.ascontiguousarray(act, np.int64), int(n_nodes), np.ascontiguousarray(inputs), out,
                           float(limit), np.array([*at_zero, at_zero[0]], np.float64))   # kind 4: sin
    if bad >= 0:
        raise ValueError(f"genome {bad} has a cycle in its connections: a CPPN must be feed-forward "
                         "(the mutation operators keep it so; check how this genome was built).")
