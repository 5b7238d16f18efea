"""One MAP-Elites generation on 1000 ImageNet cells against the network's forward pass, and the
forward pass with and without glibc's allocator told to keep freed memory.

Setting (lesson 12's default): EfficientNet-Lite0 with its real ImageNet weights, colour CPPN
images rendered at the network's input size (224×224) and scored whole, ``--offspring`` per
generation, one archive cell per class. Timed on the CPU with ``--threads`` torch threads.

1. **MAP-Elites over its forward floor.** Seconds per generation of :func:`course.evolution.map_elites`
   (sample parents, mutate, render, classify, update the 1000-cell archive; a whole run divided
   by its generations + 1) over the seconds of the network's forward pass (+ softmax) alone on a
   generation's images (the same rendered CPPN images). Nothing can beat the forward pass, so the
   ratio is the overhead of everything else; the target is at most 1.1×. The render alone is timed
   too. Both sides classify in chunks of ``--batch-size`` images (``map_elites(batch_size=...)``
   and the floor alike): a whole generation of activations at once is over a gigabyte, which
   glibc hands back to the kernel and faults in again on every pass. The archive keeps the
   1000 elites' genomes only and renders their images on demand (a stored image per elite
   would be 600 MB, allocated per run and copied on every improvement: 1.66× the forward pass
   instead of ~1.0× with batches of 32). ``--precision bfloat16`` runs the network in bfloat16
   (``create_model(precision=...)``; 2-3× faster on a CPU with AVX-512 BF16), where the render
   and the rest of the generation weigh more.
2. **The allocator.** Images per second of the forward pass in two fresh processes: glibc's
   default malloc, and ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<1 GiB>`` (what
   :func:`course.memory.keep_freed_memory` sets in a running process, and ``course run`` for its
   kernels). By default, glibc maps each activation of more than its (adaptive) threshold fresh
   from the kernel and unmaps it on free, so every forward pass page-faults on megabytes.

Rounds are interleaved (ours, the floor, ours, ...) and medians reported, so another job on the
machine slows both alike; with one thread on the CPU both are timed in this process's CPU time.

    python benchmarks/bench_imagenet.py [--json] [--generations 5] [--rounds 3] [--offspring 100]
                                        [--batch-size 32] [--precision float32|bfloat16]
                                        [--threads 1] [--model efficientnet_lite0] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from course import imagenet, memory
from course.evolution import CPPNEncoding, map_elites
from course.evolution.map_elites import classify

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # clock.py beside this script
from clock import clock  # noqa: E402


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def generation_seconds(net, encoding, generations: int, offspring: int, seed: int = 0,
                       batch_size: int | None = None) -> float:
    """Time of a whole MAP-Elites run (initial population included) per generation."""
    t = clock()
    map_elites(net, encoding, generations=generations, offspring=offspring, seed=seed,
               batch_size=batch_size, progress=False)
    _sync(net.mean.device)
    return (clock() - t) / (generations + 1)


def forward_seconds(net, images: torch.Tensor, repeats: int, batch_size: int | None = None) -> float:
    """Seconds of the classifier's forward pass + softmax on ``images`` (in chunks of
    ``batch_size``, as MAP-Elites classifies them), the mean of ``repeats``."""
    _sync(images.device)
    t = clock()
    for _ in range(repeats):
        classify(net, images, batch_size)
    _sync(images.device)
    return (clock() - t) / repeats


def render_seconds(encoding, genomes, repeats: int) -> float:
    t = clock()
    for _ in range(repeats):
        encoding.render(genomes)
    return (clock() - t) / repeats


def images_per_second(model: str, size: int, batch: int, repeats: int, threads: int) -> float:
    """Forward images/s in this process (called in a child process by :func:`allocator_comparison`)."""
    torch.set_num_threads(threads)
    net = imagenet.create_model(model, device="cpu")
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    classify(net, x)  # warm-up
    return batch / forward_seconds(net, x, repeats)


def allocator_comparison(model: str, size: int, batch: int, repeats: int, threads: int, rounds: int) -> dict:
    """images/s with glibc's default malloc and with freed memory kept, each in fresh processes."""
    code = ("import sys, json; from benchmarks.bench_imagenet import images_per_second as f; "
            f"print(json.dumps(f({model!r}, {size}, {batch}, {repeats}, {threads})))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = {"default_malloc": [], "freed_memory_kept": []}
    for _ in range(rounds):
        for key, extra in (("default_malloc", {}), ("freed_memory_kept", memory.MALLOC_ENV)):
            res = subprocess.run([sys.executable, "-c", code], env={**base, **extra, "PYTHONPATH": root},
                                 capture_output=True, text=True, check=True)
            out[key].append(json.loads(res.stdout.strip().splitlines()[-1]))
    med = {k: statistics.median(v) for k, v in out.items()}
    return {"images_per_s": med, "runs": out, "speedup": med["freed_memory_kept"] / med["default_malloc"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--generations", type=int, default=5, help="generations per timed MAP-Elites run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    ap.add_argument("--offspring", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=32,
                    help="images per forward pass, on both sides (0: the whole generation at once)")
    ap.add_argument("--precision", default="float32", choices=["float32", "bfloat16"],
                    help="the network's precision (create_model's precision=)")
    ap.add_argument("--skip-allocator", action="store_true", help="skip the two-process malloc comparison")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    kept = memory.keep_freed_memory()
    timer = clock.choose(args.device, args.threads)
    bs = args.batch_size or None
    net = imagenet.create_model(args.model, device=args.device, precision=args.precision)
    size = net.input_size
    encoding = CPPNEncoding(shape=(3, size, size))
    genomes = encoding.random(args.offspring, torch.Generator(device=args.device).manual_seed(0))
    images = encoding.render(genomes)
    generation_seconds(net, encoding, 1, args.offspring, batch_size=bs)  # warm-up
    gen, fwd, ren = [], [], []
    for _ in range(args.rounds):
        gen.append(generation_seconds(net, encoding, args.generations, args.offspring, batch_size=bs))
        fwd.append(forward_seconds(net, images, args.generations + 1, bs))
        ren.append(render_seconds(encoding, genomes, 3))
    g, f, r = (statistics.median(v) for v in (gen, fwd, ren))
    ratio = statistics.median(a / b for a, b in zip(gen, fwd))   # per round: both timed back to back
    result = {
        "model": net.source, "image_size": size, "offspring": args.offspring, "cells": 1000,
        "threads": args.threads, "device": args.device, "freed_memory_kept": kept,
        "precision": args.precision, "batch_size": bs, "clock": timer,
        "seconds_per_generation": g, "forward_seconds": f, "render_seconds": r,
        "generation_over_forward": ratio, "target": 1.1,
        "rounds": {"generation": gen, "forward": fwd, "render": ren},
    }
    if not args.skip_allocator and args.device == "cpu":
        result["allocator"] = allocator_comparison(args.model, size, min(args.offspring, 32), 8, args.threads,
                                                   args.rounds)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{net.label}, {size}×{size}, {args.offspring} offspring, 1000 cells, {args.threads} thread(s), "
          f"{args.device}, {args.precision}, batches of {bs or args.offspring}; {timer}")
    print(f"  MAP-Elites generation {g * 1e3:8.1f} ms   forward pass {f * 1e3:8.1f} ms   render {r * 1e3:6.1f} ms")
    print(f"  generation / forward floor: {ratio:.3f}× (median over rounds; target ≤ 1.1×)")
    if "allocator" in result:
        a = result["allocator"]["images_per_s"]
        print(f"  forward images/s: default malloc {a['default_malloc']:.1f}, freed memory kept "
              f"{a['freed_memory_kept']:.1f} ({result['allocator']['speedup']:.2f}×)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
