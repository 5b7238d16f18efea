"""Szegedy et al.'s adversarial examples: box-constrained L-BFGS with a search over c (§4.1).

The exact question of the paper is: what is the *smallest* change ``r`` that makes the network say
``l``?  ::

    minimise ‖r‖₂   subject to   f(x + r) = l,   x + r ∈ [0, 1]^m

That is a hard, non-convex, constrained problem. The paper approximates it with a penalty::

    minimise   c·|r| + loss_f(x + r, l)   subject to   x + r ∈ [0, 1]^m

and searches over ``c`` for the *largest* c whose minimiser still makes the network say ``l``: a
larger c makes the distance term weigh more, so the minimiser moves less and ``r`` gets smaller.

Choices the paper leaves open, made here:

- ``|r|`` is the **squared** L2 norm ``‖r‖² = Σ r_i²``. It is smooth everywhere (the plain norm
  ‖r‖ has no gradient at r = 0, exactly where every run starts), its gradient ``2r`` is cheap, and a
  quasi-Newton method models it exactly: its Hessian is ``2I``. The minimisers of c·‖r‖ and c'·‖r‖²
  trace the same curve as c varies, so the search over c finds the same examples either way.
- ``loss_f(x', l)`` is the cross-entropy of the network's logits toward the target ``l``.
- The variable is the adversarial image ``x' = x + r`` itself, so the box is simply ``0 ≤ x' ≤ 1``.
  The runs of the grid start at the clean image (r = 0).
- The search over c, **per image**: a geometric grid ``c_init, c_init/c_factor, ...`` (``c_steps``
  values, all run at once), then ``refine_steps`` rounds, each trying ``refine_points`` values of c
  spaced geometrically between the largest c that succeeded and the next one up (one point per
  round is plain bisection; three points shrink the bracket four-fold per round, in one batch).
  A refinement run starts at the minimiser found for the bracket's lower end (``warm_start``):
  the minimiser moves continuously with c, so this start is close and the run short. Among every
  run that reached the target, the one with the smallest distortion is returned (almost always the
  largest c) with the c that made it.
- Tolerances follow scipy's L-BFGS-B (``ftol = factr·eps``, ``pgtol``), except that the default
  ``ftol = 1e-6`` suits float32: a network's loss in float32 is only good to about 1e-7 relative,
  so asking for relative decreases below that chases rounding noise.

Everything is batched: B images × K values of c are one batch of B·K independent problems, solved
together by :func:`lbfgsb_batched`, a projected L-BFGS written with tensors, so it runs on whatever
device the model and images are on. There is no Python loop over images or pixels.

Success means ``argmax model(x') == l``. Distortion is the paper's ``√(Σ(x' − x)² / n)``, with n the
number of pixels of one image (784 for MNIST).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import validate
from ..modes import restore, to_eval
from . import lbfgs_cpu

# ---------------------------------------------------------------------------------------------
# The optimiser: projected L-BFGS for a batch of independent bound-constrained problems
# ---------------------------------------------------------------------------------------------

@dataclass
class LBFGSBResult:
    """What :func:`lbfgsb_batched` returns. Row ``i`` of each tensor belongs to problem ``i``."""

    x: torch.Tensor           # (B, D) the minimisers found, inside the bounds
    f: torch.Tensor           # (B,)   objective values there
    iterations: torch.Tensor  # (B,)   L-BFGS iterations each problem took
    converged: torch.Tensor   # (B,)   True where a tolerance was met before max_iter
    n_evals: int              # calls of fun: each one batched forward + backward pass
    n_rows: int               # problems evaluated in total, summed over those calls


def _value_and_grad(fun, x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-problem values ``fun(x, rows)`` (A,) and their gradients (A, D), by autograd.

    The problems are independent, so the gradient of the *sum* of the values is, row by row, the
    gradient of each value: one backward pass gives all of them.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        f = fun(x, rows)
        (g,) = torch.autograd.grad(f.sum(), x)
    return f.detach(), g


def rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products of two (A, D) tensors: (A,). ``(a * b).sum(1)``, which on CPU is about
    twice as fast as ``torch.linalg.vecdot`` for these shapes."""
    return torch.mul(a, b).sum(1)


def take(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx`` of ``t``: ``t[idx]``, written as ``index_select``, which is several times faster
    on CPU than advanced indexing."""
    return t.index_select(0, idx)


def _two_loop(q: torch.Tensor, S: torch.Tensor, Y: torch.Tensor, rho: torch.Tensor,
              gamma: torch.Tensor, order: list[int]) -> torch.Tensor:
    """The L-BFGS two-loop recursion, for every row at once: returns ``H q`` (A, D).

    ``S, Y`` (m, A, D) hold each row's last m steps ``s = x⁺ − x`` and gradient changes
    ``y = g⁺ − g``; ``rho = 1 / (s·y)`` (m, A), zero in an empty slot (which then changes nothing).
    ``order`` lists the slots from newest to oldest; ``H₀ = γ I`` with ``gamma`` (A,).
    The loops run over the m slots, never over rows: each step is one tensor op on all rows.
    """
    q = q.clone()
    dot = rowdot                                       # row-wise dot products (A,)
    alpha = []
    for i in order:                                    # newest → oldest
        a = rho[i] * dot(S[i], q)
        q.addcmul_(Y[i], a[:, None], value=-1.0)       # q -= a·y_i
        alpha.append(a)
    r = q.mul_(gamma[:, None])
    for i, a in zip(reversed(order), reversed(alpha)):  # oldest → newest
        b = rho[i] * dot(Y[i], r)
        r.addcmul_(S[i], (a - b)[:, None])             # r += (a − b)·s_i
    return r


def _backtrack_factor(slope0: torch.Tensor, slope1: torch.Tensor, df: torch.Tensor) -> torch.Tensor:
    """How much shorter the next trial step is, as a fraction of the rejected step s (A,).

    Along s (parametrised by a ∈ [0, 1]) f changed by ``df``, with slopes ``slope0 = g·s`` at the
    start and ``slope1 = g⁺·s`` at the end. The minimiser of the cubic through these four numbers
    (Nocedal & Wright, eq. 3.59) uses the end slope, which a quadratic through f(0), f'(0), f(1)
    cannot: where the network's loss shoots up past the step's start (a cross-entropy growing
    exponentially) the quadratic shortens the step far too little and needs several more tries
    (10% more evaluations in all on the MNIST attack). Where the cubic has no minimiser the
    quadratic's is used; the factor is kept in [0.1, 0.5].
    """
    d1 = slope0 + slope1 - 3 * df
    d2 = (d1 * d1 - slope0 * slope1).sqrt()          # NaN where the cubic has no minimiser
    cubic = 1 - (slope1 + d2 - d1) / (slope1 - slope0 + 2 * d2)
    quadratic = -slope0 / (2 * (df - slope0))
    a = torch.where(torch.isfinite(cubic), cubic, quadratic)
    return torch.where(torch.isfinite(a), a, 0.1).clamp_(0.1, 0.5)


def _direction(g: torch.Tensor, proj: torch.Tensor, S: torch.Tensor, Y: torch.Tensor, rho: torch.Tensor,
               gamma: torch.Tensor, order: list[int], mem: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 1–2 of :func:`lbfgsb_batched` for every row: the quasi-Newton direction on the free
    variables, ``d = −(H (g·free))·free`` (A, D), and its slope ``g·d`` (A,).

    A variable is free where the projected gradient step ``proj`` is not 0. Row a's pairs are in
    memory row ``mem[a]`` of S, Y (m, M, D) and rho (m, M) (``mem`` None: row a is memory row a);
    ``order`` lists the filled slots newest first, ``H₀ = γ I`` with ``gamma`` (A,).
    """
    free = proj.sign().abs_()  # a 0/1 float mask: masks are used by multiplying
    if mem is not None:
        S, Y, rho = S.index_select(1, mem), Y.index_select(1, mem), rho.index_select(1, mem)
    d = _two_loop(torch.mul(g, free).neg_(), S, Y, rho, gamma, order).mul_(free)
    return d, rowdot(g, d)


def _pair(x_new: torch.Tensor, x: torch.Tensor, g_new: torch.Tensor, g: torch.Tensor, proj: torch.Tensor,
          lo: torch.Tensor, hi: torch.Tensor, S: torch.Tensor, Y: torch.Tensor, slot: int,
          mem: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """Steps 4–5 of :func:`lbfgsb_batched`: write the pair ``s = x⁺ − x``, ``y = (g⁺ − g)·free``
    (free where ``proj``, the old projected gradient step, is not 0) into slot ``slot`` of the
    rows' memory (``mem`` as in :func:`_direction`); return ``s·y``, ``y·y`` (A,), the new
    projected gradient step ``clip(x⁺ − g⁺) − x⁺`` (A, D) and its ∞-norm (A,). ``lo``, ``hi``:
    the bounds, tensors (D,).
    """
    s = x_new - x
    y = (g_new - g).mul_(proj.sign().abs_())
    if mem is None:
        S[slot], Y[slot] = s, y
    else:
        S[slot].index_copy_(0, mem, s)
        Y[slot].index_copy_(0, mem, y)
    proj_new = torch.clamp(x_new - g_new, lo, hi).sub_(x_new)
    return rowdot(s, y), rowdot(y, y), proj_new, proj_new.abs().amax(1)  # (vector_norm(inf): ~10x slower)


def _buffers(workspace: list, n: int, size: int, like: torch.Tensor) -> list[torch.Tensor]:
    """``n`` flat uninitialised tensors of at least ``size`` entries like ``like``, the ones kept in
    ``workspace`` if they fit (else new ones, which replace them there)."""
    fits = len(workspace) >= n and all(b.numel() >= size and b.dtype == like.dtype and b.device == like.device
                                       for b in workspace[:n])
    if not fits:
        workspace[:n] = [like.new_empty(size) for _ in range(n)]
    return list(workspace[:n])


def lbfgsb_batched(fun: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor,
                   lower: float | torch.Tensor, upper: float | torch.Tensor, max_iter: int = 100,
                   history: int = 10, *, ftol: float = 2.2e-9, pgtol: float = 1e-5, max_ls: int = 20,
                   armijo: float = 1e-4, workspace: list | None = None,
                   penalty: tuple[torch.Tensor, torch.Tensor] | None = None) -> LBFGSBResult:
    """Minimise B independent functions under bounds ``lower ≤ x ≤ upper``, all at once.

    ``fun(x, rows)`` takes a batch ``x`` (A, D) and the indices ``rows`` (A,) of the problems those
    rows belong to and returns their A values, a tensor (A,). Problems that have finished are
    dropped from the batch, and a line search re-evaluates only the problems still searching, so
    ``rows`` is a subset of ``range(B)``, in increasing order (so all B of them means every
    problem, in order): fun must pick its per-problem constants with it (``c[rows]``,
    ``targets[rows]``). Gradients come from autograd. ``lower``/``upper`` are numbers
    or tensors (D,): one box, shared by all problems.

    The method is a *projected* L-BFGS (Bertsekas' two-metric projection with the L-BFGS metric):

    1. A variable is **active** when it sits on a bound and its gradient pushes it outward; it is
       held fixed. The others are **free**.
    2. The direction is ``d = −H g`` on the free variables (H from the two-loop recursion over the
       last ``history`` pairs, ``H₀ = γI`` with ``γ = s·y / y·y``), zero on the active ones. Where
       that is not a descent direction, the scaled steepest descent ``−γ g`` (free part) is used.
    3. A projected backtracking line search: try ``x⁺ = clip(x + t·d)``, first with t = 1, then
       with a t from a cubic fit of f and its slope at both ends of the step (kept in
       [0.1 t, 0.5 t]; see :func:`_backtrack_factor`), until Armijo's
       condition ``f(x⁺) ≤ f(x) + armijo · g·(x⁺ − x)`` holds. Each problem has its own t; only the
       problems still searching are evaluated again.
    4. The pair ``(s, y) = (x⁺ − x, (g⁺ − g) on the free variables)`` is stored when ``s·y > 0``
       (else an empty slot), which keeps H positive definite. H models the curvature of the
       free variables only: an active variable does not move (its s is 0), but its gradient can
       change a lot, and leaving that change in y inflates ``y·y`` and so shrinks ``γ`` and every
       step. (Masking y this way took 20% fewer evaluations on the MNIST attack, same minima.)

    On a CPU with numba installed the whole loop runs compiled, one problem at a time between two
    evaluations, and a problem's backtracking steps join the other problems' next evaluation
    instead of extra small batches (:func:`course.attacks.lbfgs_cpu.minimise`: every problem
    sees the same points, in fewer, larger evaluations); elsewhere (a GPU) it is these tensor ops
    over the whole batch, the reference.

    ``penalty``, optional: ``(center, weight)``, tensors (B, D) and (B,): problem i minimises
    ``fun(x)_i + weight_i · ‖x − center_i‖²``, the quadratic term and its gradient computed here,
    without autograd (on a CPU inside the compiled loop, in the same sweep as the rest): the same
    objective as putting the term into ``fun``, for a fraction of its cost (the attack's distance
    term costs a quarter of an MLP's forward + backward pass through autograd).

    ``workspace``, optional: a list in which the L-BFGS memory buffers are kept, to be reused by
    the next call given the same list (an attack runs several in a row): fresh buffers of tens of
    megabytes cost page faults, about as much as an evaluation. Anything in it may be overwritten.
    The compiled CPU loop also keeps its buffer (up to 1 GiB) for the calling thread's next call,
    whatever its workspace; :func:`course.attacks.lbfgs_cpu.release` frees it.

    Where no acceptable step is found (or the step promises less than the rounding error of f),
    the memory is forgotten and the iteration restarts with scaled steepest descent, as in scipy's
    L-BFGS-B; only a problem whose memory was already empty stops there.

    A problem stops when its projected gradient ``‖clip(x − g) − x‖∞ ≤ pgtol`` or its value
    decreases by less than ``ftol · max(|f|, |f⁺|, 1)`` (scipy's L-BFGS-B uses the same two tests,
    with ``ftol = factr · eps``), when the decrease a step promises is below the rounding error of
    f (converged as far as this precision can tell), when its line search fails (not converged),
    or after ``max_iter`` iterations (not converged).

    This is not Byrd et al.'s L-BFGS-B (no generalised Cauchy point), but a true quasi-Newton
    method that respects the box, with about one batched forward + backward pass per iteration.
    """
    if x0.dim() != 2:
        raise ValueError(f"x0 must be a batch of flat vectors (B, D), got shape {tuple(x0.shape)}.")
    if max_iter < 0 or history < 1 or max_ls < 1:
        raise ValueError(f"Need max_iter ≥ 0, history ≥ 1 and max_ls ≥ 1, got max_iter={max_iter}, "
                         f"history={history}, max_ls={max_ls}.")
    B, D = x0.shape
    lo = torch.as_tensor(lower, dtype=x0.dtype, device=x0.device)
    hi = torch.as_tensor(upper, dtype=x0.dtype, device=x0.device)
    for name, v in (("lower", lo), ("upper", hi)):
        if v.dim() > 1 or (v.dim() == 1 and len(v) != D):
            raise ValueError(f"{name} must be a number or a tensor of shape ({D},) (one bound per "
                             f"coordinate, shared by all problems), got shape {tuple(v.shape)}.")
    if (lo > hi).any():
        raise ValueError("Some lower bound is above its upper bound.")
    bounds = [v.expand(D).contiguous() for v in (lo, hi)]  # (D,) each, for _pair
    if penalty is not None:
        center, weight = penalty
        if center.shape != (B, D) or weight.shape != (B,):
            raise ValueError(f"penalty must be (center, weight) of shapes ({B}, {D}) and ({B},), got "
                             f"{tuple(center.shape)} and {tuple(weight.shape)}.")
        center, weight = center.detach().to(x0).contiguous(), weight.detach().to(x0).contiguous()
    if lbfgs_cpu.available(x0, *bounds):
        return LBFGSBResult(*lbfgs_cpu.minimise(fun, x0.detach(), *bounds, max_iter, history, ftol, pgtol,
                                                max_ls, armijo, workspace if workspace is not None else [],
                                                _value_and_grad, None if penalty is None else (center, weight)))

    def evaluate(x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f, g = _value_and_grad(fun, x, rows)
        if penalty is not None:
            c0, w = (center, weight) if len(rows) == B else (take(center, rows), take(weight, rows))
            r = x - c0
            f = f + w * rowdot(r, r)
            g = g.add_(r.mul_(2 * w[:, None]))
        return f, g

    if lo.dim() == 0 and hi.dim() == 0:
        lo, hi = lo.item(), hi.item()  # plain numbers make clamp faster
    eps = torch.finfo(x0.dtype).eps

    # The results, filled in as problems finish.
    x_out = x0.detach().clamp(lo, hi)
    f_out = x0.new_full((B,), math.nan)
    it_out = torch.zeros(B, dtype=torch.long, device=x0.device)
    conv_out = torch.zeros(B, dtype=torch.bool, device=x0.device)
    if B == 0:
        return LBFGSBResult(x_out, f_out, it_out, conv_out, 0, 0)

    # The state of the problems still running (the "active batch"): row j is problem rows[j].
    rows = torch.arange(B, device=x0.device)
    x = x_out.clone()
    f, g = evaluate(x, rows)
    n_evals, n_rows = 1, B
    # The L-BFGS memory: a ring of m slots of (s, y) pairs for every problem, S and Y (m, B, D),
    # rho (m, B). Problem rows[j] of the active batch keeps its pairs in memory row rows[j]: the
    # memory never moves when the batch shrinks. Its two buffers come from `workspace` when it has
    # them. (Uninitialised: a slot is read only once `slots` lists it, and by then every row
    # still running has written it.)
    S, Y = (b[:history * B * D].view(history, B, D)
            for b in _buffers(workspace if workspace is not None else [], 2, history * B * D, x))
    rho = x.new_zeros(history, B)                                   # 1 / (s·y), 0 in an empty slot
    gamma = 1.0 / g.norm(dim=1).clamp_min(1e-12)  # before any pair: a first step of length ≤ 1
    slots: list[int] = []                         # filled slots, newest first (the same for all rows)
    iters = torch.zeros(B, dtype=torch.long, device=x0.device)
    proj = (x - g).clamp(lo, hi) - x              # the projected gradient step
    conv = proj.abs().amax(1) <= pgtol
    done = conv.clone()

    for k in range(max_iter + 1):
        # Retire the finished problems: write them out and drop them from the batch (their
        # memory stays where it is; only the batch's own tensors are compacted).
        if k == max_iter:
            done = torch.ones_like(done)
        if done.any():
            fin = done.nonzero().squeeze(1)
            out = take(rows, fin)
            x_out[out], f_out[out] = take(x, fin), take(f, fin)
            it_out[out], conv_out[out] = take(iters, fin), take(conv, fin)
            keep = (~done).nonzero().squeeze(1)
            if len(keep) == 0:
                break
            rows, x, f, g = take(rows, keep), take(x, keep), take(f, keep), take(g, keep)
            proj, iters, gamma = take(proj, keep), take(iters, keep), take(gamma, keep)

        # 1–2. The quasi-Newton direction on the free variables (those a projected gradient step
        #    moves: not on a bound with the gradient pushing outward); scaled steepest descent
        #    where it is not a descent direction.
        mem = None if len(rows) == B else rows      # row j's memory is row rows[j] (all: j)
        d, slope = _direction(g, proj, S, Y, rho, gamma, slots, mem)
        not_descent = (~(slope < 0)).nonzero().squeeze(1)
        if len(not_descent):
            free = take(proj, not_descent).sign().abs_()
            d[not_descent] = -take(gamma, not_descent)[:, None] * take(g, not_descent) * free
        # 3. Projected line search. First t = 1 for every problem...
        slot = k % history                          # the ring slot this iteration's pair goes to
        x_new = (x + d).clamp_(lo, hi)
        f_new, g_new = evaluate(x_new, rows)
        n_evals, n_rows = n_evals + 1, n_rows + len(rows)
        s = x_new - x
        step_slope = rowdot(g, s)                   # g·(x⁺ − x): the decrease the step promises
        noise = 4 * eps * f.abs().clamp_min(1.0)    # a change in f smaller than this is rounding
        rejected = ~(f_new <= f + armijo * step_slope)
        searching = rejected & (-step_slope > noise)
        stalled = rejected & ~searching             # nothing measurable left to gain: converged
        t = torch.ones_like(f)
        # ... then shorter steps, only for the problems whose step was not accepted.
        idx = searching.nonzero().squeeze(1)
        end = rowdot(take(g_new, idx), take(s, idx)) if len(idx) else None  # f' at the step's end
        for _ in range(max_ls - 1):
            if len(idx) == 0:
                break
            fx, st = take(f, idx), take(step_slope, idx)
            t[idx] *= _backtrack_factor(st, end, take(f_new, idx) - fx)
            xi = take(x, idx)
            xt = (xi + take(t, idx)[:, None] * take(d, idx)).clamp_(lo, hi)
            ft, gt = evaluate(xt, take(rows, idx))
            n_evals, n_rows = n_evals + 1, n_rows + len(idx)
            si = xt - xi
            st, end = rowdot(take(g, idx), si), rowdot(gt, si)
            x_new[idx], f_new[idx], g_new[idx], step_slope[idx] = xt, ft, gt, st
            ok = ft <= fx + armijo * st
            gone = ~ok & (-st <= take(noise, idx))
            searching[idx[ok | gone]] = False
            stalled[idx[gone]] = True
            still = ~(ok | gone)
            idx, end = idx[still], end[still]
        failed = searching | stalled                # no acceptable step: stay at x
        # A quasi-Newton direction along which no acceptable step was found: forget the memory and
        # restart from x with scaled steepest descent (as scipy's L-BFGS-B does); a problem whose
        # memory is already empty stops. (On a plateau of the cross-entropy a stale memory gives
        # directions that promise almost nothing; stopping there left attacks unfinished.)
        restart = failed & (rho.index_select(1, rows) != 0).any(0)
        back = failed.nonzero().squeeze(1)
        if len(back):
            x_new[back], g_new[back], f_new[back] = take(x, back), take(g, back), take(f, back)
        # 4. Store the curvature pair in this iteration's slot of the ring (where the step failed,
        #    s = y = 0); where s·y ≤ 0 the slot is left empty (rho = 0), which keeps H positive
        #    definite. 5. The next projected gradient step.
        sy, yy, proj, pg = _pair(x_new, x, g_new, g, proj, *bounds, S, Y, slot, mem)
        good = (sy > 1e-10 * yy) & ~failed
        r = torch.where(good, 1.0 / sy.clamp_min(1e-30), 0.0)
        if mem is None:
            rho[slot] = r
        else:
            rho[slot].index_copy_(0, mem, r)
        gamma = torch.where(good, sy / yy.clamp_min(1e-30), gamma)
        ri = restart.nonzero().squeeze(1)
        if len(ri):
            rho.index_fill_(1, take(rows, ri), 0.0)
            gamma[ri] = 1.0 / take(g, ri).norm(dim=1).clamp_min(1e-12)
        slots = [slot] + [i for i in slots if i != slot][: history - 1]
        # Move, then test for convergence.
        f_old = f
        x, f, g = x_new, f_new, g_new
        iters += (~failed).long()
        small_decrease = (f_old - f) <= ftol * torch.maximum(f_old.abs(), f.abs()).clamp_min(1.0)
        conv = (((pg <= pgtol) | small_decrease) & ~failed) | stalled
        done = (conv | searching) & ~restart
    return LBFGSBResult(x_out, f_out, it_out, conv_out, n_evals, n_rows)


# ---------------------------------------------------------------------------------------------
# The attack
# ---------------------------------------------------------------------------------------------

@dataclass
class AttackResult:
    """The outcome of :func:`lbfgs_attack`, one row per image."""

    adversarial: torch.Tensor  # (N, ...) like the images, every pixel in [0, 1]
    success: torch.Tensor      # (N,) bool: the model's arg-max on `adversarial` is the target
    distortion: torch.Tensor   # (N,) √(Σ(x' − x)² / n); where success is False: that of the attempt
    c: torch.Tensor            # (N,) the c whose minimiser is returned
    iterations: torch.Tensor   # (N,) L-BFGS iterations spent on each image, over all its runs
    n_evals: int               # batched forward + backward passes, in total
    n_rows: int                # single-image forward + backward passes they amount to

    @property
    def success_rate(self) -> float:
        return self.success.float().mean().item() if len(self.success) else float("nan")

    def mean_distortion(self) -> float:
        """Mean distortion over the successful images (the paper's "average minimum distortion")."""
        return self.distortion[self.success].mean().item() if self.success.any() else float("nan")


def distortion(x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """The paper's distortion per image: ``√(Σ (x' − x)² / n)``, n = pixels in one image. (N,)"""
    if x.shape != x_adv.shape:
        raise ValueError(f"x and x_adv must have the same shape, got {tuple(x.shape)} and "
                         f"{tuple(x_adv.shape)}.")
    diff = (x_adv - x).reshape(len(x), -1)
    return diff.pow(2).mean(1).sqrt()


def attack_objective(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, c: torch.Tensor,
                     image_shape: tuple[int, ...]):
    """The function of §4.1 for a batch of problems: ``c·‖x' − x‖² + CE(model(x'), l)``.

    ``x`` (B, D) clean images, flattened; ``targets`` (B,); ``c`` (B,); ``image_shape`` the shape
    the model wants for one image, e.g. (1, 28, 28). Returns ``fun(x', rows)`` in the form
    :func:`lbfgsb_batched` wants.
    """
    def fun(x_adv: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        # rows is a sorted subset of range(len(x)): all of it means the rows in order, no copy.
        pick = (lambda t: t) if len(rows) == len(x) else (lambda t: take(t, rows))
        r = x_adv - pick(x)
        logits = model(x_adv.view(len(x_adv), *image_shape))
        ce = F.cross_entropy(logits, pick(targets), reduction="none")
        return pick(c) * (r * r).sum(1) + ce

    return fun


def _check_inputs(model: nn.Module, images: torch.Tensor, targets,
                  labels) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Raise a clear error for inputs the attack cannot use; return targets (and labels) as tensors."""
    validate.check_model(model, "lbfgs_attack")
    validate.check_images(model, images, "lbfgs_attack")
    if images.dim() < 2:
        raise ValueError(f"images must have a batch axis (N, ...), got shape {tuple(images.shape)}. "
                         "For one image use images.unsqueeze(0).")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError(f"images must have pixels in [0, 1], got values in [{images.min():.3g}, "
                         f"{images.max():.3g}]. Scale them (e.g. divide by 255) or clamp them to [0, 1].")
    param = next(iter(model.parameters()), None)
    if param is not None and param.device != images.device:
        raise ValueError(f"The model is on {param.device} but the images are on {images.device}. "
                         f"Move them together, e.g. images.to({str(param.device)!r}).")

    def as_labels(v, name):
        v = validate.class_indices(v, "lbfgs_attack", name).to(images.device)
        if v.dim() == 0:
            v = v.expand(len(images)) if len(images) == 1 else v.reshape(1)
        if v.shape != (len(images),):
            raise ValueError(f"Expected one {name[:-1]} per image: {len(images)} images but {name} has "
                             f"shape {tuple(v.shape)}.")
        return v.long()

    targets = as_labels(targets, "targets")
    labels = None if labels is None else as_labels(labels, "labels")
    if len(images):
        n_classes = validate.probe(model, images, "lbfgs_attack")
        out = (targets < 0) | (targets >= n_classes)
        if out.any():
            i = int(out.nonzero()[0])
            raise ValueError(f"targets must be class indices in [0, {n_classes}); targets[{i}] = "
                             f"{int(targets[i])}.")
    if labels is not None:
        same = targets == labels
        if same.any():
            bad = same.nonzero().squeeze(1).tolist()
            raise ValueError(f"The target equals the true label for image(s) {bad[:10]}: an adversarial "
                             "example must change the label. Pick a different target for those images "
                             "(e.g. (labels + randint(1, n_classes)) % n_classes).")
    return targets, labels


def _cross_entropy(model: nn.Module, targets: torch.Tensor, image_shape: tuple[int, ...]):
    """The network's part of :func:`attack_objective`, ``CE(model(x'), l)``; the distance term is
    handed to the optimiser as its ``penalty`` (the same objective, computed without autograd)."""
    def fun(x_adv: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        t = targets if len(rows) == len(targets) else take(targets, rows)
        return F.cross_entropy(model(x_adv.view(len(x_adv), *image_shape)), t, reduction="none")

    return fun


def _run(model, x, targets, c, image_shape, max_iter, history, ftol, pgtol, start=None, workspace=None):
    """Minimise the objective (:func:`attack_objective`) for each row (clean image, target, c),
    starting at ``start`` (default: the clean image); return x', success, and the optimiser's result."""
    fun = _cross_entropy(model, targets, image_shape)
    x0 = x if start is None else start
    res = lbfgsb_batched(fun, x0, 0.0, 1.0, max_iter, history, ftol=ftol, pgtol=pgtol, workspace=workspace,
                         penalty=(x, c))
    with torch.no_grad():
        hit = model(res.x.view(len(x), *image_shape)).argmax(1) == targets
    return res.x, hit, res


def _attack_chunk(model, x, targets, image_shape, *, c_grid, c_factor, refine_steps, refine_points,
                  warm_start, max_iter, history, ftol, pgtol, workspace=None):
    """The attack for one batch of images x (B, D): the grid of c, then geometric bisection.
    ``workspace``: a list for the optimiser's buffers, shared by all its runs."""
    B, D = x.shape
    K = len(c_grid)
    ar = torch.arange(B, device=x.device)
    dist = lambda xa, x0: (xa - x0).pow(2).mean(-1).sqrt()  # noqa: E731

    # Stage 1: every image with every c of the grid, as one batch of B·K problems (image-major).
    cs = c_grid.repeat(B)                                           # (B·K,)
    xa, hit, res = _run(model, x.repeat_interleave(K, 0), targets.repeat_interleave(K), cs,
                        image_shape, max_iter, history, ftol, pgtol, workspace=workspace)
    n_evals, n_rows = res.n_evals, res.n_rows
    xa, hit, cs = xa.view(B, K, D), hit.view(B, K), cs.view(B, K)
    iterations = res.iterations.view(B, K).sum(1)

    # The answer so far: the successful run with the smallest distortion; else the smallest c's run.
    d = dist(xa, x[:, None]).masked_fill(~hit, math.inf)           # (B, K), inf where it failed
    best_d, j = d.min(1)
    success = torch.isfinite(best_d)
    j = torch.where(success, j, torch.full_like(j, K - 1))
    best_x, best_c = xa[ar, j], cs[ar, j]

    # Stage 2: refine c between c_ok, the largest c that succeeded, and c_fail, the next one up.
    # Each round tries P values of c spaced geometrically inside (c_ok, c_fail), for every image
    # at once (P = 1 is bisection), warm-started (optionally) at the minimiser for c_ok.
    # The grid is in decreasing order, so c_ok is the first hit.
    P = refine_points
    first_hit = hit.float().argmax(1)
    c_ok = torch.where(success, cs[ar, first_hit], torch.zeros_like(best_c))
    x_ok = xa[ar, first_hit]
    c_fail = c_ok * c_factor
    live = success.nonzero().squeeze(1)
    frac = torch.arange(1, P + 1, dtype=x.dtype, device=x.device) / (P + 1)   # (P,)
    for _ in range(refine_steps if len(live) else 0):
        L = len(live)
        lo, hi = c_ok[live, None], c_fail[live, None]
        c_try = lo * (hi / lo) ** frac                                         # (L, P), increasing
        start = x_ok[live].repeat_interleave(P, 0) if warm_start else None
        xm, hm, res = _run(model, x[live].repeat_interleave(P, 0), targets[live].repeat_interleave(P),
                           c_try.reshape(-1), image_shape, max_iter, history, ftol, pgtol, start,
                           workspace=workspace)
        n_evals, n_rows = n_evals + res.n_evals, n_rows + res.n_rows
        iterations[live] += res.iterations.view(L, P).sum(1)
        xm, hm = xm.view(L, P, D), hm.view(L, P)
        # New bracket: the largest c that succeeded, and the smallest failure above it.
        k = torch.arange(P, device=x.device)
        k_ok = torch.where(hm, k, -1).amax(1)                                  # -1: none succeeded
        k_fail = torch.where((k > k_ok[:, None]) & ~hm, k, P).amin(1)          # P: no failure above
        won = k_ok >= 0
        c_ok[live[won]] = c_try[won, k_ok[won]]
        x_ok[live[won]] = xm[won, k_ok[won]]
        has_fail = k_fail < P
        c_fail[live[has_fail]] = c_try[has_fail, k_fail[has_fail]]
        # Keep the successful run with the smallest distortion.
        dm = dist(xm, x[live, None]).masked_fill(~hm, math.inf)               # (L, P)
        dmin, kbest = dm.min(1)
        better = dmin < best_d[live]
        upd = live[better]
        kb = kbest[better]
        best_x[upd], best_d[upd], best_c[upd] = xm[better, kb], dmin[better], c_try[better, kb]
    return best_x, success, best_c, iterations, n_evals, n_rows


def default_batch_size(device: torch.device | str) -> int:
    """Images attacked together when ``lbfgs_attack`` is not told: 256 on a CPU, 4096 on a GPU.

    A batch of B images holds B · c_steps problems, each with ``2 · history`` vectors of L-BFGS
    memory (62 KB per problem for MNIST with 10 pairs). On a 2-core CPU the time per image is flat
    from about 256 images up (measured on 512 images: 64 → 7.3 ms, 128 → 5.7–6.3, 256 → 4.6–5.2,
    512 → 4.6–4.9 ms per image for FC100-100-10 in the default profile), while the memory keeps
    growing; a GPU needs thousands of rows to be busy.
    """
    return 4096 if torch.device(device).type == "cuda" else 256


def lbfgs_attack(model: nn.Module, images: torch.Tensor, targets: torch.Tensor | Sequence[int], *,
                 labels: torch.Tensor | Sequence[int] | None = None, c_init: float = 10.0,
                 c_factor: float = 10.0, c_steps: int = 5, refine_steps: int = 2, refine_points: int = 3,
                 max_iter: int = 100, history: int = 10, warm_start: bool = True,
                 batch_size: int | None = None, ftol: float = 1e-6, pgtol: float = 1e-5) -> AttackResult:
    """Adversarial examples by box-constrained L-BFGS (Szegedy et al. §4.1), batched over images.

    For each image ``images[i]`` (pixels in [0, 1]) and its target class ``targets[i]``, minimise
    ``c·‖x' − x‖² + CE(model(x'), target)`` over ``x' ∈ [0, 1]^n`` for the c of a geometric grid
    ``c_init · c_factor^(−k)``, k = 0..c_steps−1, then ``refine_steps`` rounds that each try
    ``refine_points`` values of c spaced geometrically between the largest c that reached the target
    and the next one up (``refine_points=1`` is bisection); each round shrinks that bracket (in log
    c) by a factor ``refine_points + 1``. With ``warm_start`` a refinement run starts at the
    minimiser for the bracket's lower end instead of the clean image. Every run is at most
    ``max_iter`` L-BFGS iterations with ``history`` pairs, tolerances ``ftol``/``pgtol`` as in
    scipy's L-BFGS-B.

    - ``labels`` (optional): the true labels; if given, a target equal to its label is refused.
    - ``batch_size``: images attacked together (each with its ``c_steps`` values of c, so a batch
      holds ``batch_size · c_steps`` problems); None = chosen from the device by
      :func:`default_batch_size` (256 on a CPU, 4096 on a GPU), so that 10,000 images never hold
      gigabytes of L-BFGS history at once.
    - Runs on the device of the model and the images (they must match). A model in training mode is
      switched to eval mode for the attack (dropout off) and every submodule's mode is restored
      afterwards; its parameters are never changed and no gradient is left on them.
    - ``n_evals`` counts batched forward + backward passes, ``n_rows`` the single-image passes they
      amount to (the work a one-image-at-a-time implementation would do for the same runs).

    Where an image never reaches its target, ``success`` is False and ``adversarial`` holds the
    attempt with the smallest c (the strongest push toward the target).
    """
    targets, labels = _check_inputs(model, images, targets, labels)
    if not (c_init > 0 and c_factor > 1 and c_steps >= 1 and refine_steps >= 0 and refine_points >= 1
            and max_iter >= 1):
        raise ValueError("Need c_init > 0, c_factor > 1, c_steps ≥ 1, refine_steps ≥ 0, "
                         f"refine_points ≥ 1 and max_iter ≥ 1; got c_init={c_init}, c_factor={c_factor}, c_steps={c_steps}, "
                         f"refine_steps={refine_steps}, refine_points={refine_points}, max_iter={max_iter}.")
    N = len(images)
    image_shape = tuple(images.shape[1:])
    x_all = images.detach().reshape(N, math.prod(image_shape))
    c_grid = c_init * c_factor ** -torch.arange(c_steps, dtype=images.dtype, device=images.device)
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None (chosen from the device), got {batch_size!r}.")
    batch_size = batch_size or default_batch_size(images.device)

    adv, ok, cs, its = [], [], [], []
    workspace: list = []  # the optimiser's buffers, reused by every run of every chunk
    n_evals = n_rows = 0
    modes = to_eval(model)
    try:
        for s in range(0, N, batch_size):
            bx, bok, bc, bit, ne, nr = _attack_chunk(
                model, x_all[s:s + batch_size], targets[s:s + batch_size], image_shape, c_grid=c_grid,
                c_factor=c_factor, refine_steps=refine_steps, refine_points=refine_points,
                warm_start=warm_start, max_iter=max_iter, history=history, ftol=ftol, pgtol=pgtol,
                workspace=workspace)
            adv.append(bx), ok.append(bok), cs.append(bc), its.append(bit)
            n_evals, n_rows = n_evals + ne, n_rows + nr
    finally:
        restore(modes)

    if N == 0:
        empty = images.new_zeros(0)
        return AttackResult(images.detach().clone(), empty.bool(), empty, empty, empty.long(), 0, 0)
    x_adv = torch.cat(adv).view_as(images).clamp(0, 1)
    return AttackResult(adversarial=x_adv, success=torch.cat(ok), distortion=distortion(images.detach(), x_adv),
                        c=torch.cat(cs), iterations=torch.cat(its), n_evals=n_evals, n_rows=n_rows)
