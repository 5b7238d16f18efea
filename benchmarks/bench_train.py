"""The training loop's own overhead: ``course.train.fit`` vs a plain PyTorch loop over the same batches.

Lesson 01 (default profile) trains seven small networks with :func:`course.train_model`, which
calls :func:`course.train.fit`: Adam (lr 1e-3), batches of 128 drawn by a seeded permutation per
epoch, the loss ``cross-entropy + (λ/2)·Σ‖W‖²``, and after every epoch the error on the test set.
Here the same model (same seeded initial weights), the same batches (``course.train._batches`` with
the same seed), the same optimiser, objective and epochs are trained three ways:

- ``fit``: ``fit(model, train, epochs=…, test=None, progress=False)``: the loop alone;
- ``fit_with_test``: ``fit(…, test=test)``, as ``train_model`` calls it (a test-error evaluation
  after every epoch, ``predict_logits`` in batches of 2,048);
- ``plain``: ``for x, y in batches: zero_grad(); loss = F.cross_entropy(model(x), y) + penalty;
  loss.backward(); step()``, the batches being slices of the epoch's permuted images (one gather
  per epoch), no ``loss.item()``, no evaluation.

Models: FC100-100-10 (``fc100_100_10``) and LeNet (``lenet``), on MNIST from the course's cache.
By default a seeded subset of 12,000 training and 2,000 test images (the full sets' 6:1 ratio, so
the per-epoch evaluation weighs what it weighs in the default profile), one epoch per run. One
torch thread; the three loops alternate over ``--rounds`` rounds; process CPU times (the machine
may be shared); the ratios are medians of the per-round ratios. Quality: the final weights of
``fit`` and ``plain`` are compared (the same arithmetic should give the same bits).

    python benchmarks/bench_train.py [--json] [--rounds 3] [--epochs 1] [--n-train 12000]
                                     [--n-test 2000] [--models fc100_100_10,lenet]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from course.data import MNIST, load_mnist
from course.models import build_model, weight_decay_penalty
from course.train import LEARNING_RATE, _batches, fit


def plain_loop(model, images, labels, *, epochs: int, batch_size: int, seed: int, lam: float) -> None:
    """The textbook loop over the same batches as ``fit`` (same seeded permutation per epoch)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.cat(_batches(len(images), batch_size, g))
        for x, y in zip(images[perm].split(batch_size), labels[perm].split(batch_size)):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y) + weight_decay_penalty(model, lam)
            loss.backward()
            optimizer.step()
    model.eval()


def measure(name: str, train: MNIST, test: MNIST, args) -> dict:
    """The three loops on model ``name``, interleaved over ``args.rounds`` rounds."""
    torch.manual_seed(args.seed)
    initial = build_model(name)
    initial.train()
    lam = initial.config.get("weight_decay", 0.0)
    kw = {"batch_size": args.batch_size, "seed": args.seed}
    loops = {"fit": lambda m: fit(m, train, epochs=args.epochs, progress=False, **kw),
             "fit_with_test": lambda m: fit(m, train, epochs=args.epochs, test=test, progress=False, **kw),
             "plain": lambda m: plain_loop(m, train.images, train.labels, epochs=args.epochs, lam=lam, **kw)}
    # Warm-up, untimed (first calls pay for lazy initialisation): each loop on 512 images.
    few = MNIST(train.images[:512], train.labels[:512], train.source, "train/warm-up")
    fit(copy.deepcopy(initial), few, epochs=1, test=test, progress=False)
    plain_loop(copy.deepcopy(initial), few.images, few.labels, epochs=1, batch_size=args.batch_size, seed=0, lam=lam)
    runs, final = {k: [] for k in loops}, {}
    for _ in range(args.rounds):
        for key, loop in loops.items():
            model = copy.deepcopy(initial)
            t = time.process_time()
            loop(model)
            runs[key].append(time.process_time() - t)
            final[key] = model
    diff = max(float((a - b).abs().max()) for a, b in
               zip(final["fit"].state_dict().values(), final["plain"].state_dict().values()))

    def ratio(a, b):
        return round(statistics.median(x / y for x, y in zip(runs[a], runs[b])), 3)

    return {**{f"{k}_s": round(statistics.median(v), 3) for k, v in runs.items()},
            "fit_over_plain": ratio("fit", "plain"), "fit_with_test_over_plain": ratio("fit_with_test", "plain"),
            "max_abs_weight_diff_fit_vs_plain": diff}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--models", default="fc100_100_10,lenet")
    ap.add_argument("--n-train", type=int, default=12000)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    train = load_mnist("train", n=args.n_train)
    test = load_mnist("test", source=train.source, n=args.n_test)
    out = {"benchmark": "train_loop", "source": train.source, "n_train": len(train), "n_test": len(test),
           "epochs": args.epochs, "batch_size": args.batch_size, "rounds": args.rounds, "threads": args.threads,
           "clock": "process CPU time"}
    for name in args.models.split(","):
        out[name] = measure(name, train, test, args)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{out['source']}: {out['n_train']} training, {out['n_test']} test images; {args.epochs} epoch(s), "
              f"batches of {args.batch_size}; {args.threads} thread(s); medians of {args.rounds} interleaved "
              f"rounds, CPU time")
        for name in args.models.split(","):
            r = out[name]
            print(f"{name}: fit {r['fit_s']:.2f} s, fit with per-epoch test error {r['fit_with_test_s']:.2f} s, "
                  f"plain loop {r['plain_s']:.2f} s → fit/plain {r['fit_over_plain']:.3f}×, "
                  f"with test {r['fit_with_test_over_plain']:.3f}×; max |weights fit − plain| "
                  f"{r['max_abs_weight_diff_fit_vs_plain']:.1e}")
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
