"""MAP-Elites generations per second: ours vs pyribs' GridArchive, and our overhead over the forward pass.

Setting (the MNIST direct-encoding run of the paper): 10 cells (one per digit), 200 offspring per
generation, every offspring competes for every cell, polynomial mutation (rate 0.1, η 15), the
same classifier for both. The classifiers are *untrained* (seeded): speed does not depend on the
weights. Timed on the CPU with ``--threads`` torch threads (or ours on ``--device``, below).

1. **Ours vs ribs**, FC100-100-10 classifier. The ribs loop keeps its elites in a
   ``ribs.archives.GridArchive`` with one measure (the class) and 10 cells over [0, 10). ribs puts a
   solution in *one* cell, given by its measure, so every-cell insertion is emulated by adding each
   offspring 10 times per generation — copy c with measure c + 0.5 and objective p_c — in one
   ``add`` of 2,000 solutions; ribs keeps the best per cell if strictly better (as ours does).
   A second emulation is timed too: ten single-cell archives, one per class, each offspring added
   to all ten (ten adds of 200), parents drawn from a uniformly chosen class's archive.
   Parents come from ``archive.sample_elites(200)`` (uniform over elites, as ours). Mutation and
   the forward pass are the very same torch functions in both loops, so the difference is the
   archive: ribs' numpy bookkeeping vs our tensor update.
   The forward pass of the 200 offspring is shared by both loops, so the ratio can never exceed
   ``ribs time / forward time``, what ours would reach if sampling, mutation and insertion cost
   nothing; that ceiling is printed beside the ratio (``ceiling_if_ours_were_free``). Both loops
   also share the mutation (drawing ~16,000 mutating genes and their steps per generation), so
   a second, tighter ceiling is ribs' time over forward pass + mutation
   (``ceiling_if_our_archive_were_free``): what ours would reach if its own archive work cost
   nothing: 5× would need the mutation (shared: it speeds ribs' loop up as much) and our archive
   work both to be nearly free.
2. **Overhead over the forward pass** (the headline): our seconds per generation (sample, mutate,
   render, forward, update; a whole run divided by its generations + 1) over the seconds of the
   forward pass alone on 200 images (softmax included), for FC100-100-10 (``ratio_to_forward``,
   target 1.5×) and LeNet (target 1.1×). The mutation alone (copy the parents, mutate in place)
   over the FC forward pass is ``mutation_over_forward``: it draws only the ~10% of genes that
   mutate, one 64-bit random number each for both its position and its step, compiled for the
   CPU (:mod:`course.evolution.mutation_cpu`); ``tensor_mutation_over_forward`` is the same
   mutation as tensor operations (``method="tensor"``, what a GPU runs), whose dozen elementwise
   passes and torch's CPU generator cost several times more on the CPU.

3. **Archive operations only**: drawing 200 parents and inserting 200 scored children, with
   precomputed random children and probabilities: what the two archives themselves cost.

**The allocator.** ribs' loop makes several arrays of 2,000 × 784 floats (6 MB) per generation:
the 10× repeated batch, and ``add``'s copies of the current elites of those 2,000 entries. With
glibc's default settings, blocks that large are mapped fresh from the kernel and unmapped on free
(or trimmed off the heap's top), so every generation pays for ~1,500 page faults and zeroed pages,
and how often depends on the process's allocation history (glibc adapts its threshold as it goes).
That made ribs' loop 1.5–2.5× slower in some processes than in others, and our ratio swing from
2× to 5× between runs of this script. So by default the script first asks glibc (``mallopt``)
to keep freed memory for reuse: large blocks come from the heap and are never returned, in both
loops alike. ``--default-malloc`` skips that, to see the other case.

    python benchmarks/bench_map_elites.py [--json] [--generations 50] [--rounds 5] [--threads 1]
                                          [--default-malloc] [--device cpu]

``--device cuda``: ours runs there entirely (archive, mutation, forward pass); ribs' loop keeps its
archive in numpy on the CPU, as ribs does, mutates on the device (the same function as ours) and
moves each generation there and back.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import time

import numpy as np
import torch

from course.evolution import DirectEncoding, map_elites
from course.evolution.map_elites import classify

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # clock.py beside this script
from clock import clock  # noqa: E402
from course.models import build_model


def keep_freed_memory() -> str:
    """Ask glibc to serve large blocks from the heap and keep freed memory (no mmap, no trim), so
    that a loop reusing 6 MB arrays does not page-fault on each one. Returns what was done."""
    if not sys.platform.startswith("linux"):
        return f"default ({sys.platform})"
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3   # mallopt's parameter numbers (malloc.h)
        ok = libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):
        return "default (not glibc)"
    return "glibc, mmap and trim thresholds 1 GiB" if ok else "default (mallopt refused)"


def seeded_model(name: str, seed: int = 0, device="cpu"):
    torch.manual_seed(seed)
    return build_model(name).eval().to(device)


def ours_seconds_per_generation(model, encoding, generations: int, offspring: int, seed: int = 0) -> float:
    """Time of a whole run (initial population included) per evaluated batch."""
    map_elites(model, encoding, generations=2, offspring=offspring, seed=seed, progress=False)  # warm-up
    t = clock()
    map_elites(model, encoding, generations=generations, offspring=offspring, seed=seed, progress=False)
    return (clock() - t) / (generations + 1)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def ribs_seconds_per_generation(model, encoding: DirectEncoding, generations: int, offspring: int,
                                seed: int = 0, layout: str = "one", device="cpu") -> float:
    """The same loop with pyribs GridArchives (every-cell insertion emulated, see the docstring).

    ``layout="one"``: one archive, 10 cells, each offspring added 10 times (one add of 2,000).
    ``layout="ten"``: one single-cell archive per class, each offspring added to all ten (ten adds
    of 200); parents: a uniform class per offspring, then ``sample_elites`` from that class.
    """
    from ribs.archives import GridArchive

    n_cells = 10
    shape = encoding.image_shape
    g = torch.Generator(device=device).manual_seed(seed)
    rng = np.random.default_rng(seed)

    def new_archives():
        if layout == "one":
            return [GridArchive(solution_dim=shape, dims=[n_cells], ranges=[(0, n_cells)], seed=seed,
                                dtype=np.float32)]
        return [GridArchive(solution_dim=shape, dims=[1], ranges=[(0, 1)], seed=seed + c, dtype=np.float32)
                for c in range(n_cells)]

    def insert(archives, children: torch.Tensor):
        probs = classify(model, children).cpu().numpy()                 # (B, 10)
        B, x = len(children), children.cpu().numpy()
        if layout == "one":
            archives[0].add(solution=np.repeat(x[None], n_cells, axis=0).reshape(n_cells * B, *shape),
                            objective=probs.T.reshape(-1),              # copy c scored by p_c
                            measures=np.repeat(np.arange(n_cells) + 0.5, B)[:, None])
        else:
            for c, archive in enumerate(archives):
                archive.add(solution=x, objective=probs[:, c], measures=np.full((B, 1), 0.5))

    def parents(archives):
        if layout == "one":
            return archives[0].sample_elites(offspring)["solution"]
        counts = np.bincount(rng.integers(n_cells, size=offspring), minlength=n_cells)
        return np.concatenate([a.sample_elites(k)["solution"] for a, k in zip(archives, counts) if k])

    def run(gens):
        archives = new_archives()
        insert(archives, encoding.random(offspring, g))
        for gen in range(1, gens + 1):
            # sample_elites returns a fresh copy (fancy indexing), so mutate it in place, as ours
            # mutates its freshly gathered parents (DirectEncoding.mutate_).
            insert(archives, encoding.mutate_(torch.from_numpy(parents(archives)).to(device), g, gen))
        return archives

    run(2)  # warm-up (numba compiles)
    t = clock()
    archives = run(generations)
    elapsed = clock() - t
    assert sum(len(a) for a in archives) == n_cells
    return elapsed / (generations + 1)


def forward_seconds(model, offspring: int, generations: int, device="cpu") -> float:
    """Time of the classifier's forward pass (+ softmax) on one generation's images."""
    images = torch.rand(offspring, 1, 28, 28, generator=torch.Generator().manual_seed(0)).to(device)
    classify(model, images)
    _sync(device)
    t = clock()
    for _ in range(generations + 1):
        classify(model, images)
    _sync(device)
    return (clock() - t) / (generations + 1)


def mutation_seconds(encoding: DirectEncoding, offspring: int, generations: int, device="cpu",
                     method: str | None = None) -> float:
    """Time of one generation's mutation (copy the parents, mutate in place), as both loops do it
    (``method``: None, the encoding's own choice; "tensor", the tensor version)."""
    from course.evolution.direct import polynomial_mutation_

    g = torch.Generator(device=device).manual_seed(0)
    parents = encoding.random(offspring, g)

    def mutate(gen):
        polynomial_mutation_(parents.clone(), encoding.rate_at(gen), encoding.eta, g, method=method)

    mutate(1)
    _sync(device)
    t = clock()
    for gen in range(1, generations + 2):
        mutate(gen)
    _sync(device)
    return (clock() - t) / (generations + 1)


def archive_ops_seconds(offspring: int, generations: int, seed: int = 0, device="cpu") -> tuple[float, float]:
    """The archive's own work per generation, nothing else: draw parents, insert 200 scored children.

    Ours: ``sample_parents`` + ``take`` + ``update``; ribs: ``sample_elites`` + ``add`` of the 10×
    repeated batch. Children and probabilities are precomputed random tensors.
    """
    from ribs.archives import GridArchive

    from course.evolution import Archive
    from course.evolution.map_elites import take

    g = torch.Generator().manual_seed(seed)
    children = torch.rand(generations + 1, offspring, 1, 28, 28, generator=g)
    probs = torch.softmax(10 * torch.randn(generations + 1, offspring, 10, generator=g), dim=2)
    gd = torch.Generator(device=device).manual_seed(seed)
    cd, pd = children.to(device), probs.to(device)
    archive = Archive(10, device=torch.device(device))
    archive.update(cd[0], cd[0], pd[0])
    _sync(device)
    t = clock()
    for i in range(1, generations + 1):
        take(archive.genomes, archive.sample_parents(offspring, gd))
        archive.update(cd[i], cd[i], pd[i])
    _sync(device)
    ours = (clock() - t) / generations

    x, p = children.numpy(), probs.numpy()
    measures = np.repeat(np.arange(10) + 0.5, offspring)[:, None]
    r = GridArchive(solution_dim=(1, 28, 28), dims=[10], ranges=[(0, 10)], seed=seed, dtype=np.float32)
    r.add(solution=np.repeat(x[0][None], 10, axis=0).reshape(-1, 1, 28, 28), objective=p[0].T.reshape(-1),
          measures=measures)
    t = clock()
    for i in range(1, generations + 1):
        r.sample_elites(offspring)
        r.add(solution=np.repeat(x[i][None], 10, axis=0).reshape(-1, 1, 28, 28), objective=p[i].T.reshape(-1),
              measures=measures)
    return ours, (clock() - t) / generations


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--generations", type=int, default=50, help="generations per timed run")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are reported")
    ap.add_argument("--offspring", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="where ours runs (and the classifier, for both)")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc's allocator as it is (ribs' loop then page-faults; see the docstring)")
    args = ap.parse_args(argv)
    allocator = "default" if args.default_malloc else keep_freed_memory()
    torch.set_num_threads(args.threads)
    timer = clock.choose(args.device, args.threads)
    G, B = args.generations, args.offspring
    enc = DirectEncoding()
    dev = args.device
    fc, lenet = seeded_model("fc100_100_10", device=dev), seeded_model("lenet", device=dev)

    # Every measurement is repeated in interleaved rounds (the machine may be shared) and the
    # median taken, so all contenders see the same background load.
    runs = {"ours_fc": lambda: ours_seconds_per_generation(fc, enc, G, B),
            "ribs_fc": lambda: ribs_seconds_per_generation(fc, enc, G, B, layout="one", device=dev),
            "ribs10_fc": lambda: ribs_seconds_per_generation(fc, enc, G, B, layout="ten", device=dev),
            "ours_lenet": lambda: ours_seconds_per_generation(lenet, enc, G, B),
            "fwd_lenet": lambda: forward_seconds(lenet, B, G, dev),
            "fwd_fc": lambda: forward_seconds(fc, B, G, dev),
            "mutation": lambda: mutation_seconds(enc, B, G, dev),
            "mutation_tensor": lambda: mutation_seconds(enc, B, G, dev, method="tensor"),
            "archive_ops": lambda: archive_ops_seconds(B, G, device=dev)}
    times = {k: [] for k in runs}
    for _ in range(args.rounds):
        for k, f in runs.items():
            times[k].append(f())
    T = {k: np.array(v) for k, v in times.items()}
    med = {k: np.median(v, axis=0) for k, v in T.items()}
    ours_fc, ribs_fc, ribs10_fc = med["ours_fc"], med["ribs_fc"], med["ribs10_fc"]
    ours_lenet, fwd_lenet = med["ours_lenet"], med["fwd_lenet"]
    ours_ops, ribs_ops = med["archive_ops"]
    # Ratios: the median of the per-round ratios (each round's pair ran back to back).
    speed_ribs = np.median(T["ribs_fc"] / T["ours_fc"])
    speed_ribs10 = np.median(T["ribs10_fc"] / T["ours_fc"])
    speed_ops = np.median(T["archive_ops"][:, 1] / T["archive_ops"][:, 0])
    ratio_lenet = np.median(T["ours_lenet"] / T["fwd_lenet"])
    ratio_fc = np.median(T["ours_fc"] / T["fwd_fc"])                  # whole loop over its forward pass
    mutation_share = np.median(T["mutation"] / T["fwd_fc"])
    tensor_mutation_share = np.median(T["mutation_tensor"] / T["fwd_fc"])
    ceiling = np.median(T["ribs_fc"] / T["fwd_fc"])   # ours if everything but the forward pass were free
    ceiling_shared = np.median(T["ribs_fc"] / (T["fwd_fc"] + T["mutation"]))  # ours if its archive were free

    import ribs
    out = {"benchmark": "map_elites", "offspring": B, "generations_per_run": G, "rounds": args.rounds,
           "cells": 10, "threads": args.threads, "device": dev, "allocator": allocator, "clock": timer,
           "classifiers": "untrained, seeded",
           "ribs_version": ribs.__version__,
           "fc100_100_10": {"ours_ms_per_gen": round(1e3 * ours_fc, 3),
                            "ratio_to_forward": round(float(ratio_fc), 3), "target_ratio_to_forward": 1.5,
                            "mutation_over_forward": round(float(mutation_share), 3),
                            "tensor_mutation_over_forward": round(float(tensor_mutation_share), 3),
                            "tensor_mutation_ms_per_gen": round(1e3 * med["mutation_tensor"], 3),
                            "ours_gen_per_s": round(1 / ours_fc, 1), "ribs_gen_per_s": round(1 / ribs_fc, 1),
                            "speedup_vs_ribs": round(float(speed_ribs), 2),
                            "forward_ms_per_gen": round(1e3 * med["fwd_fc"], 3),
                            "ceiling_if_ours_were_free": round(float(ceiling), 2),
                            "mutation_ms_per_gen": round(1e3 * med["mutation"], 3),
                            "ceiling_if_our_archive_were_free": round(float(ceiling_shared), 2),
                            "ribs_ten_archives_gen_per_s": round(1 / ribs10_fc, 1),
                            "speedup_vs_ribs_ten_archives": round(float(speed_ribs10), 2)},
           "archive_ops_only": {"ours_ms_per_gen": round(1e3 * ours_ops, 3), "ribs_ms_per_gen": round(1e3 * ribs_ops, 3),
                                "speedup": round(float(speed_ops), 1)},
           "lenet": {"ours_ms_per_gen": round(1e3 * ours_lenet, 2), "forward_ms_per_gen": round(1e3 * fwd_lenet, 2),
                     "ratio_to_forward": round(float(ratio_lenet), 3), "target_ratio_to_forward": 1.1}}
    if args.json:
        print(json.dumps(out))
    else:
        f, a, l = out["fc100_100_10"], out["archive_ops_only"], out["lenet"]
        print(f"MAP-Elites, direct encoding, {B} offspring/generation, 10 cells, every-cell insertion; "
              f"median of {args.rounds} interleaved rounds of {G} generations; {args.threads} thread(s); "
              f"untrained classifiers; device {dev}; allocator: {allocator}; {timer}")
        print(f"FC100-100-10 whole loop over its forward pass: {f['ratio_to_forward']}× (target ≤ 1.5×; "
              f"{f['ours_ms_per_gen']} ms/gen, forward {f['forward_ms_per_gen']} ms, mutation "
              f"{f['mutation_ms_per_gen']} ms = {f['mutation_over_forward']}× the forward pass; as tensor "
              f"operations {f['tensor_mutation_ms_per_gen']} ms = {f['tensor_mutation_over_forward']}×)")
        print(f"FC100-100-10 whole loop: ours {f['ours_gen_per_s']} gen/s; ribs {out['ribs_version']} one 10-cell "
              f"archive {f['ribs_gen_per_s']} gen/s → {f['speedup_vs_ribs']}×; ten 1-cell archives "
              f"{f['ribs_ten_archives_gen_per_s']} gen/s → {f['speedup_vs_ribs_ten_archives']}×")
        print(f"  the shared forward pass alone takes {f['forward_ms_per_gen']} ms/gen: even a free evolution "
              f"could beat ribs by at most {f['ceiling_if_ours_were_free']}×")
        print(f"  with the shared mutation ({f['mutation_ms_per_gen']} ms/gen) too: a free archive could beat ribs "
              f"by at most {f['ceiling_if_our_archive_were_free']}×")
        print(f"Archive operations only (parents + insertion): ours {a['ours_ms_per_gen']} ms/gen, ribs "
              f"{a['ribs_ms_per_gen']} ms/gen → {a['speedup']}×")
        print(f"LeNet: ours {l['ours_ms_per_gen']} ms/generation, forward pass alone {l['forward_ms_per_gen']} ms "
              f"→ {l['ratio_to_forward']}× the forward pass")
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
