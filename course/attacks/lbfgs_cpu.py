"""The projected L-BFGS's per-problem vector work as compiled CPU loops (numba), for
:mod:`course.attacks.lbfgs`.

Written with tensor ops, one iteration of :func:`~course.attacks.lbfgs.lbfgsb_batched` makes dozens
of passes over the whole batch (a mask, a product, a dot product, a clip... each reading and
writing A × D numbers), and the two-loop recursion makes 2m more for every one of its 4m steps:
for hundreds of MNIST-sized problems that is tens of megabytes read again and again, so the
optimiser is bound by memory bandwidth and costs more than the network's forward and backward pass.
Here two loops run one *problem* at a time instead, each a single sweep over that problem's data
while it sits in the core's cache:

- :func:`direction`: the free-variable mask, the two-loop recursion over the problem's m pairs
  (62 KB for MNIST with m = 10; each axpy fused with the next dot product), the masked direction
  and its slope g·d;
- :func:`pair`: the new pair (s, y) written into the memory, s·y, y·y, and the next projected
  gradient step with its largest entry.

The tensor versions in :mod:`course.attacks.lbfgs` are the reference: same arithmetic up to the
order of the float additions in the dot products (``fastmath`` lets the compiler vectorise them),
so the two agree to rounding (tested). These run only on contiguous float32/float64 CPU tensors
when numba is installed; everything else (a GPU above all) takes the tensor versions.
"""
from __future__ import annotations

import numpy as np
import torch

try:
    from numba import njit
except ImportError:  # pragma: no cover - numba is a dependency; the tensor versions still work
    njit = None


def _direction(g, proj, S, Y, rho, gamma, order, mem, d, slope):  # pragma: no cover - numba
    """Row a: q = −g on the free variables (proj ≠ 0), 0 elsewhere; d = (H q) on the free variables;
    slope = g·d. H from the pairs ``S[:, mem[a]], Y[:, mem[a]]`` (``rho[:, mem[a]]``) in ``order``
    (newest first) and ``H₀ = gamma[a] I``."""
    m = order.shape[0]
    A, D = g.shape
    zero, one = g.dtype.type(0.0), g.dtype.type(1.0)
    alpha = np.empty(max(m, 1), dtype=g.dtype)
    for a in range(A):
        r = d[a]
        b = mem[a]
        ga, pa = g[a], proj[a]
        # q = −g on the free variables (a mask that multiplies: no branch, the loops vectorise).
        for j in range(D):
            r[j] = -ga[j] * (pa[j] != zero)
        if m == 0:                 # no pair yet: H = gamma I
            for j in range(D):
                r[j] *= gamma[a]
        else:
            # Newest → oldest: alpha_i = rho_i s_i·r, then r -= alpha_i y_i (fused with the next dot).
            s = S[order[0], b]
            dot = zero
            for j in range(D):
                dot += s[j] * r[j]
            for k in range(m):
                i = order[k]
                al = rho[i, b] * dot
                alpha[k] = al
                y = Y[i, b]
                dot = zero
                if k + 1 < m:      # the dot product the next step needs: s_next·r
                    nxt, scale = S[order[k + 1], b], one
                else:              # last step: r *= gamma, and the second loop's first dot: y_oldest·r
                    nxt, scale = Y[order[m - 1], b], gamma[a]
                for j in range(D):
                    v = (r[j] - al * y[j]) * scale
                    r[j] = v
                    dot += nxt[j] * v
            # Oldest → newest: beta_i = rho_i y_i·r, then r += (alpha_i − beta_i) s_i.
            for k in range(m - 1, -1, -1):
                i = order[k]
                c = alpha[k] - rho[i, b] * dot
                s = S[i, b]
                if k > 0:
                    nxt = Y[order[k - 1], b]
                    dot = zero
                    for j in range(D):
                        v = r[j] + c * s[j]
                        r[j] = v
                        dot += nxt[j] * v
                else:
                    for j in range(D):
                        r[j] += c * s[j]
        sl = zero
        for j in range(D):         # only the free variables move
            v = r[j] * (pa[j] != zero)
            r[j] = v
            sl += ga[j] * v
        slope[a] = sl


def _pair(x_new, x, g_new, g, proj, lo, hi, S, Y, slot, mem, sy, yy, proj_new, pg):  # pragma: no cover
    """Row a: s = x⁺ − x and y = g⁺ − g on the free variables (proj ≠ 0) into slot ``slot`` of
    memory row ``mem[a]``; s·y, y·y; the next projected gradient step clip(x⁺ − g⁺) − x⁺ and its
    largest absolute entry. (Masks multiply and clips select, with no branch in the loops, so that
    the compiler vectorises them: 2.6x faster than with ``if``/``min``/``max``.)"""
    A, D = x.shape
    zero = x.dtype.type(0.0)
    for a in range(A):
        s, y = S[slot, mem[a]], Y[slot, mem[a]]
        xn, xo, gn, go, pr, pn = x_new[a], x[a], g_new[a], g[a], proj[a], proj_new[a]
        s_y, y_y = zero, zero
        for j in range(D):
            sj = xn[j] - xo[j]
            yj = (gn[j] - go[j]) * (pr[j] != zero)
            s[j] = sj
            y[j] = yj
            s_y += sj * yj
            y_y += yj * yj
            v = xn[j] - gn[j]
            v = v if v > lo[j] else lo[j]
            v = v if v < hi[j] else hi[j]
            pn[j] = v - xn[j]
        big = zero
        for j in range(D):
            ap = abs(pn[j])
            big = ap if ap > big else big
        sy[a], yy[a], pg[a] = s_y, y_y, big


_options = dict(fastmath=True, boundscheck=False, cache=True)
_direction_compiled = njit(**_options)(_direction) if njit else None
_pair_compiled = njit(**_options)(_pair) if njit else None


def available(*tensors: torch.Tensor) -> bool:
    """True when the compiled loops can take these tensors: numba present, all on the CPU,
    contiguous, one float dtype (float32 or float64)."""
    return (njit is not None
            and all(t.device.type == "cpu" and t.is_contiguous() for t in tensors)
            and len({t.dtype for t in tensors}) == 1 and tensors[0].dtype in (torch.float32, torch.float64))


def _mem(mem: torch.Tensor | None, A: int) -> np.ndarray:
    return np.arange(A) if mem is None else mem.numpy()


def direction(g: torch.Tensor, proj: torch.Tensor, S: torch.Tensor, Y: torch.Tensor, rho: torch.Tensor,
              gamma: torch.Tensor, order: list[int], mem: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The quasi-Newton direction d (A, D) on the free variables and its slope g·d (A,); see
    ``lbfgs._direction``, whose arguments these are. The float tensors must pass :func:`available`."""
    d, slope = torch.empty_like(g), g.new_empty(len(g))
    with torch.no_grad():
        _direction_compiled(g.numpy(), proj.numpy(), S.numpy(), Y.numpy(), rho.numpy(), gamma.numpy(),
                            np.asarray(order, dtype=np.int64), _mem(mem, len(g)), d.numpy(), slope.numpy())
    return d, slope


def pair(x_new: torch.Tensor, x: torch.Tensor, g_new: torch.Tensor, g: torch.Tensor, proj: torch.Tensor,
         lo: torch.Tensor, hi: torch.Tensor, S: torch.Tensor, Y: torch.Tensor, slot: int,
         mem: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Store the pair, and the next projected gradient step: see ``lbfgs._pair``, whose arguments
    these are (``lo``, ``hi`` as tensors (D,)). Returns s·y, y·y, the step and its ∞-norm."""
    sy, yy, pg = (x.new_empty(len(x)) for _ in range(3))
    proj_new = torch.empty_like(x)
    with torch.no_grad():
        _pair_compiled(x_new.numpy(), x.numpy(), g_new.numpy(), g.numpy(), proj.numpy(), lo.numpy(),
                       hi.numpy(), S.numpy(), Y.numpy(), slot, _mem(mem, len(x)), sy.numpy(), yy.numpy(),
                       proj_new.numpy(), pg.numpy())
    return sy, yy, proj_new, pg
