"""Render 1,000 CPPN genomes: our batched tensor renderer vs neat-python, pixel by pixel.

The genomes: 1,000 seeded :class:`CPPNEncoding` genomes after 10 rounds of mutation (a few hidden
neurons each; the means are printed). For neat-python each of our genomes is rebuilt as a genuine
neat genome (``DefaultNodeGene`` / ``DefaultConnectionGene``, bias 0, response 1, ``sum``
aggregation, our four activations registered under their names) and turned into a
``neat.nn.FeedForwardNetwork`` with ``FeedForwardNetwork.create``; the network is then activated
once per pixel, the usual way of drawing a CPPN with neat-python. Building the network is timed
too. neat is slow, so it renders a seeded subset of the same genomes (``--neat-28`` and
``--neat-224`` genomes) and its time *per genome* is extrapolated to 1,000; the subset's images are
checked against ours (max abs difference printed). The two alternate over ``--rounds`` rounds
and medians are reported (the machine may be shared).

    python benchmarks/bench_cppn.py [--json] [--threads 1] [--device cpu] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from types import SimpleNamespace

import torch

from course.evolution.cppn import N_INPUTS, CPPNEncoding, coordinates


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


def time_ours(enc: CPPNEncoding, pop: dict, hw) -> float:
    """Wall time of rendering the whole population at ``hw``."""
    t = time.perf_counter()
    enc.render(pop, hw)
    if pop["weight"].is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t


def time_neat(pop: dict, indices, H: int, W: int, ours_img: torch.Tensor) -> tuple[float, float]:
    """(seconds per genome, max |neat − ours|) over the genomes at ``indices``."""
    err = 0.0
    t = time.perf_counter()
    for i in indices:
        img = neat_render({k: v[i] for k, v in pop.items()}, H, W)
        err = max(err, float((img - ours_img[i].double()).abs().max()))
    return (time.perf_counter() - t) / max(1, len(indices)), err


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--genomes", type=int, default=1000)
    ap.add_argument("--neat-28", type=int, default=40, help="genomes neat renders at 28×28")
    ap.add_argument("--neat-224", type=int, default=3, help="genomes neat renders at 224×224")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (neat uses one)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3, help="alternating timing rounds (medians reported)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    enc, pop = make_genomes(args.genomes, args.seed, device=args.device)
    hidden, conns = enc.sizes(pop)
    cpu_pop = {k: v.cpu() for k, v in pop.items()}
    subset = torch.randperm(args.genomes, generator=torch.Generator().manual_seed(args.seed))
    out = {"benchmark": "cppn_render", "genomes": args.genomes, "device": args.device, "threads": args.threads,
           "rounds": args.rounds,
           "mean_hidden": round(float(hidden.float().mean()), 2), "max_hidden": int(hidden.max()),
           "mean_connections": round(float(conns.float().mean()), 2)}
    # Ours and neat alternate, round after round (the machine may be shared); we report medians
    # and the median of the per-round speedups.
    for H, n_neat in ((28, args.neat_28), (224, args.neat_224)):
        enc.render({k: v[:8] for k, v in pop.items()}, (H, H))  # warm-up
        ours_img = enc.render(pop, (H, H)).cpu()
        idx = subset[:n_neat].tolist()
        ours_t, neat_t, err = [], [], 0.0
        for _ in range(args.rounds):
            ours_t.append(time_ours(enc, pop, (H, H)))
            per, e = time_neat(cpu_pop, idx, H, H, ours_img)
            neat_t.append(per)
            err = max(err, e)
        ours, neat_per = statistics.median(ours_t), statistics.median(neat_t)
        speedup = statistics.median(n * args.genomes / o for n, o in zip(neat_t, ours_t))
        out[f"{H}"] = {"ours_total_s": round(ours, 4), "ours_ms_per_genome": round(1e3 * ours / args.genomes, 4),
                       "neat_genomes_timed": n_neat, "neat_ms_per_genome": round(1e3 * neat_per, 2),
                       "neat_total_s_extrapolated": round(neat_per * args.genomes, 1),
                       "speedup": round(speedup, 1), "max_abs_diff_vs_neat": err}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.genomes} CPPN genomes, mean {out['mean_hidden']} hidden neurons (max {out['max_hidden']}), "
              f"{out['mean_connections']} connections; device {args.device}, {args.threads} thread(s)")
        for H in (28, 224):
            r = out[f"{H}"]
            print(f"{H}×{H}: ours {r['ours_total_s']:.3f} s ({r['ours_ms_per_genome']:.3f} ms/genome); neat-python "
                  f"{r['neat_ms_per_genome']:.1f} ms/genome over {r['neat_genomes_timed']} genomes "
                  f"(→ {r['neat_total_s_extrapolated']:.0f} s for {args.genomes}); speedup {r['speedup']:.0f}×; "
                  f"max |ours − neat| {r['max_abs_diff_vs_neat']:.1e}")
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
