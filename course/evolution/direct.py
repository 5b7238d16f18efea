"""The direct encoding: the genome *is* the image, one gene per pixel value.

Nguyen et al. evolve MNIST digits (and ImageNet images) this way: every pixel value starts uniform
in [0, 1] and, each generation, every gene mutates with probability ``rate`` (0.1) by *polynomial
mutation* (Deb & Goyal's operator, distribution index η = 15)::

    u ~ U(0, 1)
    δ = (2u)^(1/(η+1)) − 1            if u < 0.5
    δ = 1 − (2(1 − u))^(1/(η+1))      otherwise
    x ← clip(x + δ · (high − low), low, high)

δ lies in [−1, 1] and is sharply peaked at 0: a large η makes small steps likely and large ones
rare. For the direct encoding ``low, high = 0, 1``. The paper halves the rate every 1000
generations ([S]); the authors' code keeps it static and adds simulated binary crossover ([C]).
We keep the static rate by default (``halving_every=None``) and do no crossover.

A population is one tensor ``(P, C, H, W)``. Only the genes that mutate (about 10%) draw random
numbers: the gaps between them are geometric (:func:`mutation_draws`). The tensor version here runs
on any device; on the CPU the same mutation runs compiled (:mod:`~course.evolution.mutation_cpu`,
about 3× faster there, another random stream of the same distribution); ``method=`` picks one.
"""
from __future__ import annotations

import math

import torch

from . import mutation_cpu


def polynomial_delta(u: torch.Tensor, eta: float) -> torch.Tensor:
    """The polynomial-mutation step δ ∈ [−1, 1] for uniform draws ``u`` ∈ [0, 1).

    The two branches are mirror images, so one power does: with v = min(u, 1 − u),
    δ = ∓(1 − (2v)^(1/(η+1))), negative for u < 0.5.

    Computed in place in one scratch tensor (``u`` is untouched): the same floating-point
    operations as the formula, so the same bits, with fewer temporaries. 1 − p is written
    −p + 1 (IEEE subtraction *is* adding the negation), and the sign is copied from u − 0.5,
    which is negative exactly when u < 0.5 (step ≥ +0, so a zero step becomes −0 there, as −step).
    """
    step = torch.rsub(u, 1.0)                                  # 1 − u
    torch.minimum(u, step, out=step)                           # v
    step.mul_(2.0).pow_(1.0 / (eta + 1.0)).neg_().add_(1.0)    # 1 − (2v)^(1/(η+1)) ≥ 0
    return step.copysign_(u - 0.5)


def _geometric_gaps(k: int, log_q: float, generator, device) -> torch.Tensor:
    """``k`` geometric gaps ``1 + ⌊log U / log q⌋`` (int64), drawn as ``1 − u`` for u ~ U[0, 1).

    1 − u is in (0, 1]: no log(0). The quotient is ≥ 0, so the conversion's truncation is the
    floor. The float64 steps are in place on the one draw. (Apple's MPS has no float64: there the
    draw is float32, whose 24 bits cap a gap at log 2⁻²⁴ / log q, a tail of probability 6e-8.)
    """
    dtype = torch.float32 if torch.device(device or "cpu").type == "mps" else torch.float64
    u = torch.rand(k, generator=generator, device=device, dtype=dtype)
    return u.neg_().log1p_().div_(log_q).long().add_(1)


def bernoulli_positions(n: int, rate: float, generator: torch.Generator | None = None,
                        device=None) -> torch.Tensor:
    """The sorted indices in range(n) where independent coins of probability ``rate`` land heads.

    Same distribution as ``(torch.rand(n) < rate).nonzero()``, but drawn by skipping ahead: the
    gap to the next head is geometric, ``1 + ⌊log U / log(1 − rate)⌋``, so it costs about
    ``rate · n`` random numbers instead of ``n`` (a tenth at the paper's rate of 0.1).
    """
    if rate <= 0.0 or n == 0:
        return torch.empty(0, dtype=torch.long, device=device)
    if rate >= 1.0:
        return torch.arange(n, device=device)
    log_q = math.log1p(-rate)
    k = int(n * rate + 6 * math.sqrt(n * rate) + 16)  # 6σ more gaps than expected
    rounds, last = [], -1
    while last < n - 1:  # almost always a single round
        rounds.append(_geometric_gaps(k, log_q, generator, device).cumsum_(0).add_(last))
        last = int(rounds[-1][-1])
    positions = rounds[0] if len(rounds) == 1 else torch.cat(rounds)
    # Sorted, so the ones below n are a prefix (a slice is ~10x cheaper than a boolean mask).
    return positions[: int(torch.searchsorted(positions, n))]


def polynomial_mutation(x: torch.Tensor, rate: float, eta: float = 15.0,
                        generator: torch.Generator | None = None,
                        low: float = 0.0, high: float = 1.0, method: str | None = None) -> torch.Tensor:
    """Mutate each entry of ``x`` with probability ``rate``: add δ·(high−low), clip to [low, high].

    Returns a new tensor; ``x`` is untouched. ``generator`` (on ``x``'s device) makes it
    reproducible. Only the entries that mutate draw a δ (see :func:`mutation_draws`).
    ``method``: ``"compiled"`` (:mod:`~course.evolution.mutation_cpu`: float32/64 on the CPU),
    ``"tensor"`` (any device and precision), or None: the compiled one where it applies. The two
    draw different random streams with the same distribution.
    """
    _check_mutation(rate, eta)
    return _mutate_flat_(x.clone(memory_format=torch.contiguous_format), rate, eta, generator, low, high, method)


def polynomial_mutation_(x: torch.Tensor, rate: float, eta: float = 15.0,
                         generator: torch.Generator | None = None,
                         low: float = 0.0, high: float = 1.0, method: str | None = None) -> torch.Tensor:
    """:func:`polynomial_mutation` in place on a contiguous ``x`` (returned): the same random
    draws and the same results, without the copy."""
    _check_mutation(rate, eta)
    if not x.is_contiguous():
        raise ValueError("polynomial_mutation_ mutates a contiguous tensor in place; use polynomial_mutation.")
    return _mutate_flat_(x, rate, eta, generator, low, high, method)


def _check_mutation(rate: float, eta: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"Mutation rate must be a probability in [0, 1], got {rate}.")
    if eta < 0:
        raise ValueError(f"The distribution index eta must be >= 0, got {eta}.")


def _draws_per_round(n: int, rate: float) -> int:
    """Random numbers drawn at once for ``n`` coins of probability ``rate``: 6σ more gaps than
    expected, so that one round almost always reaches past the last gene."""
    return int(n * rate + 6 * math.sqrt(n * rate) + 16)


_U_BITS = 24          # float32's significand: u on the grid m·2⁻²⁴, the grid torch.rand draws float32 on
_TWO_U = float(1 << _U_BITS)


def mutation_draws(n: int, rate: float, generator: torch.Generator | None = None,
                   device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Which of ``n`` genes mutate (independent coins of probability ``rate``) and a uniform draw
    for each: ``(positions, u)``, the sorted int64 positions and one float32 ``u`` ∈ [0, 1) per
    position (for its polynomial step δ), from ONE float64 random number per mutating gene.

    Skipping ahead as in :func:`bernoulli_positions`: the gap to the next mutating gene is
    geometric, ``1 + ⌊log W / log(1 − rate)⌋`` for W uniform in (0, 1]. A float64 uniform U
    carries 53 random bits; ``a = U · 2²⁴`` splits them exactly into its integer part (24 bits:
    ``u = ⌊a⌋ · 2⁻²⁴``, the very grid of a float32 ``torch.rand``) and its fraction (the other 29
    bits: ``W = 1 − frac(a)`` ∈ [2⁻²⁹, 1], independent of u). The gap's logarithm is taken in
    float32 (24 bits are plenty for ⌊log W / log q⌋; W ≥ 2⁻²⁹ caps a gap at
    ``log 2⁻²⁹ / log q``, 191 at the paper's rate, a tail of probability 2⁻²⁹ ≈ 1.9e-9).

    One draw per gene instead of two (a float64 gap, then a float32 u) saves about a quarter of
    the tensor version's time (a float64 costs barely more than a float32 from torch's
    generator). Apple's MPS has no float64: there the gaps and the u's are two float32 draws (see
    :func:`_geometric_gaps`). The compiled CPU version draws its own way
    (:mod:`~course.evolution.mutation_cpu`).
    """
    if rate <= 0.0 or n == 0:
        return (torch.empty(0, dtype=torch.long, device=device),
                torch.empty(0, dtype=torch.float32, device=device))
    if rate >= 1.0:
        return (torch.arange(n, device=device),
                torch.rand(n, generator=generator, device=device, dtype=torch.float32))
    log_q = math.log1p(-rate)
    k = _draws_per_round(n, rate)
    if torch.device(device or "cpu").type == "mps":
        positions = bernoulli_positions(n, rate, generator, device)
        return positions, torch.rand(positions.shape, generator=generator, device=device, dtype=torch.float32)
    rounds, last = [], -1
    while last < n - 1:  # almost always a single round
        a = torch.rand(k, generator=generator, device=device, dtype=torch.float64).mul_(_TWO_U)
        high = a.floor()
        w = a.sub_(high).neg_().add_(1.0).to(torch.float32)      # 1 − frac(a) ∈ [2⁻²⁹, 1]: log w ≤ 0
        # 1 + log W / log q ≥ 1, truncated: the gap 1 + ⌊log W / log q⌋.
        gaps = w.log_().mul_(1.0 / log_q).add_(1.0).long()
        positions = gaps.cumsum_(0).add_(last)
        rounds.append((positions, high))
        last = int(positions[-1])
    positions = rounds[0][0] if len(rounds) == 1 else torch.cat([p for p, _ in rounds])
    high = rounds[0][1] if len(rounds) == 1 else torch.cat([h for _, h in rounds])
    # Sorted, so the ones below n are a prefix (a slice is ~10x cheaper than a boolean mask).
    m = int(torch.searchsorted(positions, n))
    return positions[:m], high[:m].to(torch.float32).mul_(1.0 / _TWO_U)


METHODS = ("compiled", "tensor")


def _choose_method(x: torch.Tensor, method: str | None) -> str:
    """``None``: the compiled CPU version where it applies (numba, float32/64 on the CPU; several
    times faster there), else the tensor version. Naming one checks it applies."""
    if method is None:
        return "compiled" if mutation_cpu.available(x) else "tensor"
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} or None (automatic), got {method!r}.")
    if method == "compiled" and not mutation_cpu.available(x):
        raise ValueError("The compiled mutation takes float32 or float64 CPU tensors that need no gradient, with "
                         f"numba installed; got {x.dtype} on {x.device}. Use method='tensor' (or None to choose "
                         "automatically).")
    return method


def _mutate_flat_(out: torch.Tensor, rate: float, eta: float, generator, low: float, high: float,
                  method: str | None = None) -> torch.Tensor:
    """The mutation itself, in place on the contiguous ``out`` (arguments already checked)."""
    flat = out.view(-1)
    if _choose_method(out, method) == "compiled":
        if rate > 0.0 and flat.numel():
            mutation_cpu.polynomial_mutation_(flat.numpy(), rate, eta, mutation_cpu.draw_seed(generator),
                                              _draws_per_round(flat.numel(), rate), low, high)
        return out
    where, u = mutation_draws(flat.numel(), rate, generator, out.device)
    if out.dtype == torch.float64:
        u = u.double()                   # exact: u is on a 24-bit grid; δ then in float64
    delta = polynomial_delta(u, eta)     # float32 for float32 genomes (and for half precision)
    if high - low != 1.0:  # multiplying by 1.0 changes no bit: skip the pass
        delta.mul_(high - low)
    # Gather / scatter the mutating genes: index_select and scatter_ are the fastest ways on CPU
    # (several times faster than flat[where], scatter_ ~3x faster than index_copy_).
    genes = flat.index_select(0, where)
    flat.scatter_(0, where, genes.add_(delta).clamp_(low, high))  # distinct positions: a plain copy
    return out


def expected_abs_delta(eta: float) -> float:
    """E|δ| of polynomial mutation: ∫₀^½ (1 − (2u)^(1/(η+1))) du · 2 = 1/(η+2).

    (By symmetry both halves contribute equally; substitute v = 2u.) Used by the tests.
    """
    return 1.0 / (eta + 2.0)


class DirectEncoding:
    """One gene per pixel value; the genome tensor is the image.

    ``shape``: (1, 28, 28) for MNIST, (3, 224, 224) for ImageNet (three genes per pixel).
    ``rate``: per-gene mutation probability; ``eta``: polynomial-mutation index.
    ``halving_every``: halve the rate every that many generations (the paper's schedule), or None.
    """

    def __init__(self, shape=(1, 28, 28), rate: float = 0.1, eta: float = 15.0,
                 halving_every: int | None = None):
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape must be (channels, height, width), got {tuple(shape)}.")
        if halving_every is not None and halving_every < 1:
            raise ValueError(f"halving_every must be a positive number of generations or None, got {halving_every}.")
        self.image_shape = tuple(int(s) for s in shape)
        self.rate, self.eta, self.halving_every = float(rate), float(eta), halving_every
        polynomial_mutation(torch.zeros(1), self.rate, self.eta)  # validate rate and eta now

    def __repr__(self) -> str:
        return (f"DirectEncoding(shape={self.image_shape}, rate={self.rate}, eta={self.eta}, "
                f"halving_every={self.halving_every})")

    def rate_at(self, generation: int) -> float:
        """The mutation rate in force at ``generation`` (the halving schedule, if any)."""
        if self.halving_every is None:
            return self.rate
        return self.rate * 0.5 ** (generation // self.halving_every)

    def random(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` random genomes, uniform in [0, 1], on the generator's device."""
        return torch.rand((n, *self.image_shape), generator=generator, device=generator.device)

    def mutate(self, genomes: torch.Tensor, generator: torch.Generator, generation: int = 0) -> torch.Tensor:
        """Mutated copies of ``genomes`` (P, C, H, W)."""
        return polynomial_mutation(genomes, self.rate_at(generation), self.eta, generator)

    def mutate_(self, genomes: torch.Tensor, generator: torch.Generator, generation: int = 0) -> torch.Tensor:
        """:meth:`mutate` in place on contiguous ``genomes`` (returned): same draws, same result, no copy.

        :func:`~course.evolution.map_elites.map_elites` uses it on the parents it has just copied
        out of the archive.
        """
        return polynomial_mutation_(genomes, self.rate_at(generation), self.eta, generator)

    def offspring_(self, store: torch.Tensor, index: torch.Tensor, out: torch.Tensor,
                   generator: torch.Generator, generation: int = 0) -> torch.Tensor:
        """``out`` filled with mutated copies of the genomes ``store[index]``, and returned: the same
        draws and result as :meth:`mutate_` on ``torch.index_select(store, 0, index, out=out)``.
        On the CPU the parents are copied in the compiled mutation's first call (one step fewer);
        elsewhere it is that index_select, then :meth:`mutate_`. (:meth:`bind_offspring` once.)"""
        return self.bind_offspring(store, out)(index, generator, generation)

    def bind_offspring(self, store: torch.Tensor, out: torch.Tensor):
        """``make(index, generator, generation=0)``: :meth:`offspring_` for this ``store`` and ``out``,
        again and again. Whether the compiled copy-and-mutate applies, the arrays' views and the
        mutation's constants are settled here, once: :func:`~course.evolution.map_elites.map_elites`
        binds its archive and its children's memory for a whole run (for a small classifier on the
        CPU, making them anew every generation cost as much as the compiled mutation itself).
        ``make`` checks the indices: one per row of ``out`` (the compiled call checks their range)."""
        def check(index):
            if index.dim() != 1 or index.shape[0] != out.shape[0]:
                raise ValueError(f"offspring_: {tuple(index.shape)} parent indices for {out.shape[0]} rows of out; "
                                 "give one index per row (out = store.new_empty((len(index), *store.shape[1:]))).")

        def take_then_mutate(index, generator, generation=0):
            check(index)
            return self.mutate_(torch.index_select(store, 0, index, out=out), generator, generation)

        if not (mutation_cpu.available(out) and out.is_contiguous() and out.numel()
                and isinstance(store, torch.Tensor) and store.dtype == out.dtype and store.is_cpu
                and store.is_contiguous() and not store.requires_grad and store.shape[1:] == out.shape[1:]):
            return take_then_mutate
        # (numpy views: cheaper than torch's)
        rows, store_rows = out.shape[0], store.numpy().reshape(store.shape[0], -1)
        mutation = mutation_cpu.Mutation(out.numpy().reshape(-1), self.eta, 0.0, 1.0, rows=rows, own_buffers=True)
        size, per_round = mutation.flat.size, {}

        def make(index, generator, generation=0):
            rate = self.rate_at(generation)
            if not (rate > 0.0 and index.is_cpu and index.dtype == torch.int64 and index.shape == (rows,)):
                return take_then_mutate(index, generator, generation)
            if rate not in per_round:
                per_round[rate] = _draws_per_round(size, rate)
            mutation(rate, mutation_cpu.draw_seed(generator), per_round[rate], store_rows, index.numpy())
            return out
        return make

    def render(self, genomes: torch.Tensor) -> torch.Tensor:
        """The images: the genomes themselves (already in [0, 1])."""
        return genomes
