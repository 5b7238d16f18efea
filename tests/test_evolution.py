"""MAP-Elites, the direct and CPPN encodings: statistics, exactness, semantics, determinism, errors."""
import functools
import math

import numpy as np
import pytest
import torch
from torch import nn

from course.evolution import (Archive, CPPNEncoding, DirectEncoding, EmptyArchiveError, expected_abs_delta,
                              map_elites, polynomial_delta, polynomial_mutation, render_reference)
from course.evolution.cppn import ACTIVATION_AT_ZERO, N_INPUTS, node_depth, reachability
from course.evolution import cppn_cpu, cppn_float32, direct, mutation_cpu
from course.evolution.direct import bernoulli_positions, mutation_draws, polynomial_mutation_
from course.evolution.map_elites import take


pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def linear_classifier(n_classes=10, shape=(1, 28, 28), seed=0):
    """A fixed random linear classifier: cheap, deterministic, returns logits."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), n_classes))


# -- polynomial mutation ---------------------------------------------------------------------

def test_polynomial_delta_matches_its_distribution():
    eta = 15.0
    d = polynomial_delta(torch.rand(400_000, generator=gen(), dtype=torch.float64), eta)
    assert float(d.min()) >= -1 and float(d.max()) <= 1
    assert abs(float(d.mean())) < 2e-3                                  # symmetric
    assert float(d.abs().mean()) == pytest.approx(expected_abs_delta(eta), rel=0.01)   # 1/17
    p = 1 / (eta + 1)
    assert float((d * d).mean()) == pytest.approx(1 - 2 / (p + 1) + 1 / (2 * p + 1), rel=0.02)
    # Larger η, smaller steps.
    d50 = polynomial_delta(torch.rand(100_000, generator=gen(1)), 50.0)
    assert float(d50.abs().mean()) == pytest.approx(1 / 52, rel=0.02)


def test_polynomial_delta_is_the_papers_formula():
    u = torch.rand(10_000, generator=gen(), dtype=torch.float64)
    p = 1 / 16
    paper = torch.where(u < 0.5, (2 * u).pow(p) - 1, 1 - (2 * (1 - u)).pow(p))
    assert torch.allclose(polynomial_delta(u, 15.0), paper, atol=1e-12, rtol=0)


def test_bernoulli_positions_are_independent_coins():
    g = gen()
    hits = torch.zeros(500)
    counts = []
    for _ in range(2000):
        pos = bernoulli_positions(500, 0.1, g)
        assert bool((pos[1:] > pos[:-1]).all()) and (len(pos) == 0 or 0 <= int(pos[0]) and int(pos[-1]) < 500)
        hits[pos] += 1
        counts.append(len(pos))
    counts = torch.tensor(counts, dtype=torch.float64)
    assert float(counts.mean()) == pytest.approx(50, rel=0.02)           # binomial mean n·p
    assert float(counts.var()) == pytest.approx(45, rel=0.1)             # and variance n·p·(1 − p)
    assert float((hits / 2000 - 0.1).abs().max()) < 0.035                # every position equally likely
    assert len(bernoulli_positions(7, 1.0, g)) == 7 and len(bernoulli_positions(7, 0.0, g)) == 0


def test_polynomial_mutation_rate_and_spread():
    x = torch.full((200_000,), 0.5)
    y = polynomial_mutation(x, rate=0.1, eta=15, generator=gen())
    assert torch.equal(x, torch.full((200_000,), 0.5))                  # input untouched
    changed = y != x
    assert float(changed.float().mean()) == pytest.approx(0.1, abs=0.003)
    assert float((y - x)[changed].abs().mean()) == pytest.approx(1 / 17, rel=0.02)
    # Clipped at the edges; a wider range scales the step.
    z = polynomial_mutation(torch.ones(10_000), 1.0, 15, gen())
    assert float(z.max()) <= 1 and float(z.min()) >= 0
    w = polynomial_mutation(torch.zeros(100_000), 1.0, 15, gen(), low=-10, high=10)
    assert float(w.abs().mean()) == pytest.approx(20 / 17, rel=0.03)
    with pytest.raises(ValueError, match="probability"):
        polynomial_mutation(x, 1.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mutation_arithmetic_is_the_reference_formulas_bit_for_bit(dtype):
    """The in-place implementations give the very bits of the plain formulas (seeded runs are
    quoted in the lessons), signed zeros included."""
    g = gen(3)
    u = torch.cat([torch.rand(50_000, generator=g, dtype=dtype),
                   torch.tensor([0.0, 0.25, 0.5, 0.5 - 1e-8, 0.75, 1 - 1e-8], dtype=dtype)])
    for eta in (0.0, 1.0, 15.0, 20.0):
        v = torch.minimum(u, 1.0 - u)
        step = 1.0 - (2.0 * v).pow(1.0 / (eta + 1.0))
        ref = torch.where(u < 0.5, -step, step)
        d = polynomial_delta(u, eta)
        assert torch.equal(d, ref) and torch.equal(d.signbit(), ref.signbit())
    for n, rate, seed in [(156_800, 0.1, 0), (1000, 0.01, 1), (30, 0.5, 2)]:
        g = gen(seed)
        log_q, k = math.log1p(-rate), int(n * rate + 6 * math.sqrt(n * rate) + 16)
        rounds, last = [], -1
        while last < n - 1:
            r = torch.rand(k, generator=g, dtype=torch.float64)
            rounds.append(last + torch.cumsum((torch.log1p(-r) / log_q).floor_().long() + 1, 0))
            last = int(rounds[-1][-1])
        ref = torch.cat(rounds)
        assert torch.equal(bernoulli_positions(n, rate, gen(seed)), ref[ref < n])


def test_in_place_mutation_is_the_copying_one():
    x = torch.rand(20, 1, 28, 28, generator=gen(1))
    for kw in (dict(rate=0.1), dict(rate=0.7, eta=3.0, low=-1.0, high=2.0)):
        y = polynomial_mutation(x, generator=gen(2), **kw)
        z = x.clone()
        assert polynomial_mutation_(z, generator=gen(2), **kw) is z and torch.equal(y, z)
    enc = DirectEncoding(halving_every=5)
    z = x.clone()
    assert torch.equal(enc.mutate(x, gen(4), 12), enc.mutate_(z, gen(4), 12)) and not torch.equal(x, z)
    with pytest.raises(ValueError, match="contiguous"):
        polynomial_mutation_(x.transpose(2, 3), 0.1)
    with pytest.raises(ValueError, match="probability"):
        polynomial_mutation_(x, 1.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_offspring_are_the_mutated_copies_of_the_parents(dtype):
    """offspring_ = index_select, then mutate_: the same draws and bits (compiled copy for float32/64,
    index_select + the tensor mutation for bfloat16), generation by generation and in map_elites."""
    enc = DirectEncoding(halving_every=2)
    store = torch.rand(10, 1, 28, 28, generator=gen(3)).to(dtype)
    index = torch.randint(10, (37,), generator=gen(4))
    for generation in (1, 5):
        want = enc.mutate_(torch.index_select(store, 0, index), gen(generation), generation)
        out = torch.empty(37, 1, 28, 28, dtype=dtype)
        assert enc.offspring_(store, index, out, gen(generation), generation) is out
        assert torch.equal(out, want)
    assert not torch.equal(out, torch.index_select(store, 0, index))    # they did mutate
    # One bound maker, generation after generation, as map_elites uses it (the rate halves twice).
    out = torch.empty(37, 1, 28, 28, dtype=dtype)
    make = enc.bind_offspring(store, out)
    for generation in (1, 2, 3, 4, 5, 1):
        want = enc.mutate_(torch.index_select(store, 0, index), gen(generation), generation)
        assert make(index, gen(generation), generation) is out and torch.equal(out, want)
    for rows in (index[:5], torch.cat([index, index]), index[None]):
        with pytest.raises(ValueError, match="one index per row"):
            make(rows, gen(2), 2)
    with pytest.raises(IndexError, match=r"\[0, 10\)"):
        enc.offspring_(store.float(), torch.tensor([3, 10]), torch.empty(2, 1, 28, 28), gen(1))


def test_map_elites_makes_the_same_children_with_and_without_offspring_():
    class TakeThenMutate(DirectEncoding):
        bind_offspring = None
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()
    runs = [map_elites(model, cls(), generations=8, offspring=30, seed=2, progress=False)
            for cls in (DirectEncoding, TakeThenMutate)]
    assert torch.equal(runs[0].history, runs[1].history)
    assert torch.equal(runs[0].archive.genomes, runs[1].archive.genomes)
    assert all(r.archive._inserter is None for r in runs)      # the run's children memory is let go


def test_direct_encoding_shapes_rate_and_halving():
    enc = DirectEncoding(shape=(3, 8, 8), rate=0.1, halving_every=1000)
    pop = enc.random(500, gen())
    assert pop.shape == (500, 3, 8, 8) and float(pop.min()) >= 0 and float(pop.max()) <= 1
    assert torch.equal(enc.render(pop), pop)
    child = enc.mutate(pop, gen(1), generation=0)
    assert float((child != pop).float().mean()) == pytest.approx(0.1, abs=0.01)
    assert enc.rate_at(999) == 0.1 and enc.rate_at(1000) == 0.05 and enc.rate_at(2500) == 0.025
    late = enc.mutate(pop, gen(1), generation=2000)
    assert float((late != pop).float().mean()) == pytest.approx(0.025, abs=0.005)
    with pytest.raises(ValueError):
        DirectEncoding(shape=(28, 28))


def _chi2_ok(observed, expected):
    """Pearson's chi-square below df + 6·sqrt(2 df) (p < 1e-6 for these df): with a fixed seed the
    test is deterministic, and a wrong distribution overshoots by orders of magnitude."""
    observed, expected = torch.as_tensor(observed, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64)
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    df = len(observed) - 1
    return chi2 < df + 6 * math.sqrt(2 * df), chi2


def compiled_draws(n, rate, g):
    """The positions and u's the compiled CPU mutation uses, for the same statistical tests."""
    return mutation_cpu.draws(n, rate, mutation_cpu.draw_seed(g), direct._draws_per_round(n, rate))


@pytest.mark.parametrize("draw", [mutation_draws, compiled_draws], ids=["tensor", "compiled"])
def test_mutation_draws_known_answer_statistics(draw):
    """Fixed seed, answers from theory: independent coins at the configured rate (binomial count,
    uniform positions, geometric gaps) and, per mutating gene, u uniform on float32's 24-bit grid,
    independent of the gap; the polynomial steps then follow their exact CDF."""
    n, rate, draws = 156_800, 0.1, 40                 # a generation of 200 MNIST genomes, 40 times
    g = gen(11)
    counts, us, gaps, hits = [], [], [], torch.zeros(200)
    for _ in range(draws):
        pos, u = draw(n, rate, g)
        assert pos.dtype == torch.long and u.dtype == torch.float32 and pos.shape == u.shape
        assert bool((pos[1:] > pos[:-1]).all()) and int(pos[0]) >= 0 and int(pos[-1]) < n
        counts.append(len(pos))
        us.append(u)
        gaps.append(torch.diff(pos, prepend=torch.tensor([-1])))
        hits += torch.bincount(pos // (n // 200), minlength=200)
    counts = torch.tensor(counts, dtype=torch.float64)
    sd = math.sqrt(n * rate * (1 - rate))            # 118.8
    assert abs(float(counts.mean()) - n * rate) < 4 * sd / math.sqrt(draws)
    assert float(counts.std()) == pytest.approx(sd, rel=0.3)
    ok, chi2 = _chi2_ok(hits, torch.full((200,), float(hits.sum()) / 200))   # every gene alike
    assert ok, chi2
    gaps, u = torch.cat(gaps), torch.cat(us).double()
    # Gaps: P(gap = k) = rate (1 − rate)^(k − 1); bins 1..40 and the tail.
    k = torch.arange(1, 41, dtype=torch.float64)
    pmf = torch.cat([rate * (1 - rate) ** (k - 1), torch.tensor([(1 - rate) ** 40])])
    observed = torch.cat([torch.bincount(gaps.clamp(max=41), minlength=42)[1:41], (gaps > 40).sum()[None]])
    ok, chi2 = _chi2_ok(observed, pmf * len(gaps))
    assert ok, chi2
    # u: on the grid m·2⁻²⁴ in [0, 1), uniform (100 bins), mean 1/2, uncorrelated with the gap.
    assert bool((u * 2 ** 24 == (u * 2 ** 24).floor()).all()) and float(u.min()) >= 0 and float(u.max()) < 1
    ok, chi2 = _chi2_ok(torch.bincount((u * 100).long(), minlength=100), torch.full((100,), len(u) / 100))
    assert ok, chi2
    assert abs(float(u.mean()) - 0.5) < 4 * math.sqrt(1 / 12 / len(u))
    assert abs(float(torch.corrcoef(torch.stack([u, gaps.double()]))[0, 1])) < 4 / math.sqrt(len(u))
    # The steps: F(d) = (1 + d)^(η+1) / 2 below 0, 1 − (1 − d)^(η+1) / 2 above (Kolmogorov-Smirnov).
    eta = 15.0
    d = polynomial_delta(u, eta).sort().values
    cdf = torch.where(d < 0, (1 + d).pow(eta + 1) / 2, 1 - (1 - d).pow(eta + 1) / 2)
    ecdf = torch.arange(1, len(d) + 1, dtype=torch.float64) / len(d)
    assert float((cdf - ecdf).abs().max()) < 1.95 / math.sqrt(len(d))     # 0.1% level


@pytest.mark.parametrize("draw", [mutation_draws, compiled_draws], ids=["tensor", "compiled"])
def test_mutation_draws_edges_and_several_rounds(monkeypatch, draw):
    g = gen(5)
    pos, u = draw(50, 1.0, g)
    assert pos.tolist() == list(range(50)) and u.shape == (50,) and float(u.max()) < 1
    if draw is mutation_draws:
        for empty in (mutation_draws(50, 0.0, g), mutation_draws(0, 0.3, g)):
            assert empty[0].numel() == 0 and empty[1].numel() == 0
    # Rounds too short to reach the end: more rounds follow, and the coins are still fair.
    monkeypatch.setattr(direct, "_draws_per_round", lambda n, rate: 7)
    counts = []
    for _ in range(300):
        pos, u = draw(1000, 0.2, g)
        assert bool((pos[1:] > pos[:-1]).all()) and int(pos[-1]) < 1000 and pos.shape == u.shape
        counts.append(len(pos))
    assert sum(counts) / len(counts) == pytest.approx(200, abs=4 * math.sqrt(160 / 300))
    # The mutation itself, in short rounds too: about the same share of genes changes.
    x = torch.full((300, 1000), 0.5)
    direct.polynomial_mutation_(x, 0.2, 15.0, g)
    assert float((x != 0.5).float().mean()) == pytest.approx(0.2, abs=4 * math.sqrt(0.16 / x.numel()))


def _splitmix64_reference(seed, i):
    """SplitMix64's output for counter i, in Python's exact integers (an independent implementation)."""
    m = (1 << 64) - 1
    z = (seed + i * 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def test_compiled_mutation_draws_are_splitmix64_and_its_steps_the_formula():
    """The compiled generator is SplitMix64 to the bit (a known answer: Vigna's reference for
    seed 0 starts 0xE220A8397B1DCDAF), u and W are its bits as documented, and the mutation adds the
    polynomial step of each u at each drawn position (within float rounding of the power), clipped,
    leaving every other gene untouched."""
    z = np.empty(4, np.uint64)
    mutation_cpu._mix_c(np.uint64(0x9E3779B97F4A7C15), z)       # splitmix64 seeded 0: the first next()
    assert int(z[0]) == 0xE220A8397B1DCDAF
    seed = 0xDEADBEEF12345678
    z = np.empty(1000, np.uint64)
    mutation_cpu._mix_c(np.uint64(seed), z)
    assert [int(v) for v in z[[0, 1, 999]]] == [_splitmix64_reference(seed, i) for i in (0, 1, 999)]
    gaps, u = mutation_cpu._round(seed, 0, 1000, 0.1)
    ref = [_splitmix64_reference(seed, i) for i in range(1000)]
    assert np.array_equal(u, np.array([(r >> 40) * 2.0 ** -24 for r in ref], np.float32))
    w = np.array([((r & (2 ** 40 - 1)) + 1) * 2.0 ** -40 for r in ref])
    exact = 1 + np.floor(np.log(w) / math.log1p(-0.1))
    assert np.mean(gaps == exact) > 0.999 and np.abs(gaps - exact).max() <= 1 and gaps.min() >= 1
    for dtype, eta, low, high in [(torch.float32, 15.0, 0.0, 1.0), (torch.float64, 15.0, -3.0, 3.0),
                                  (torch.float32, 20.0, 0.0, 1.0), (torch.float32, 0.0, -1.0, 1.0)]:
        x = torch.rand(40, 999, generator=gen(7), dtype=dtype) * (high - low) + low
        y = polynomial_mutation(x, 0.1, eta, gen(8), low, high, method="compiled")
        pos, u = compiled_draws(x.numel(), 0.1, gen(8))
        changed = torch.zeros(x.numel(), dtype=torch.bool)
        changed[pos] = True
        assert torch.equal(y.view(-1)[~changed], x.view(-1)[~changed])
        d = polynomial_delta(u.to(dtype), eta) * (high - low)
        expect = (x.view(-1)[pos] + d).clamp(low, high)
        tol = 1e-6 if dtype == torch.float32 else 1e-12
        assert torch.allclose(y.view(-1)[pos], expect, rtol=0, atol=tol * (high - low))


def test_mutation_method_is_chosen_and_checked():
    x = torch.rand(10, 10, generator=gen())
    assert direct._choose_method(x, None) == "compiled" and direct._choose_method(x.half(), None) == "tensor"
    h = polynomial_mutation(x.half(), 0.5, 15.0, gen(1))                 # half precision: the tensor version
    assert h.dtype == torch.float16 and bool((h != x.half()).any())
    a = polynomial_mutation(x, 0.5, 15.0, gen(1), method="tensor")
    b = polynomial_mutation(x, 0.5, 15.0, gen(1), method="compiled")
    assert not torch.equal(a, b)                                          # two streams
    with pytest.raises(ValueError, match="method='tensor'"):
        polynomial_mutation(x.half(), 0.1, method="compiled")
    with pytest.raises(ValueError, match="method must be one of"):
        polynomial_mutation(x, 0.1, method="numba")


def test_mutation_changes_the_configured_share_of_genes():
    """Through the encodings: about ``rate`` of the genes change (binomial bounds, fixed seed)."""
    enc = DirectEncoding()
    x = enc.random(200, gen(2))
    y = enc.mutate(x, gen(3))
    n = x.numel()
    changed = int((y != x).sum())                      # (a step can be 0 or clip to no change: rare)
    assert abs(changed - 0.1 * n) < 5 * math.sqrt(n * 0.09)
    w = polynomial_mutation(torch.zeros(100, 39, 39), 0.1, 15.0, gen(4), -10.0, 10.0)   # CPPN weights
    share = float((w != 0).float().mean())
    assert share == pytest.approx(0.1, abs=5 * math.sqrt(0.09 / w.numel()))
    assert float(w[w != 0].abs().mean()) == pytest.approx(20 / 17, rel=0.03)


# -- CPPN ------------------------------------------------------------------------------------

def evolved_cppns(channels, n=12, rounds=15, seed=0, dtype=torch.float64):
    enc = CPPNEncoding(shape=(channels, 28, 28), max_hidden=10, dtype=dtype)
    g = gen(seed)
    pop = enc.random(n, g)
    for _ in range(rounds):
        pop = enc.mutate(pop, g)
    return enc, pop


@pytest.mark.parametrize("method", ["batched", "per-genome"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("hw", [(28, 28), (9, 13)])
def test_cppn_renderer_equals_slow_reference(channels, hw, method):
    enc, pop = evolved_cppns(channels)
    hidden, _ = enc.sizes(pop)
    assert int(hidden.max()) >= 3                      # real topologies, not just the start
    images = enc.render(pop, shape=hw, method=method)
    assert images.shape == (len(hidden), channels, *hw)
    for i in range(len(hidden)):
        ref = render_reference({k: v[i] for k, v in pop.items()}, (channels, *hw))
        np.testing.assert_allclose(images[i].numpy(), ref, atol=1e-9, rtol=0)


def test_cppn_float32_render_and_chunking_agree():
    enc, pop = evolved_cppns(1, n=20)
    full = enc.render(pop)
    enc.max_floats = 28 * 28 * 20                      # force tiny chunks
    assert torch.allclose(enc.render(pop), full)
    pop32 = {k: (v.float() if v.is_floating_point() else v) for k, v in pop.items()}
    for method in ("batched", "per-genome"):
        assert torch.allclose(CPPNEncoding(max_hidden=10).render(pop32, method=method), full.float(), atol=1e-3)


def compiled_test_genomes(channels, weight_range):
    """Float32 genomes for the compiled renderers: evolved ones at the paper's weights (10), or
    start genomes (inputs straight into the outputs, well conditioned) at large weights."""
    if weight_range == 10.0:
        enc, pop = evolved_cppns(channels, rounds=25, dtype=torch.float32)
        assert int(enc.sizes(pop)[0].max()) >= 3
        return enc, pop
    enc = CPPNEncoding(shape=(channels, 28, 28), max_hidden=2, weight_range=weight_range)
    return enc, enc.random(16, gen(4))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("hw", [(28, 28), (9, 13), (40, 30)])          # 40×30: two tiles of pixels
@pytest.mark.parametrize("weight_range", [10.0, 1e4, 1e5])
def test_cppn_compiled_renderer_is_the_exact_cppn_rounded_once(channels, hw, weight_range):
    """The compiled CPU renderer computes in float64: its float32 image is the per-pixel float64
    reference (on the same float32 weights) rounded once, to within one float32 step of 1. Evolved
    genomes at the paper's weights; start genomes (inputs straight into the outputs, so the
    comparison stays well conditioned) at large ones: sin's own reduction up to |x| ≈ 6e4, the
    library sin beyond 1e5."""
    enc, pop = compiled_test_genomes(channels, weight_range)
    hidden, _ = enc.sizes(pop)
    images = enc.render(pop, shape=hw, method="compiled")
    assert images.dtype == torch.float32 and images.shape == (len(hidden), channels, *hw)
    acts = set()
    for i in range(len(hidden)):
        ref = render_reference({k: v[i] for k, v in pop.items()}, (channels, *hw)).astype(np.float32)
        np.testing.assert_allclose(images[i].numpy(), ref, atol=2 ** -24, rtol=0)
        acts |= set(pop["act"][i][pop["alive"][i]].tolist())
    assert acts == {0, 1, 2, 3}                                       # every activation drawn


@pytest.mark.parametrize("method", ["compiled", "compiled-float32"])
def test_cppn_compiled_renderer_edge_cases(method):
    """In both precisions (over more than one tile of pixels, 45×50), a genome's image is its own
    wherever it sits in the batch (bit for bit); a NaN weight gives NaN pixels through every
    activation, as the other renderers do; a cycle is named."""
    enc, pop = evolved_cppns(1, n=8, dtype=torch.float32)
    full = enc.render(pop, shape=(45, 50), method=method)
    assert torch.equal(enc.render({k: v[[5, 2]] for k, v in pop.items()}, shape=(45, 50), method=method), full[[5, 2]])
    start = enc.random(4, gen(1))                                     # inputs wired straight to the output
    start["act"][:, N_INPUTS] = torch.arange(4)                       # one genome per activation
    start["weight"][:, N_INPUTS, 0] = float("nan")
    for m in (method, "batched"):
        assert enc.render(start, shape=(45, 50), method=m).isnan().all()
    cyclic = enc.random(1, gen(2))
    h = N_INPUTS + 1                                                  # the first hidden slot
    cyclic["alive"][0, h] = True
    cyclic["conn"][0, N_INPUTS, h] = cyclic["conn"][0, h, h] = True   # output ← h ← h
    cyclic["weight"][0, N_INPUTS, h] = cyclic["weight"][0, h, h] = 1.0
    with pytest.raises(ValueError, match="genome 0 has a cycle"):
        enc.render(cyclic, method=method)


def test_cppn_float32_activations_are_the_float64_functions_to_float32_accuracy():
    """The float32 renderer's own activations, on float32 inputs, against the float64 functions:
    sin up to its limit (and at the quadrant edges), the sigmoid and the Gaussian through the whole
    range of their exponent, each within a float32 step or two of 1; NaN stays NaN, ±inf goes to the
    limits; bad arrays are named."""
    rng = np.random.default_rng(0)
    edges = (np.arange(-40, 41) * (np.pi / 4)).astype(np.float32)
    cases = {0: np.concatenate([rng.uniform(-4, 4, 20000), rng.uniform(-cppn_float32.SIN_LIMIT, cppn_float32.SIN_LIMIT, 20000),
                                edges, np.nextafter(edges, np.float32(np.inf)), [0.0]]),
             1: np.concatenate([rng.uniform(-30, 30, 20000), rng.uniform(-1e-3, 1e-3, 2000), [0.0, 20.0, -25.0]]),
             2: np.concatenate([rng.uniform(-12, 12, 20000), rng.uniform(9.2, 9.4, 2000), [0.0, -9.3, 1e3]]),
             3: np.concatenate([rng.uniform(-5, 5, 20000), [-3.0, 3.0, 0.0]])}
    f64 = {0: np.sin, 1: lambda z: np.tanh(z / 2), 2: lambda z: np.exp(-z * z), 3: lambda z: np.clip(z, -3, 3) / 3}
    for a, x in cases.items():
        x = x.astype(np.float32)
        got = cppn_float32.activate(a, x.copy())
        np.testing.assert_allclose(got, f64[a](x.astype(np.float64)), atol=1.2e-7, rtol=0, err_msg=f"activation {a}")
        special = cppn_float32.activate(a, np.array([np.nan, np.inf, -np.inf] if a else [np.nan], np.float32))
        assert np.isnan(special[0])
        if a:
            np.testing.assert_array_equal(special[1:], [1.0, -1.0] if a != 2 else [0.0, 0.0])
    for a in range(4):        # a node without connections is the library functions' activation(0):
        v = np.zeros(8)       # both precisions' own give the same
        cppn_cpu._activate64(a, v, 8)
        np.testing.assert_array_equal(v, ACTIVATION_AT_ZERO[a])
        np.testing.assert_array_equal(cppn_float32.activate(a, np.zeros(8, np.float32)), ACTIVATION_AT_ZERO[a])
    with pytest.raises(ValueError, match="C-contiguous float32"):
        cppn_float32.activate(0, np.zeros(8))
    with pytest.raises(ValueError, match="C-contiguous float32"):
        cppn_float32.activate(0, np.zeros((4, 4), np.float32)[:, 0])
    with pytest.raises(ValueError, match="activation must be"):
        cppn_float32.activate(4, np.zeros(8, np.float32))


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("weight_range", [10.0, 1e4])
def test_cppn_compiled_float32_renderer_is_the_cppn_to_float32_accuracy(channels, weight_range):
    """The float32 compiled renderer against the per-pixel float64 reference on the same weights,
    over two tiles of pixels (45×50; 2,048 per tile): evolved genomes at the paper's weights within
    1e-5 (float32 node values); start genomes (inputs straight into the outputs) at large weights
    within the float32 sum's own rounding, 4·2⁻²⁴·Σ|w·input| (sin is 1-Lipschitz), the library sin
    beyond SIN_LIMIT. (Batch position, NaN and cycles: ``test_cppn_compiled_renderer_edge_cases``.)"""
    enc, pop = compiled_test_genomes(channels, weight_range)
    images = enc.render(pop, shape=(45, 50), method="compiled-float32")
    assert images.dtype == torch.float32 and images.shape == (len(pop["act"]), channels, 45, 50)
    acts, beyond = set(), 0
    for i in range(len(pop["act"])):
        ref = render_reference({k: v[i] for k, v in pop.items()}, (channels, 45, 50))
        if weight_range == 10.0:
            atol = 1e-5
        else:
            reach = pop["weight"][i, N_INPUTS:N_INPUTS + channels, :N_INPUTS].abs().double().sum(dim=1) * math.sqrt(2)
            beyond += int((reach > cppn_float32.SIN_LIMIT).sum())
            atol = 4 * 2.0 ** -24 * float(reach.max()) + 2 ** -24
        np.testing.assert_allclose(images[i].numpy(), ref, atol=atol, rtol=0)
        acts |= set(pop["act"][i][pop["alive"][i]].tolist())
    assert acts == {0, 1, 2, 3}
    if weight_range != 10.0:
        assert beyond > 0                                             # the library sin's path too


@pytest.mark.parametrize("channels,rounds", [(1, 15), (3, 40)])
def test_cppn_compiled_plan_equals_the_tensor_plan(channels, rounds):
    """The CPU's compiled plan is the tensor plan index for index (so images are the same bits)."""
    from course.evolution import cppn, cppn_plan

    enc, pop = evolved_cppns(channels, n=200, rounds=rounds, dtype=torch.float32)
    N = int(pop["alive"].any(dim=0).nonzero().max()) + 1
    conn, alive = pop["conn"][:, :N, :N], pop["alive"][:, :N]
    compiled = cppn_plan.plan(conn, alive, channels)
    assert compiled is not None                        # numba is a dependency
    order, size = cppn.plan_tensors(conn, alive, channels)
    assert torch.equal(compiled[1], size) and torch.equal(compiled[0], order)
    assert int(size.max()) > 4 + channels and int(size.min()) >= 4 + channels  # hidden nodes in use
    assert int((size < alive.sum(dim=1)).sum()) > 0    # some alive nodes feed no output: left out


def test_cppn_render_method_is_chosen_by_size_and_checked():
    """On the CPU, float32 genomes up to 96×96 are drawn by the compiled renderer in float64 and
    larger ones by the compiled renderer in float32, each genome's image then its own whatever else
    is in the batch (bit for bit); float64 ones below 40×40 by the batched renderer, from 40×40
    genome by genome; a bad method is named."""
    from course.evolution import cppn

    enc, pop = evolved_cppns(3, n=8, dtype=torch.float32)
    assert torch.equal(enc.render(pop), enc.render(pop, method="compiled"))
    assert torch.equal(enc.render(pop, shape=(96, 96)), enc.render(pop, shape=(96, 96), method="compiled"))
    assert torch.equal(enc.render(pop, shape=(97, 96)), enc.render(pop, shape=(97, 96), method="compiled-float32"))
    pop64 = {k: (v.double() if v.is_floating_point() else v) for k, v in pop.items()}
    assert torch.equal(enc.render(pop64), enc.render(pop64, method="batched"))
    assert torch.equal(enc.render(pop64, shape=(40, 40)), enc.render(pop64, shape=(40, 40), method="per-genome"))
    for method in ("compiled", "compiled-float32"):
        with pytest.raises(ValueError, match="float32 genomes on the CPU"):
            enc.render(pop64, method=method)
    side = int(math.isqrt(cppn.COMPILED_PIXELS)) + 1
    big = enc.render(pop, shape=(side, side))
    assert torch.equal(big, enc.render(pop, shape=(side, side), method="compiled-float32"))
    for method in ("per-genome", "batched"):
        assert torch.allclose(big, enc.render(pop, shape=(side, side), method=method), atol=1e-4)
    part = enc.render({k: v[[5, 2]] for k, v in pop.items()}, shape=(side, side))
    assert torch.equal(part, big[[5, 2]])
    with pytest.raises(ValueError, match="per-genome"):
        enc.render(pop, method="numpy")
    with pytest.raises(ValueError, match="float32 or float64"):
        enc.render({k: (v.half() if v.is_floating_point() else v) for k, v in pop.items()}, method="per-genome")


def test_cppn_start_and_mutation_invariants():
    enc = CPPNEncoding(shape=(3, 16, 16), max_hidden=6)
    g = gen(3)
    pop = enc.random(64, g)
    # Start: every input wired to every output, no hidden nodes, weights within ±10.
    assert int(pop["conn"].sum()) == 64 * N_INPUTS * 3 and int(enc.sizes(pop)[0].sum()) == 0
    assert float(pop["weight"].abs().max()) <= 10
    saw_hidden = 0
    for _ in range(40):
        pop = enc.mutate(pop, g)
        conn, alive, w = pop["conn"], pop["alive"], pop["weight"]
        assert not conn[:, :N_INPUTS].any()                                # inputs receive nothing
        assert not conn[:, :, N_INPUTS:N_INPUTS + 3].any()                 # outputs are sinks
        assert not (conn & ~(alive[:, :, None] & alive[:, None, :])).any()  # only between live nodes
        assert not reachability(conn).diagonal(dim1=1, dim2=2).any()        # no cycles
        assert not (w[~conn] != 0).any()                                  # weight 0 off-connection
        assert float(w.abs().max()) <= 10
        saw_hidden = max(saw_hidden, int(enc.sizes(pop)[0].max()))
    assert saw_hidden == 6                                                 # capacity reached, not exceeded
    img = enc.render(pop)
    assert img.shape == (64, 3, 16, 16) and float(img.min()) >= 0 and float(img.max()) <= 1


def test_node_depth_is_longest_path():
    # CPPNEncoding(max_hidden=2) has slots 0-3 inputs, 4 output, 5-6 hidden
    conn = torch.zeros(1, 7, 7, dtype=torch.bool)
    conn[0, 5, 0] = conn[0, 6, 5] = conn[0, 4, 6] = conn[0, 4, 1] = True   # x→h5→h6→out, y→out
    assert node_depth(conn).tolist() == [[0, 0, 0, 0, 3, 1, 2]]


# -- the archive -----------------------------------------------------------------------------

def _toy_render(genomes):
    """A render for (B, 1) genomes: a 1×1×2 image [g, 2g]."""
    return torch.stack([genomes, 2 * genomes], dim=-1)[:, :, None, :]


def _toy_archive(mode, n_cells=3):
    return Archive(n_cells, render=_toy_render if mode == "lazy" else None)


def _toy_update(a, mode, genomes, probs):
    images = genomes if mode == "same" else _toy_render(genomes)
    return a.update(genomes, images, probs)


@pytest.mark.parametrize("mode", ["stored", "lazy", "same"])
def test_archive_every_cell_strictly_better_ties_keep(mode):
    """The same semantics whether the archive stores images, renders them on demand or its
    genomes are its images."""
    a = _toy_archive(mode)
    changed = _toy_update(a, mode, torch.tensor([[0.0], [1.0]]), torch.tensor([[0.5, 0.2, 0.3], [0.1, 0.7, 0.2]]))
    assert changed.tolist() == [True, True, True]
    assert a.genomes.squeeze(1).tolist() == [0.0, 1.0, 0.0]            # offspring 0 holds two cells
    assert a.scores.tolist() == pytest.approx([0.5, 0.7, 0.3])
    # Ties do not replace; strictly better does, in every cell it beats.
    changed = _toy_update(a, mode, torch.tensor([[2.0]]), torch.tensor([[0.5, 0.1, 0.3]]))
    assert changed.tolist() == [False, False, False] and a.genomes.squeeze(1).tolist() == [0.0, 1.0, 0.0]
    changed = _toy_update(a, mode, torch.tensor([[3.0]]), torch.tensor([[0.6, 0.1, 0.4]]))
    assert changed.tolist() == [True, False, True] and a.genomes.squeeze(1).tolist() == [3.0, 1.0, 3.0]
    # Among tied offspring the first wins.
    _toy_update(a, mode, torch.tensor([[4.0], [5.0]]), torch.tensor([[0.0, 0.9, 0.0], [0.0, 0.9, 0.0]]))
    assert a.genomes.squeeze(1).tolist() == [3.0, 4.0, 3.0] and len(a) == 3
    want = a.genomes if mode == "same" else _toy_render(a.genomes)
    assert torch.equal(a.images, want)                                 # the images follow the genomes
    cells, images, genomes = a.elites()
    assert cells.tolist() == [0, 1, 2] and torch.equal(images, want) and torch.equal(genomes, a.genomes)


@pytest.mark.parametrize("reuse", [False, True], ids=["fresh", "one-buffer"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_insertion_is_the_tensor_one(monkeypatch, dtype, reuse):
    """The compiled CPU insertion (archive_cpu) and the tensor one give the same archive, bit for
    bit, over many updates with ties (probabilities on a coarse grid) and NaN columns: children in
    fresh tensors, or (as map_elites does) rewritten into one tensor, which the archive binds."""
    from course.evolution import archive_cpu

    g = gen(9)
    batches = []
    for i in range(30):
        probs = (torch.rand(40, 7, generator=g) * (4 + i)).floor() / 40    # many ties, rising
        if i % 7 == 3:
            probs[torch.randint(40, (1,), generator=g), 2] = float("nan")  # cell 2 cannot improve
        batches.append((torch.rand(40, 2, 3, generator=g, dtype=dtype), probs))
    x, p = batches[0]
    assert archive_cpu.applies(x, x, p, p[0]) and not archive_cpu.applies(x, x, p.double(), p[0])
    runs = []
    for compiled in (True, False):
        if not compiled:
            monkeypatch.setattr(archive_cpu, "binds", lambda *a: False)
        a = Archive(7, render=lambda x: x * 2)
        buffer, masks = torch.empty_like(x), []
        for x, p in batches:
            children = buffer.copy_(x) if reuse else x
            masks.append(a.update(children, children, p))
        assert (a._inserter is not None) == compiled
        if compiled and reuse:
            assert a._inserter.holds(buffer)                                # bound once, kept
        runs.append((a.genomes.clone(), a.scores.clone(), torch.stack(masks), a.filled.clone(), a._full))
    (g1, s1, m1, f1, full1), (g2, s2, m2, f2, full2) = runs
    assert torch.equal(g1, g2) and torch.equal(s1, s2) and torch.equal(m1, m2) and torch.equal(f1, f2)
    assert full1 == full2 and int(m1.sum()) > 7                             # improvements happened


def test_lazy_archive_renders_once_per_change_and_blanks_empty_cells():
    calls = []

    def render(genomes):
        calls.append(len(genomes))
        return genomes                                  # like the direct encoding: its input itself

    a = Archive(3, render=render)
    assert a.images is None
    inf = float("inf")
    a.update(torch.ones(2, 1, 1, 1), torch.ones(2, 1, 1, 1), torch.tensor([[0.5, -inf, 0.1], [0.2, -inf, 0.3]]))
    assert a.filled.tolist() == [True, False, True]
    images = a.images
    assert images.flatten().tolist() == [1.0, 0.0, 1.0] and a.genomes.flatten().tolist() == [1.0, 0.0, 1.0]
    assert a.images is images and calls == [3]                        # cached
    a.update(torch.full((1, 1, 1, 1), 7.0), torch.zeros(1, 1, 1, 1), torch.tensor([[0.1, -inf, 0.2]]))
    assert a.images is images and calls == [3]                        # nothing changed: still cached
    a.update(torch.full((1, 1, 1, 1), 7.0), torch.zeros(1, 1, 1, 1), torch.tensor([[0.1, 0.9, 0.2]]))
    assert a.images.flatten().tolist() == [1.0, 7.0, 1.0] and calls == [3, 3] and len(a) == 3
    assert a.images is a.genomes                                       # full: the render's own output


@pytest.mark.parametrize("hw, method, exact", [((28, 28), None, True), ((32, 32), "batched", True),
                                               ((28, 28), "batched", False)])
def test_lazy_archive_images_are_the_scored_images(hw, method, exact):
    """Elites re-rendered from their genomes against the very images that were scored (kept by a
    second archive that stores them). Bitwise with the CPU's default (compiled) renderer, and with
    the batched one at 32×32. At 28×28 the batched renderer may round a genome's pixels by a last
    bit differently depending on where it sits in the batch (its vectorised activations' scalar
    tail when the pixel count is not a multiple of 64; its BLAS kernel for 1-3 rows): equal to
    float32 rounding."""
    enc = CPPNEncoding(shape=(1, *hw), max_hidden=12)
    render = functools.partial(enc.render, method=method)
    model = linear_classifier(shape=(1, *hw))
    g = gen(8)
    lazy, kept = Archive(10, render=render), Archive(10)
    genomes = enc.random(40, g)
    for step in range(30):
        if step:
            genomes = enc.mutate(take(lazy.genomes, lazy.sample_parents(40, g)), g)
        images = render(genomes)
        with torch.no_grad():
            probs = torch.softmax(model(images), dim=1)
        assert torch.equal(lazy.update(genomes, images, probs), kept.update(genomes, images, probs))
    assert int(enc.sizes(lazy.genomes)[0].max()) >= 3                  # real topologies
    assert torch.equal(lazy.scores, kept.scores)
    if exact:
        assert torch.equal(lazy.images, kept.images)
    else:
        torch.testing.assert_close(lazy.images, kept.images, atol=1e-6, rtol=0)
    assert torch.equal(lazy.images, render(lazy.genomes))          # the stored genomes, rendered


def test_map_elites_stores_direct_images_once():
    r = map_elites(linear_classifier(), DirectEncoding(), generations=3, offspring=20, progress=False)
    assert r.archive.images.data_ptr() == r.archive.genomes.data_ptr()


def test_archive_dict_genomes_and_parents():
    a = Archive(4)
    genomes = {"w": torch.arange(6.0).view(3, 2), "id": torch.tensor([7, 8, 9])}
    a.update(genomes, torch.zeros(3, 1, 2, 2), torch.tensor([[0.9, 0.0, 0.0, 0.0],
                                                             [0.0, 0.8, 0.0, 0.0],
                                                             [0.0, 0.0, 0.7, 0.0]]))
    assert a.filled.tolist() == [True, True, True, True]                # −inf start: every cell fills
    assert a.genomes["id"].tolist() == [7, 8, 9, 7]
    parents = a.sample_parents(1000, gen())
    assert set(parents.tolist()) == {0, 1, 2, 3}


def test_empty_archive_and_bad_updates_raise():
    a = Archive(10)
    with pytest.raises(EmptyArchiveError, match="empty"):
        a.sample_parents(5, gen())
    with pytest.raises(EmptyArchiveError):
        a.elites()
    with pytest.raises(ValueError, match="probs"):
        a.update(torch.zeros(2, 1), torch.zeros(2, 1, 1, 1), torch.zeros(2, 3))
    with pytest.raises(ValueError):
        Archive(0)


# -- map_elites ------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding", [DirectEncoding(), CPPNEncoding(max_hidden=8)], ids=["direct", "cppn"])
def test_map_elites_is_deterministic_and_monotone(encoding):
    model = linear_classifier()
    kw = dict(generations=6, offspring=24, initial=16, progress=False)
    r1 = map_elites(model, encoding, seed=5, **kw)
    archive, history = map_elites(model, encoding, seed=5, **kw)
    r3 = map_elites(model, encoding, seed=6, **kw)
    assert torch.equal(r1.archive.images, archive.images) and torch.equal(r1.archive.scores, archive.scores)
    assert not torch.equal(r3.archive.images, archive.images)
    assert history.shape == (7, 10) and r1.generations == 6 and r1.evaluations == 16 + 6 * 24
    assert bool((history[1:] >= history[:-1]).all())                     # elites never get worse
    assert torch.equal(history[-1], archive.scores)
    cells, images, _ = archive.elites()
    assert len(cells) == 10 and images.shape == (10, 1, 28, 28)
    with torch.no_grad():                                                # scores are the elites' own p
        p = torch.softmax(model(archive.images), dim=1).diagonal()
    assert torch.allclose(p, archive.scores, atol=1e-6)


def test_map_elites_thousand_classes_threshold_and_batches():
    model = linear_classifier(1000, shape=(3, 8, 8))
    r = map_elites(model, DirectEncoding(shape=(3, 8, 8)), generations=3, offspring=50, batch_size=16,
                   progress=False)
    assert r.archive.n_cells == 1000 and r.history.shape == (4, 1000)
    assert len(r.archive) == 1000
    early = map_elites(linear_classifier(), DirectEncoding(), generations=50, offspring=10, threshold=1e-9,
                       progress=False)
    assert early.generations == 1


def test_map_elites_bad_inputs_raise_clearly():
    model = linear_classifier()
    with pytest.raises(ValueError, match="generations"):
        map_elites(model, DirectEncoding(), generations=0, progress=False)
    with pytest.raises(ValueError, match="generations"):
        map_elites(model, DirectEncoding(), generations=-3, progress=False)
    with pytest.raises(ValueError, match="probabilities"):
        map_elites(nn.Sequential(model, nn.Softmax(dim=1)), DirectEncoding(), generations=1, progress=False)
    with pytest.raises(ValueError, match=r"shape \(1, 32, 32\)"):
        map_elites(model, DirectEncoding(shape=(1, 32, 32)), generations=1, progress=False)
    from course.models import build_model
    with pytest.raises(ValueError, match="shape"):
        map_elites(build_model("lenet"), CPPNEncoding(shape=(3, 28, 28)), generations=1, progress=False)
