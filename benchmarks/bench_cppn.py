"""Render 1,000 CPPN genomes: our renderer vs neat-python pixel by pixel, vs the same genomes rendered
one at a time with numpy over all pixels, and vs the pixel-math floor. "Ours" is what
``CPPNEncoding.render`` picks by default (``ours_method``): on the CPU in float32 the compiled
renderer, in float64 at 28×28 and in float32 at 224×224; the batched tensor one on a GPU. The
per-genome numpy renderer (the CPU default at 224×224 before session 18) is timed beside it
(``per_genome_s``).

The genomes: 1,000 seeded :class:`CPPNEncoding` genomes after ``--mutations`` (40) rounds of
mutation: 12.3 hidden neurons each on average, 4.1 of them feeding the output (the only ones any
renderer computes). All three renderers and the floor draw the same genomes in float32 on one
thread; times are process CPU times (the machine may be shared), in ``--rounds`` interleaved rounds
(ours, numpy, numpy with precomputed plans, the floor, neat, then again); the figures are medians of
the per-round ratios.

- **neat-python**: each genome rebuilt as a genuine neat genome (``DefaultNodeGene`` /
  ``DefaultConnectionGene``, bias 0, response 1, ``sum`` aggregation, our four activations registered
  under their names), turned into a ``neat.nn.FeedForwardNetwork`` (``FeedForwardNetwork.create``,
  timed) and activated once per pixel, the usual way of drawing a CPPN with neat-python. It renders
  a seeded subset (``--neat-28``, ``--neat-224`` genomes); its time per genome is scaled to 1,000.
- **numpy, one genome at a time** (the fair baseline: how PyTorch-NEAT's CPPN or a numpy user draws
  an image): the genome held as plain Python (``numpy_genome``: each node's activation and its list
  of (source, weight)); per genome, a depth-first topological order of the nodes the outputs depend
  on, then each node = activation(Σ weight · source array) over all pixels at once, in place
  (``numpy_render``; 2(σ(z) − 0.5) as tanh(z/2)). Timed with its planning (``numpy_s``) and with
  the plans precomputed (``numpy_eval_only_s``).
- **The pixel-math floor** (``Floor``): the per-pixel arithmetic these genomes cannot avoid, as a
  few big batched torch ops on preallocated float32 arrays with no planning, gathering or
  allocation: for each block of genomes, (1) every computed node's (a node the outputs depend on,
  with at least one connection: one without is a constant) input term (x, y, d, bias) as
  one ``mm`` (nodes, 4) @ (4, pixels), rows grouped by activation; (2) one multiply-add per
  hidden-to-node connection per pixel, a single ``addcmul_`` over (connections, pixels); (3) each
  activation once, in place, on its contiguous block of rows (the float32 renderer's own compiled
  functions, or numpy's and torch's); (4) ``abs_().clamp_(max=1)`` on the output rows.
  Dependencies between nodes are ignored, so no renderer can do this arithmetic in fewer or bigger
  ops. Blocks hold at most ``max_floats`` (2^24, the renderer's own budget), 2^20 or 2^18 (1 MiB: a
  genome or two at 224×224, in the L2 cache) floats per array. The same with *sparse* input terms:
  step (1) dropped and one multiply-add per input connection per pixel added to step (2)'s
  ``addcmul_`` (cheaper where nodes have one or two inputs). The fastest of these twelve
  arrangements is the floor (``floor_s``; the best with dense and with sparse input terms:
  ``floor_dense_inputs_s``, ``floor_sparse_inputs_s``; the best with numpy's and torch's
  activations, the floor of sessions 16–17: ``floor_library_activations_s``). Writing the returned
  images into fresh memory is not in it. Beneath it, ``activations_only_s``: step (3) alone on
  cache-sized blocks, every computed node's activation on every pixel, with the faster of the two
  sets of functions, which no renderer with these activation functions can avoid
  (``ours_over_activations_only``).

Allocator: glibc's malloc is told to keep freed memory (``course.memory.keep_freed_memory``, what
``course run`` sets for every lesson), for all renderers alike; ``--default-malloc`` leaves it as
it is, and then each fresh 200 MB batch of 224×224 images costs ~50,000 page faults (0.1–0.4 s of
system time) on every call.

Quality: our images against numpy's (``np.allclose``, atol 1e-3) and against neat's (max abs
difference), and both float32 renderers against the float64 truth (our renderer in float64, which
the tests hold to the per-pixel reference within 1e-9): sin and Gaussian units fed sums of weights
up to ±10 lose ~1e-4 in float32 at 28×28 and ~1e-3 at 224×224, the same for both.

    python benchmarks/bench_cppn.py [--json] [--rounds 5] [--mutations 40] [--sizes 28,224]
                                    [--threads 1] [--device cpu] [--default-malloc]

JSON: ``allocator``; per size, ``speedup`` (vs neat-python), ``speedup_vs_numpy``, ``speedup_vs_numpy_eval_only``,
``ours_over_floor``, ``numpy_over_floor``, ``numpy_allclose_ours`` and the error fields.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from types import SimpleNamespace

import numpy as np
import torch

from course import memory
from course.evolution import cppn_float32
from course.evolution.cppn import (CPU_ACTIVATIONS_INPLACE, N_INPUTS, NP_ACTIVATIONS_INPLACE, CPPNEncoding,
                                   coordinates, render_method)


def make_genomes(n: int, seed: int, rounds: int = 10, device="cpu") -> tuple[CPPNEncoding, dict]:
    enc = CPPNEncoding(shape=(1, 28, 28))
    g = torch.Generator(device=device).manual_seed(seed)
    pop = enc.random(n, g)
    for _ in range(rounds):
        pop = enc.mutate(pop, g)
    return enc, pop


def neat_network(genome: dict, n_outputs: int):
    """Our genome (unbatched tensors) as a neat-python genome, then its FeedForwardNetwork."""
    import neat
    from neat.genes import DefaultConnectionGene, DefaultNodeGene

    acts = neat.activations.ActivationFunctionSet()
    acts.add("c_sin", lambda z: math.sin(z))
    acts.add("c_sigmoid", lambda z: 2.0 * (1.0 / (1.0 + math.exp(-z)) - 0.5) if z > -700 else -1.0)
    acts.add("c_gaussian", lambda z: math.exp(-z * z))
    acts.add("c_linear", lambda z: min(max(z, -3.0), 3.0) / 3.0)
    names = ("c_sin", "c_sigmoid", "c_gaussian", "c_linear")
    # neat keys: inputs -1..-4, outputs 0..n_outputs-1, hidden from n_outputs on.
    key = {i: -(i + 1) for i in range(N_INPUTS)}
    alive = genome["alive"].nonzero().squeeze(1).tolist()
    for slot in alive:
        if slot >= N_INPUTS:
            key[slot] = slot - N_INPUTS
    nodes = {}
    for slot in alive:
        if slot < N_INPUTS:
            continue
        ng = DefaultNodeGene(key[slot])
        ng.bias, ng.response, ng.time_constant = 0.0, 1.0, 1.0
        ng.activation, ng.aggregation = names[int(genome["act"][slot])], "sum"
        nodes[key[slot]] = ng
    connections = {}
    for innovation, (dst, src) in enumerate(genome["conn"].nonzero().tolist()):
        cg = DefaultConnectionGene((key[src], key[dst]), innovation=innovation)
        cg.weight, cg.enabled = float(genome["weight"][dst, src]), True
        connections[cg.key] = cg
    neat_genome = SimpleNamespace(nodes=nodes, connections=connections)
    config = SimpleNamespace(genome_config=SimpleNamespace(
        input_keys=[-1, -2, -3, -4], output_keys=list(range(n_outputs)),
        activation_defs=acts, aggregation_function_defs=neat.aggregations.AggregationFunctionSet()))
    return neat.nn.FeedForwardNetwork.create(neat_genome, config)


def neat_render(genome: dict, H: int, W: int) -> torch.Tensor:
    net = neat_network(genome, 1)
    inputs = coordinates(H, W, dtype=torch.float64).T.tolist()
    return torch.tensor([min(abs(net.activate(p)[0]), 1.0) for p in inputs]).view(1, H, W)


# -- the per-genome numpy baseline ----------------------------------------------------------------

def numpy_genome(genome: dict, n_outputs: int):
    """Our genome (unbatched tensors) as plain Python, the shape a NEAT user holds a genome in:
    ``(activations {node: id}, sources {node: [(src, float32 weight), ...]}, output nodes)``.
    Not timed (like neat's genome objects, it is the genome's representation, not its rendering)."""
    alive = genome["alive"].nonzero().squeeze(1).tolist()
    act = genome["act"].tolist()
    weight = genome["weight"].float()
    sources: dict[int, list] = {n: [] for n in alive if n >= N_INPUTS}
    for dst, src in genome["conn"].nonzero().tolist():
        sources[dst].append((src, np.float32(weight[dst, src])))
    return {n: act[n] for n in sources}, sources, list(range(N_INPUTS, N_INPUTS + n_outputs))


# The activations in place, with numpy's own SIMD loops (2(σ(z) − 0.5) as tanh(z / 2): one
# transcendental call), as a numpy user would write them. (Our renderer and the floor use torch's
# sigmoid instead, which is faster here: CPU_ACTIVATIONS_INPLACE.)
_NP_ACTIVATIONS = NP_ACTIVATIONS_INPLACE


def numpy_plan(genome) -> list:
    """Topological order of the nodes the outputs depend on (depth-first, sources first)."""
    _, sources, outputs = genome
    order, seen = [], set(range(N_INPUTS))

    def visit(node):
        if node in seen:
            return
        seen.add(node)
        for src, _ in sources[node]:
            visit(src)
        order.append(node)

    for o in outputs:
        visit(o)
    return order


def numpy_render(genome, inputs: list, order=None) -> np.ndarray:
    """One genome over all pixels at once: (channels, pixels) float32. ``inputs``: the four
    (pixels,) float32 coordinate arrays x, y, d, 1. Each node in topological order is
    activation(Σ weight · source array), computed in place (one scratch array for the products)."""
    acts, sources, outputs = genome
    if order is None:
        order = numpy_plan(genome)
    values = dict(enumerate(inputs))
    tmp = np.empty_like(inputs[0])
    for node in order:
        src = sources[node]
        if src:
            s, w = src[0]
            acc = np.multiply(values[s], w)
            for s, w in src[1:]:
                np.multiply(values[s], w, out=tmp)
                acc += tmp
        else:
            acc = np.zeros_like(tmp)
        _NP_ACTIVATIONS[acts[node]](acc)
        values[node] = acc
    img = np.stack([values[o] for o in outputs])
    np.abs(img, out=img)
    return np.minimum(img, 1.0, out=img)


def numpy_inputs(H: int, W: int) -> list:
    return list(coordinates(H, W, dtype=torch.float32).numpy())


def time_numpy(genomes: list, inputs: list, plans=None) -> tuple[float, list]:
    """CPU seconds to render every genome one at a time (planning included unless ``plans``)."""
    t = time.process_time()
    if plans is None:
        images = [numpy_render(g, inputs) for g in genomes]
    else:
        images = [numpy_render(g, inputs, o) for g, o in zip(genomes, plans)]
    return time.process_time() - t, images


# -- the pixel-math floor --------------------------------------------------------------------------

class Floor:
    """The per-pixel arithmetic these genomes need, as a few big batched ops on preallocated arrays.

    Counted per genome from its plan (``numpy_plan``: the nodes its outputs depend on): T nodes to
    compute (those with a connection: a node without one is the constant activation(0), a fill,
    which the floor leaves out), E_h connections from a hidden node, the activation of each node.
    For a block of genomes (T_b nodes, E_b hidden connections in all, at most ``block_floats``
    floats per buffer):

    1. every node's input term (x, y, d, bias): one ``torch.mm`` (T_b, 4) @ (4, pixels) into a
       preallocated (T_b, pixels) buffer whose rows are grouped by activation;
    2. every hidden connection's term: one multiply-add per connection per pixel, a single
       ``addcmul_`` on preallocated (E_b, pixels) arrays;
    3. the activations: one in-place call per activation type on its contiguous block of rows,
       with ``acts="compiled"`` the float32 renderer's own (``cppn_float32.activate``: vectorised
       series over cache-sized tiles), with ``acts="library"`` numpy's SIMD loops and torch's
       sigmoid and clamp (``CPU_ACTIVATIONS_INPLACE``, the per-genome renderer's); the floor is
       the fastest arrangement of either;
    4. the outputs: ``abs_().clamp_(max=1)`` on their (genomes × channels, pixels) rows.

    ``mode="sparse"`` replaces step 1 by one multiply-add per *input* connection too (in step 2's
    single ``addcmul_``): cheaper for nodes with one or two inputs, dearer for nodes with all four
    (a product of (T_b, 4) by (4, pixels) is one pass over the output); the floor is the faster of
    the two. ``mode="activations"``: step 3 alone, each computed node's activation on every pixel
    of a cache-sized block, which no renderer with these activation functions can avoid: a lower
    bound under the floor, reported beside it.

    Nothing else: no planning, no gathering, no allocation. The nodes' dependencies are ignored
    (ops 1–3 run once each over the whole block), so no renderer can do this arithmetic with
    fewer or bigger ops. Real weights and coordinates are used, so the activations see values of
    the genomes' own range."""

    def __init__(self, genomes: list, plans: list, H: int, W: int, block_floats: int, mode: str = "dense",
                 acts: str = "compiled"):
        self.mode = mode  # "dense" (step 1 as above), "sparse" (see run) or "activations" (step 3 alone)
        # The fastest activations at hand on a CPU, in place: the float32 renderer's own, compiled,
        # or numpy's sin, exp and clip with torch's sigmoid (CPU_ACTIVATIONS_INPLACE).
        if acts == "compiled":
            self.acts = [lambda t, a=a: cppn_float32.activate(a, t.numpy()) for a in range(len(CPU_ACTIVATIONS_INPLACE))]
        else:
            self.acts = [lambda t, f=f: f(t.numpy()) for f in CPU_ACTIVATIONS_INPLACE]
        HW = H * W
        self.inputs = coordinates(H, W, dtype=torch.float32)
        self.blocks, i = [], 0
        while i < len(genomes):
            rows, hidden_w, n_out, j = [], [], 0, i
            while j < len(genomes):
                acts, sources, outputs = genomes[j]
                new = [(acts[n], [float(w) if s < N_INPUTS else 0.0 for s, w in _dense(sources[n])])
                       for n in plans[j] if sources[n]]   # a node without connections is a constant
                hw = [float(w) for n in plans[j] for s, w in sources[n] if s >= N_INPUTS]
                if mode == "sparse":   # every connection, input or hidden, is one multiply-add
                    hw += [float(w) for n in plans[j] for s, w in sources[n] if s < N_INPUTS]
                if rows and max(len(rows) + len(new), len(hidden_w) + len(hw)) * HW > block_floats:
                    break
                rows += new
                hidden_w += hw
                n_out += len(outputs)
                j += 1
            rows.sort(key=lambda r: r[0])
            counts = [sum(1 for a, _ in rows if a == k) for k in range(4)]
            w_in = torch.tensor([r[1] for r in rows], dtype=torch.float32)
            w_h = torch.tensor(hidden_w, dtype=torch.float32)[:, None]
            self.blocks.append((w_in, w_h, counts, n_out))
            i = j
        n_rows = max(len(b[0]) for b in self.blocks)
        n_hidden = max(len(b[1]) for b in self.blocks)
        self.Y = torch.empty(n_rows, HW)
        torch.mm(self.blocks[0][0], self.inputs, out=self.Y[:len(self.blocks[0][0])])
        # Hidden sources: node values of the genomes' range (rows of Y, after activation).
        self.S = self.Y[torch.arange(n_hidden) % max(1, len(self.blocks[0][0]))].clone()
        self.acc = torch.zeros(n_hidden, HW)
        self.run()
        self.S.copy_(self.Y[torch.arange(n_hidden) % max(1, len(self.blocks[0][0]))])

    def run(self) -> None:
        for w_in, w_h, counts, n_out in self.blocks:
            Y = self.Y[:len(w_in)]
            if self.mode == "dense":
                torch.mm(w_in, self.inputs, out=Y)
            if len(w_h) and self.mode != "activations":
                self.acc[:len(w_h)].addcmul_(self.S[:len(w_h)], w_h)
            start = 0
            for a, c in enumerate(counts):
                if c:
                    self.acts[a](Y[start:start + c])
                start += c
            if self.mode != "activations":
                Y[:n_out].abs_().clamp_(max=1.0)

    def seconds(self) -> float:
        t = time.process_time()
        self.run()
        return time.process_time() - t


def _dense(sources):
    """(src, weight) for the four inputs, 0 where unconnected."""
    w = dict(sources)
    return [(s, w.get(s, 0.0)) for s in range(N_INPUTS)]


def _clock(cuda: bool) -> float:
    """CPU seconds of this process (the machine may be shared); wall time when ours runs on a GPU."""
    if cuda:
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def time_ours(enc: CPPNEncoding, pop: dict, hw, method=None) -> float:
    """Seconds to render the whole population at ``hw`` (planning included)."""
    cuda = pop["weight"].is_cuda
    t = _clock(cuda)
    enc.render(pop, hw, method=method)
    return _clock(cuda) - t


def time_neat(pop: dict, indices, H: int, W: int, ours_img: torch.Tensor) -> tuple[float, float]:
    """(CPU seconds per genome, max |neat − ours|) over the genomes at ``indices``."""
    err = 0.0
    t = time.process_time()
    for i in indices:
        img = neat_render({k: v[i] for k, v in pop.items()}, H, W)
        err = max(err, float((img - ours_img[i].double()).abs().max()))
    return (time.process_time() - t) / max(1, len(indices)), err


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--genomes", type=int, default=1000)
    ap.add_argument("--mutations", type=int, default=40, help="rounds of mutation from the random start")
    ap.add_argument("--neat-28", type=int, default=40, help="genomes neat renders at 28×28")
    ap.add_argument("--neat-224", type=int, default=3, help="genomes neat renders at 224×224")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (neat and numpy use one)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (medians reported)")
    ap.add_argument("--sizes", default="28,224", help="image sizes (square), comma-separated")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc's malloc as it is (by default freed memory is kept, as in `course run`)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    kept = False if args.default_malloc else memory.keep_freed_memory()

    enc, pop = make_genomes(args.genomes, args.seed, rounds=args.mutations, device=args.device)
    hidden, conns = enc.sizes(pop)
    cpu_pop = {k: v.cpu() for k, v in pop.items()}
    genomes = [numpy_genome({k: v[i] for k, v in cpu_pop.items()}, enc.n_outputs) for i in range(args.genomes)]
    plans = [numpy_plan(g) for g in genomes]
    used_hidden = [len(p) - enc.n_outputs for p in plans]
    # The float64 truth: our renderer in float64 equals the per-pixel reference to 1e-9 (tests).
    enc64 = CPPNEncoding(shape=enc.image_shape, max_hidden=enc.max_hidden, dtype=torch.float64)
    pop64 = {k: (v.double() if v.is_floating_point() else v) for k, v in cpu_pop.items()}
    subset = torch.randperm(args.genomes, generator=torch.Generator().manual_seed(args.seed))
    out = {"benchmark": "cppn_render", "genomes": args.genomes, "mutations": args.mutations,
           "device": args.device, "threads": args.threads, "rounds": args.rounds, "clock": "process CPU time",
           "allocator": "freed memory kept" if kept else "glibc default",
           "mean_hidden": round(float(hidden.float().mean()), 2), "max_hidden": int(hidden.max()),
           "mean_hidden_used": round(sum(used_hidden) / len(used_hidden), 2),
           "mean_connections": round(float(conns.float().mean()), 2)}
    for H in (int(h) for h in args.sizes.split(",")):
        n_neat = args.neat_28 if H <= 28 else args.neat_224
        enc.render({k: v[:8] for k, v in pop.items()}, (H, H))  # warm-up
        ours_img = enc.render(pop, (H, H)).cpu()
        truth = enc64.render(pop64, (H, H)).numpy()
        inputs = numpy_inputs(H, H)
        blocks = sorted({enc.max_floats, 1 << 20, 1 << 18})
        floors = {(mode, acts): [Floor(genomes, plans, H, H, b, mode, acts) for b in blocks]
                  for mode in ("dense", "sparse") for acts in ("compiled", "library")}
        act_floors = [Floor(genomes, plans, H, H, 1 << 18, "activations", acts) for acts in ("compiled", "library")]
        per_genome = render_method(pop["weight"], H * H) != "per-genome" and pop["weight"].device.type == "cpu"
        idx = subset[:n_neat].tolist()
        ours_t, np_t, np_eval_t, floor_t, neat_t, neat_err = [], [], [], [], [], 0.0
        dense_t, sparse_t, library_t, act_t, pg_t = [], [], [], [], []
        for _ in range(args.rounds):        # all of them, round after round (the machine may be shared)
            ours_t.append(time_ours(enc, pop, (H, H)))
            if per_genome:
                pg_t.append(time_ours(enc, pop, (H, H), method="per-genome"))
            t, np_imgs = time_numpy(genomes, inputs)
            np_t.append(t)
            np_eval_t.append(time_numpy(genomes, inputs, plans)[0])
            times = {key: min(f.seconds() for f in fl) for key, fl in floors.items()}
            dense_t.append(min(t for (mode, _), t in times.items() if mode == "dense"))
            sparse_t.append(min(t for (mode, _), t in times.items() if mode == "sparse"))
            library_t.append(min(t for (_, acts), t in times.items() if acts == "library"))
            floor_t.append(min(dense_t[-1], sparse_t[-1]))
            act_t.append(min(f.seconds() for f in act_floors))
            if n_neat:
                per, e = time_neat(cpu_pop, idx, H, H, ours_img)
                neat_t.append(per * args.genomes)
                neat_err = max(neat_err, e)
        np_img = np.stack(np_imgs).reshape(ours_img.shape)
        ours_np = ours_img.numpy()

        def ratio(xs, ys):
            return round(statistics.median(x / y for x, y in zip(xs, ys)), 2)

        r = {"ours_method": render_method(pop["weight"], H * H), "ours_s": round(statistics.median(ours_t), 4),
             "ours_ms_per_genome": round(1e3 * statistics.median(ours_t) / args.genomes, 4),
             "numpy_s": round(statistics.median(np_t), 4), "numpy_eval_only_s": round(statistics.median(np_eval_t), 4),
             "floor_s": round(statistics.median(floor_t), 4),
             "floor_dense_inputs_s": round(statistics.median(dense_t), 4),
             "floor_sparse_inputs_s": round(statistics.median(sparse_t), 4),
             "floor_library_activations_s": round(statistics.median(library_t), 4),
             "activations_only_s": round(statistics.median(act_t), 4),
             "ours_over_activations_only": ratio(ours_t, act_t),
             "speedup_vs_numpy": ratio(np_t, ours_t), "speedup_vs_numpy_eval_only": ratio(np_eval_t, ours_t),
             "ours_over_floor": ratio(ours_t, floor_t), "numpy_over_floor": ratio(np_t, floor_t),
             "numpy_allclose_ours": bool(np.allclose(np_img, ours_np, rtol=0, atol=1e-3)),
             "max_abs_diff_numpy_vs_ours": float(np.abs(np_img - ours_np).max()),
             "max_abs_err_ours_vs_float64": float(np.abs(ours_np - truth).max()),
             "max_abs_err_numpy_vs_float64": float(np.abs(np_img - truth).max())}
        if per_genome:
            r.update({"per_genome_s": round(statistics.median(pg_t), 4), "ours_over_per_genome": ratio(ours_t, pg_t)})
        if n_neat:
            r.update({"neat_genomes_timed": n_neat,
                      "neat_ms_per_genome": round(1e3 * statistics.median(neat_t) / args.genomes, 2),
                      "neat_total_s_extrapolated": round(statistics.median(neat_t), 1),
                      "speedup": round(ratio(neat_t, ours_t), 1), "max_abs_diff_vs_neat": neat_err})
        out[f"{H}"] = r
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.genomes} CPPN genomes after {args.mutations} mutations: mean {out['mean_hidden']} hidden "
              f"neurons (max {out['max_hidden']}), {out['mean_hidden_used']} of them feeding the output, "
              f"{out['mean_connections']} connections; device {args.device}, {args.threads} thread(s); "
              f"medians of {args.rounds} interleaved rounds, CPU time; malloc: {out['allocator']}")
        for H in (int(h) for h in args.sizes.split(",")):
            r = out[f"{H}"]
            print(f"{H}×{H}: ours ({r['ours_method']}) {r['ours_s']:.3f} s ({r['ours_ms_per_genome']:.3f} ms/genome); "
                  f"numpy per genome {r['numpy_s']:.3f} s → {r['speedup_vs_numpy']:.2f}× "
                  f"({r['speedup_vs_numpy_eval_only']:.2f}× with its plans precomputed); "
                  f"pixel-math floor {r['floor_s']:.3f} s → ours/floor {r['ours_over_floor']:.2f}× "
                  f"(numpy/floor {r['numpy_over_floor']:.2f}×; dense inputs {r['floor_dense_inputs_s']:.3f} s, "
                  f"sparse {r['floor_sparse_inputs_s']:.3f} s, with numpy's and torch's activations "
                  f"{r['floor_library_activations_s']:.3f} s); the activations alone "
                  f"{r['activations_only_s']:.3f} s → ours {r['ours_over_activations_only']:.2f}× that")
            print(f"    numpy allclose ours (atol 1e-3): {r['numpy_allclose_ours']}, max |numpy − ours| "
                  f"{r['max_abs_diff_numpy_vs_ours']:.1e}; max error vs float64: ours "
                  f"{r['max_abs_err_ours_vs_float64']:.1e}, numpy {r['max_abs_err_numpy_vs_float64']:.1e}")
            if "per_genome_s" in r:
                print(f"    the per-genome numpy renderer {r['per_genome_s']:.3f} s → ours "
                      f"{r['ours_over_per_genome']:.2f}× its time")
            if "speedup" in r:
                print(f"    neat-python per pixel {r['neat_ms_per_genome']:.1f} ms/genome over "
                      f"{r['neat_genomes_timed']} genomes (→ {r['neat_total_s_extrapolated']:.0f} s for "
                      f"{args.genomes}) → {r['speedup']:.0f}×; max |ours − neat| {r['max_abs_diff_vs_neat']:.1e}")
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
