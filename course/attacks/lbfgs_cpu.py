"""The projected L-BFGS of :func:`course.attacks.lbfgs.lbfgsb_batched` as one compiled CPU loop
(numba): the same method, the same arithmetic, organised for a CPU.

Written with tensor ops (the reference, and what a GPU runs), one iteration makes dozens of passes
over the whole batch (a mask, a product, a dot product, a clip, the compaction of the batch...),
each reading and writing A × D numbers, plus a Python round of bookkeeping for every line-search
step. For hundreds of MNIST-sized problems the optimiser then costs more than the network's own
forward and backward pass. Here everything between two evaluations of the network is **one
sweep over the problems**, each problem's data handled while it sits in the core's cache
(:func:`_advance`): for every problem, after the network has evaluated its trial point,

- the line-search test (Armijo's condition, or "no measurable decrease left");
- on acceptance: the new pair (s, y) into the problem's memory, s·y, y·y, the new projected
  gradient step and its ∞-norm, the convergence tests; the quasi-Newton direction for the next
  iteration by the two-loop recursion over the problem's pairs (each axpy fused with the next dot
  product), the next trial point ``clip(x + d)`` and the decrease it promises;
- on rejection: the cubic backtracking step (:func:`course.attacks.lbfgs._backtrack_factor`)
  and the shorter trial point; where the line search has failed, the memory is forgotten and the
  problem restarts with scaled steepest descent (or stops, when its memory was already empty);
- a finished problem is written to the results and dropped from the batch (the batch is
  compacted in place, in order).

And the line search is **not** a loop of its own: a problem whose step was rejected simply puts
its shorter trial point into the next evaluation, beside the other problems' next iterations.
Every evaluation is therefore one large batch (the tensor version evaluates the problems still
searching in small extra batches, ~half of its evaluations), and each problem sees exactly the
sequence of points it sees in the tensor version: the problems are independent, only the grouping
of their evaluations into batches differs. Each problem counts its own iterations (and its own
ring slot of the memory) for the same reason.

The tensor version in :mod:`course.attacks.lbfgs` is the reference: same results up to the order
of float additions in the dot products (tested). This runs only on contiguous float32/float64 CPU
tensors when numba is installed; everything else (a GPU above all) takes the tensor version.
"""
from __future__ import annotations

import math
import threading

import numpy as np
import torch

from ..memory import huge_page_empty

try:
    from numba import njit
except ImportError:  # pragma: no cover - numba is a dependency; the tensor version still works
    njit = None

# Reassociation lets the compiler vectorise the dot products; no "no-NaN" assumption (the line
# search tests for NaN and infinity), and divisions by zero give inf/NaN like torch's, not errors.
_options = dict(fastmath={"reassoc", "contract", "nsz"}, error_model="numpy", boundscheck=False, cache=True)
_jit = njit(**_options) if njit else (lambda f: f)


@_jit
def _clip(v, lo, hi):  # pragma: no cover - numba
    v = v if v > lo else lo
    return v if v < hi else hi


@_jit
def _backtrack(slope0, slope1, df):  # pragma: no cover - numba
    """``lbfgs._backtrack_factor`` for one problem: the next trial step as a fraction of the rejected
    one, from the cubic through f(0), f'(0), f(1), f'(1) (the quadratic where it has no minimiser),
    in [0.1, 0.5]."""
    d1 = slope0 + slope1 - 3.0 * df
    disc = d1 * d1 - slope0 * slope1
    d2 = math.sqrt(disc) if disc >= 0.0 else math.nan
    cubic = 1.0 - (slope1 + d2 - d1) / (slope1 - slope0 + 2.0 * d2)
    a = cubic if math.isfinite(cubic) else -slope0 / (2.0 * (df - slope0))
    a = a if math.isfinite(a) else 0.1
    return min(max(a, 0.1), 0.5)


@_jit
def _trial(j, r, k, X, G, P, XT, DD, gamma, S, Y, rho, lo, hi, order, alpha):  # pragma: no cover
    """Row j (problem r, k iterations done): the direction d = −(H (g·free))·free into DD[j] (scaled
    steepest descent −γ g·free where that is not a descent direction), the trial point
    XT[j] = clip(X[j] + d); returns g·(XT[j] − X[j]). H from the problem's pairs of the last
    min(k, m) iterations, newest first, skipping empty slots (rho = 0, which change nothing)."""
    m = S.shape[0]
    D = X.shape[1]
    zero, one = X.dtype.type(0.0), X.dtype.type(1.0)
    gamma = X.dtype.type(gamma)  # (the arithmetic in the array's precision, as the tensor version)
    x, g, p, d = X[j], G[j], P[j], DD[j]
    n = 0
    for i in range(min(k, m)):
        sl = (k - 1 - i) % m
        if rho[sl, r] != zero:
            order[n] = sl
            n += 1
    for jj in range(D):  # q = −g on the free variables (proj ≠ 0); masks multiply: no branch
        d[jj] = -g[jj] * (p[jj] != zero)
    if n == 0:
        for jj in range(D):
            d[jj] *= gamma
    else:
        # Newest → oldest: alpha_i = rho_i s_i·q, q −= alpha_i y_i (fused with the next dot product).
        s = S[order[0], r]
        dot = zero
        for jj in range(D):
            dot += s[jj] * d[jj]
        for i in range(n):
            sl = order[i]
            al = rho[sl, r] * dot
            alpha[i] = al
            y = Y[sl, r]
            if i + 1 < n:
                nxt, scale = S[order[i + 1], r], one
            else:   # last: q *= gamma, and the second loop's first dot product y_oldest·q
                nxt, scale = Y[order[n - 1], r], gamma
            dot = zero
            for jj in range(D):
                v = (d[jj] - al * y[jj]) * scale
                d[jj] = v
                dot += nxt[jj] * v
        # Oldest → newest: beta_i = rho_i y_i·q, q += (alpha_i − beta_i) s_i.
        for i in range(n - 1, -1, -1):
            sl = order[i]
            c = alpha[i] - rho[sl, r] * dot
            s = S[sl, r]
            if i > 0:
                nxt = Y[order[i - 1], r]
                dot = zero
                for jj in range(D):
                    v = d[jj] + c * s[jj]
                    d[jj] = v
                    dot += nxt[jj] * v
            else:
                for jj in range(D):
                    d[jj] += c * s[jj]
    slope = zero
    for jj in range(D):  # only the free variables move
        v = d[jj] * (p[jj] != zero)
        d[jj] = v
        slope += g[jj] * v
    if not slope < zero:
        for jj in range(D):
            d[jj] = -gamma * g[jj] * (p[jj] != zero)
    xt = XT[j]
    st = zero
    for jj in range(D):
        v = _clip(x[jj] + d[jj], lo[jj], hi[jj])
        xt[jj] = v
        st += g[jj] * (v - x[jj])
    return st


@_jit
def _retire(r, x, f, k, conv, x_out, f_out, it_out, conv_out):  # pragma: no cover - numba
    x_out[r, :] = x
    f_out[r], it_out[r], conv_out[r] = f, k, conv


@_jit
def _add_penalty(fv, g, x, center, weight):  # pragma: no cover - numba
    """fv + weight·‖x − center‖², and its gradient 2·weight·(x − center) added to g (in place)."""
    zero = x.dtype.type(0.0)
    w = x.dtype.type(weight)
    two_w = x.dtype.type(2.0 * weight)
    pen = zero
    for jj in range(x.shape[0]):
        r = x[jj] - center[jj]
        pen += r * r
        g[jj] += two_w * r
    return fv + w * pen


@_jit
def _start(A, f0, g0, X, G, P, XT, DD, f, gamma, k, t, st, ls, rows, S, Y, rho, lo, hi,
           x_out, f_out, it_out, conv_out, max_iter, pgtol, order, alpha, center, weight,
           has_penalty):  # pragma: no cover
    """After the first evaluation (f0, g0 at X): the projected gradient step, γ = 1/‖g‖, the first
    trial point of every problem; problems already converged (or max_iter = 0) retire. Returns
    the number of problems left, compacted to the front of the state arrays."""
    D = X.shape[1]
    zero = X.dtype.type(0.0)
    j = 0
    for a in range(A):
        r = rows[a]
        x, g, p = X[a], g0[a], P[a]
        if has_penalty:
            f0[a] = _add_penalty(f0[a], g, x, center[r], weight[r])
        big, gg = zero, zero
        for jj in range(D):
            v = _clip(x[jj] - g[jj], lo[jj], hi[jj]) - x[jj]
            p[jj] = v
            ap = abs(v)
            big = ap if ap > big else big
            gg += g[jj] * g[jj]
        conv = big <= pgtol
        if conv or max_iter == 0:
            _retire(r, x, f0[a], 0, conv, x_out, f_out, it_out, conv_out)
            continue
        if j != a:
            X[j, :] = x
            P[j, :] = p
        G[j, :] = g
        f[j], k[j], t[j], ls[j], rows[j] = f0[a], 0, 1.0, 1, r
        gamma[j] = 1.0 / max(math.sqrt(gg), 1e-12)
        st[j] = _trial(j, r, 0, X, G, P, XT, DD, gamma[j], S, Y, rho, lo, hi, order, alpha)
        j += 1
    return j


@_jit
def _advance(A, ft, gt, X, G, P, XT, DD, f, gamma, k, t, st, ls, rows, S, Y, rho, lo, hi,
             x_out, f_out, it_out, conv_out, max_iter, max_ls, ftol, pgtol, armijo, eps,
             order, alpha, center, weight, has_penalty):  # pragma: no cover - numba
    """Everything between two evaluations, for each of the A problems in the batch (their trial
    points XT evaluated: values ft, gradients gt): accept or backtrack, store the pair, test for
    convergence, retire or compute the next trial point. Returns the problems left (compacted)."""
    m = S.shape[0]
    D = X.shape[1]
    zero = X.dtype.type(0.0)
    j = 0
    for a in range(A):
        r = rows[a]
        x, g, p, xt, gn = X[a], G[a], P[a], XT[a], gt[a]
        if has_penalty:  # the quadratic term, added to the network's value and gradient
            ft[a] = _add_penalty(ft[a], gn, xt, center[r], weight[r])
        fa, fta, sta, ka = f[a], ft[a], st[a], k[a]
        if fta <= fa + armijo * sta:
            # Accepted: the pair into this iteration's ring slot, the next projected gradient step;
            # the new point and its gradient move to row j (j ≤ a: rows already consumed).
            slot = ka % m
            s, y = S[slot, r], Y[slot, r]
            xj, gj, pj = X[j], G[j], P[j]
            sy, yy, big = zero, zero, zero
            for jj in range(D):
                sv = xt[jj] - x[jj]
                yv = (gn[jj] - g[jj]) * (p[jj] != zero)
                s[jj] = sv
                y[jj] = yv
                sy += sv * yv
                yy += yv * yv
                pn = _clip(xt[jj] - gn[jj], lo[jj], hi[jj]) - xt[jj]
                pj[jj] = pn
                xj[jj] = xt[jj]
                gj[jj] = gn[jj]
                ap = abs(pn)
                big = ap if ap > big else big
            good = sy > 1e-10 * yy
            rho[slot, r] = 1.0 / max(sy, 1e-30) if good else 0.0
            gam = sy / max(yy, 1e-30) if good else gamma[a]
            ka += 1
            small = (fa - fta) <= ftol * max(max(abs(fa), abs(fta)), 1.0)
            conv = big <= pgtol or small
            if conv or ka >= max_iter:
                _retire(r, xj, fta, ka, conv, x_out, f_out, it_out, conv_out)
                continue
            f[j], gamma[j], k[j], t[j], ls[j], rows[j] = fta, gam, ka, 1.0, 1, r
            st[j] = _trial(j, r, ka, X, G, P, XT, DD, gam, S, Y, rho, lo, hi, order, alpha)
            j += 1
        else:
            noise = 4.0 * eps * max(abs(fa), 1.0)  # a change in f smaller than this is rounding
            stalled = not (-sta > noise)           # nothing measurable left to gain: converged
            if stalled or ls[a] >= max_ls:         # ... or the line search failed: stay at x
                has_memory = False
                for i in range(m):
                    has_memory = has_memory or rho[i, r] != zero
                if not has_memory:
                    _retire(r, x, fa, ka, stalled, x_out, f_out, it_out, conv_out)
                    continue
                # Forget the memory; restart from x with scaled steepest descent (gamma = 1/|g|).
                gg = zero
                for i in range(m):
                    rho[i, r] = zero
                if j != a:
                    X[j, :] = x
                    G[j, :] = g
                    P[j, :] = p
                for jj in range(D):
                    gg += g[jj] * g[jj]
                gam = 1.0 / max(math.sqrt(gg), 1e-12)
                f[j], gamma[j], k[j], t[j], ls[j], rows[j] = fa, gam, ka, 1.0, 1, r
                st[j] = _trial(j, r, ka, X, G, P, XT, DD, gam, S, Y, rho, lo, hi, order, alpha)
                j += 1
                continue
            # Backtrack: a shorter step along the same direction, evaluated with the next batch.
            end = zero
            for jj in range(D):
                end += gn[jj] * (xt[jj] - x[jj])
            ta = X.dtype.type(t[a] * _backtrack(sta, end, fta - fa))
            if j != a:
                X[j, :] = x
                G[j, :] = g
                P[j, :] = p
                DD[j, :] = DD[a]
            xj, gj, d, xtj = X[j], G[j], DD[j], XT[j]
            s_t = zero
            for jj in range(D):
                v = _clip(xj[jj] + ta * d[jj], lo[jj], hi[jj])
                xtj[jj] = v
                s_t += gj[jj] * (v - xj[jj])
            f[j], gamma[j], k[j], t[j], ls[j], rows[j] = fa, gamma[a], ka, ta, ls[a] + 1, r
            st[j] = s_t
            j += 1
    return j


def available(*tensors: torch.Tensor) -> bool:
    """True when the compiled loop can take these tensors: numba present, all on the CPU,
    contiguous, one float dtype (float32 or float64)."""
    return (njit is not None
            and all(t.device.type == "cpu" and t.is_contiguous() for t in tensors)
            and len({t.dtype for t in tensors}) == 1 and tensors[0].dtype in (torch.float32, torch.float64))


_kept = threading.local()  # .buffer: the last flat buffer a minimise call used in this thread
KEEP_BYTES = 1 << 30          # buffers up to this size are kept for the thread's next call


def release() -> None:
    """Free the buffer kept for this thread's next call (see :func:`minimise`)."""
    _kept.__dict__.pop("buffer", None)


def _buffer(workspace: list, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """A flat uninitialised CPU tensor of at least ``numel`` entries: ``workspace[0]`` if it fits,
    else the one kept from this thread's last call if it fits, else a new one."""
    for buf in (workspace[0] if workspace else None, getattr(_kept, "buffer", None)):
        if (isinstance(buf, torch.Tensor) and buf.numel() >= numel and buf.dtype == dtype
                and buf.device.type == "cpu"):
            break
    else:
        buf = huge_page_empty(numel, dtype)  # (streamed every iteration: 2 MB pages, where Linux has them)
    workspace[:1] = [buf]
    return buf


def _keep(buf: torch.Tensor) -> None:
    if buf.numel() * buf.element_size() <= KEEP_BYTES:
        _kept.buffer = buf


def minimise(fun, x0: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, max_iter: int, history: int,
             ftol: float, pgtol: float, max_ls: int, armijo: float, workspace: list, value_and_grad,
             penalty=None):
    """:func:`course.attacks.lbfgs.lbfgsb_batched` on a CPU (its arguments; ``lo``, ``hi`` tensors
    (D,), ``x0`` passing :func:`available`, ``penalty`` None or contiguous (center, weight) of its
    dtype). Returns x, f, iterations, converged, n_evals, n_rows."""
    B, D = x0.shape
    dtype = x0.dtype
    m = history
    x_out = x0.detach().clamp(lo, hi)
    f_out = x0.new_full((B,), math.nan)
    it_out = torch.zeros(B, dtype=torch.long)
    conv_out = torch.zeros(B, dtype=torch.bool)
    if B == 0:
        return x_out, f_out, it_out, conv_out, 0, 0
    # One flat buffer for the memory S, Y (m, B, D) and the batch's X, G, P, XT, DD (B, D) each,
    # kept in `workspace` for the next call. Uninitialised: a slot is read only after this run
    # wrote it (a problem reads the slots of its own last min(k, m) iterations).
    n = (2 * m + 5) * B * D
    buf = _buffer(workspace, n, dtype)
    S = buf[:m * B * D].view(m, B, D)
    Y = buf[m * B * D:2 * m * B * D].view(m, B, D)
    X, G, P, XT, DD = buf[2 * m * B * D:n].view(5, B, D).unbind(0)
    rho = torch.zeros(m, B, dtype=dtype)
    f, gamma, t, st = (torch.empty(B, dtype=dtype) for _ in range(4))
    k, ls = torch.empty(B, dtype=torch.int64), torch.empty(B, dtype=torch.int64)
    rows = torch.arange(B)
    order, alpha = np.empty(m, dtype=np.int64), np.empty(m, dtype=x_out.numpy().dtype)
    lo_n, hi_n = lo.numpy(), hi.numpy()
    state = [a.numpy() for a in (X, G, P, XT, DD, f, gamma, k, t, st, ls, rows, S, Y, rho)]
    outs = [a.numpy() for a in (x_out, f_out, it_out, conv_out)]
    eps = float(torch.finfo(dtype).eps)
    if penalty is None:
        pen = (np.zeros((1, D), dtype=outs[0].dtype), np.zeros(1, dtype=outs[0].dtype), False)
    else:
        pen = (penalty[0].numpy(), penalty[1].numpy(), True)

    X.copy_(x_out)
    f0, g0 = value_and_grad(fun, X, rows)
    n_evals, n_rows = 1, B
    A = _start(B, f0.numpy(), g0.contiguous().numpy(), *state, lo_n, hi_n, *outs, max_iter, pgtol, order, alpha, *pen)
    while A > 0:
        ft, gt = value_and_grad(fun, XT[:A], rows[:A])
        n_evals, n_rows = n_evals + 1, n_rows + A
        A = _advance(A, ft.contiguous().numpy(), gt.contiguous().numpy(), *state, lo_n, hi_n, *outs,
                     max_iter, max_ls, ftol, pgtol, armijo, eps, order, alpha, *pen)
    _keep(buf)
    return x_out, f_out, it_out, conv_out, n_evals, n_rows
