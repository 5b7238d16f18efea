"""The forward pass of the course's trained MNIST networks on the CPU, against two baselines.

1. **Tiny weights zeroed** (``course.models.tiny_weights``, what ``train_model`` returns) vs the
   weights exactly as trained (``train_model(..., flush_tiny=False)``): weight decay leaves the
   weights the data never reaches in the subnormal range, where an x86 CPU computes through
   microcode assists. Quality: the logits of both, compared bit for bit.
2. **LeNet's compiled 2×2 max pool** (``course.models.pooling``) vs PyTorch's ``nn.MaxPool2d`` in
   the same (flushed) network, for the eval forward pass and for a training step (forward, backward,
   Adam). Quality: outputs and gradients compared bit for bit.

The networks are the ``--profile``'s (``default``: full MNIST, as the lessons use them), trained by
``course.train_model`` or loaded from its cache; the inputs are ``--batch`` uniform random images,
what MAP-Elites evaluates (200 offspring a generation in lessons 06-07), and for the training step
a batch of 128 real training images. One torch thread; the contenders alternate over ``--rounds``
rounds of ``--repeat`` calls; process CPU times; medians.

    python benchmarks/bench_forward.py [--json] [--profile default] [--rounds 5] [--repeat 20]
                                       [--batch 200] [--models fc100_100_10,lenet]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys

import torch
from torch import nn

import course
from course import memory
from course.models import tiny_threshold
from course.train import LEARNING_RATE, train_step

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # clock.py beside this script
from clock import clock  # noqa: E402


def per_call(fn, repeat: int) -> float:
    t = clock()
    for _ in range(repeat):
        fn()
    return (clock() - t) / repeat


def interleaved(contenders: dict, rounds: int, repeat: int) -> dict:
    for fn in contenders.values():
        fn()                                   # warm-up (numba compiles, caches fill)
    times = {k: [] for k in contenders}
    for _ in range(rounds):
        for k, fn in contenders.items():
            times[k].append(per_call(fn, repeat))
    return {k: statistics.median(v) for k, v in times.items()}


def with_pytorch_pools(lenet: nn.Module) -> nn.Module:
    plain = copy.deepcopy(lenet)
    plain.pool1, plain.pool2 = nn.MaxPool2d(2), nn.MaxPool2d(2)
    return plain


def training_step(model: nn.Module, x, y):
    """A copy of ``model`` and a function making one of ``course.train``'s steps on it (Adam)."""
    model = copy.deepcopy(model).train()
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    lam = model.config.get("weight_decay", 0.0)
    return model, lambda: train_step(model, opt, x, y, lam)


def measure(name: str, args, train) -> dict:
    flushed, info = course.train_model(name, profile=args.profile, device="cpu", progress=False)
    exact, _ = course.train_model(name, profile=args.profile, device="cpu", progress=False, flush_tiny=False)
    threshold = tiny_threshold(torch.float32)
    tiny = sum(int(((p.abs() < threshold) & (p != 0)).sum()) for p in exact.parameters())
    x = torch.rand(args.batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        same = torch.equal(flushed(x), exact(x))
        med = interleaved({"flushed": lambda: flushed(x), "as_trained": lambda: exact(x)}, args.rounds, args.repeat)
    out = {"test_error": info["test_error"], "parameters": sum(p.numel() for p in exact.parameters()),
           "tiny_weights": tiny, "forward_ms": {k: round(1e3 * v, 3) for k, v in med.items()},
           "speedup_flushed_vs_as_trained": round(med["as_trained"] / med["flushed"], 2),
           "logits_bit_identical": same}
    if name == "lenet":
        plain = with_pytorch_pools(flushed)
        with torch.no_grad():
            same_pool = torch.equal(flushed(x), plain(x))
            fwd = interleaved({"compiled_pool": lambda: flushed(x), "pytorch_pool": lambda: plain(x)},
                              args.rounds, args.repeat)
        xb, yb = train.images[:128], train.labels[:128].long()
        a, step_a = training_step(flushed, xb, yb)
        b, step_b = training_step(plain, xb, yb)
        step_a(), step_b()
        same_step = all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
        steps = interleaved({"compiled_pool": step_a, "pytorch_pool": step_b}, args.rounds, max(1, args.repeat // 4))
        out["pool"] = {"forward_ms": {k: round(1e3 * v, 3) for k, v in fwd.items()},
                       "forward_speedup": round(fwd["pytorch_pool"] / fwd["compiled_pool"], 2),
                       "train_step_ms": {k: round(1e3 * v, 2) for k, v in steps.items()},
                       "train_step_speedup": round(steps["pytorch_pool"] / steps["compiled_pool"], 2),
                       "outputs_bit_identical": same_pool, "weights_after_a_step_bit_identical": same_step}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--profile", default="default", choices=["ci", "default", "paper"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--models", default="fc100_100_10,lenet")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    timer = clock.choose("cpu", 1)
    memory.keep_freed_memory()
    train = course.load_mnist("train", n=2000)
    out = {"clock": timer, "profile": args.profile, "batch": args.batch,
           "models": {name: measure(name, args, train) for name in args.models.split(",")}}
    if args.json:
        print(json.dumps(out))
    else:
        for name, r in out["models"].items():
            print(f"{name}: {r['tiny_weights']} of {r['parameters']} weights tiny; forward on {args.batch} "
                  f"images {r['forward_ms']['flushed']} ms flushed vs {r['forward_ms']['as_trained']} ms as "
                  f"trained ({r['speedup_flushed_vs_as_trained']}×), logits identical: {r['logits_bit_identical']}")
            if "pool" in r:
                p = r["pool"]
                print(f"  compiled pool vs nn.MaxPool2d: forward {p['forward_speedup']}×, training step "
                      f"{p['train_step_speedup']}×; identical: {p['outputs_bit_identical']} and "
                      f"{p['weights_after_a_step_bit_identical']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
