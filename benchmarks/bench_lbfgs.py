"""Benchmark: our batched L-BFGS attack against the classic one-image-at-a-time scipy loop.

Both sides solve the same problems with the same budget:

- the same FC100-100-10 (trained here, seeded, on 10,000 MNIST images, in a few seconds);
- the same images and random wrong targets (seeded);
- the same objective ``c·‖x' − x‖² + CE(model(x'), target)`` over the box [0, 1]^784, started at
  the clean image;
- the same search over c: the grid ``c_init · c_factor^(−k)``, then ``refine_steps`` rounds of
  ``refine_points`` geometric steps between the largest c that succeeded and the next one up,
  warm-started at the minimiser for the former; the same pick (the successful run with the
  smallest distortion);
- the same iteration budget per run (``max_iter``, ``history`` pairs, scipy's default
  tolerances ``factr = 1e7``, ``pgtol = 1e-5``, which ours copies) and the same number of threads.

The baseline is how the attack is usually written: ``scipy.optimize.fmin_l_bfgs_b`` with bounds,
one image and one c at a time, the model called on a single image per evaluation. Ours is
:func:`course.attacks.lbfgs_attack`: every image and every c of the grid in one batch.

Printed: seconds per image for both and their ratio, success rates and mean distortions of both,
and our overhead over our compute floor (our forward + backward passes, counted in single-image
rows, times the per-row cost of one batched forward + backward pass of the stage-1 batch size).

    python benchmarks/bench_lbfgs.py [--n-images 128] [--threads 1] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-images", type=int, default=128, help="test images attacked (≥ 64 recommended)")
    p.add_argument("--baseline-images", type=int, default=None,
                   help="attack only this many of them with the slow baseline (default: all)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for both sides (torch and BLAS)")
    p.add_argument("--profile", default="default", help="profile whose lbfgs.* settings are used")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:  # thread counts must be set before numpy / torch load their BLAS
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from scipy.optimize import fmin_l_bfgs_b  # noqa: E402

from course.attacks import distortion, lbfgs_attack  # noqa: E402
from course.data import load_mnist  # noqa: E402
from course.models import build_model, weight_decay_penalty  # noqa: E402
from course.profiles import setting  # noqa: E402


def train_fc100(seed: int, n_train: int = 10_000, epochs: int = 8) -> tuple[torch.nn.Module, float]:
    """A briefly trained FC100-100-10 (Adam, weight decay from its config); returns it and its test error."""
    torch.manual_seed(seed)
    train, test = load_mnist("train", n=n_train, seed=seed), load_mnist("test")
    model = build_model("fc100_100_10")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(train), generator=g).split(128):
            opt.zero_grad()
            loss = F.cross_entropy(model(train.images[idx]), train.labels[idx])
            (loss + weight_decay_penalty(model, model.config["weight_decay"])).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        err = (model(test.images).argmax(1) != test.labels).float().mean().item()
    return model, err


def scipy_attack_one(model, x, target, *, c_init, c_factor, c_steps, refine_steps, refine_points, max_iter, history,
                     warm_start=True, ftol=1e-6, pgtol=1e-5):
    """The classic attack on one image: scipy's L-BFGS-B for each c, the c search in a Python loop.

    Returns (adversarial image, success, chosen c, number of forward + backward passes).
    """
    x0 = x.reshape(1, -1)
    tgt = torch.tensor([target])
    bounds = [(0.0, 1.0)] * x0.shape[1]
    evals = 0

    def run(c, start):
        nonlocal evals

        def func(z):
            nonlocal evals
            evals += 1
            xt = torch.from_numpy(z).float().view(1, -1).requires_grad_(True)
            loss = c * (xt - x0).pow(2).sum() + F.cross_entropy(model(xt.view(1, *x.shape)), tgt)
            (grad,) = torch.autograd.grad(loss, xt)
            return loss.item(), grad.view(-1).double().numpy()

        z, _, _ = fmin_l_bfgs_b(func, start.view(-1).double().numpy(), bounds=bounds, m=history,
                                maxiter=max_iter, factr=ftol / np.finfo(float).eps, pgtol=pgtol)
        xa = torch.from_numpy(z).float().view(1, -1)
        with torch.no_grad():
            hit = model(xa.view(1, *x.shape)).argmax(1).item() == target
        return xa, hit, (xa - x0).pow(2).mean().sqrt().item()

    best = (None, False, None, float("inf"))  # x, success, c, distortion
    c_ok, x_ok, last = 0.0, None, None
    for k in range(c_steps):
        c = c_init * c_factor ** -k
        xa, hit, d = run(c, x0)
        last = (xa, c)
        if hit:
            if c > c_ok:
                c_ok, x_ok = c, xa
            if d < best[3]:
                best = (xa, True, c, d)
    if c_ok > 0:
        c_fail = c_ok * c_factor
        for _ in range(refine_steps):  # each round: refine_points values of c inside the bracket
            c_lo, c_hi, start = c_ok, c_fail, (x_ok if warm_start else x0)
            tried = []
            for j in range(1, refine_points + 1):
                c = c_lo * (c_hi / c_lo) ** (j / (refine_points + 1))
                xa, hit, d = run(c, start)
                tried.append((c, hit, xa))
                if hit and d < best[3]:
                    best = (xa, True, c, d)
            # New bracket: the largest c that succeeded, the smallest failure above it.
            for c, hit, xa in tried:
                if hit:
                    c_ok, x_ok = c, xa
            fails = [c for c, hit, _ in tried if not hit and c > c_ok]
            c_fail = min(fails) if fails else c_fail
    if not best[1]:
        best = (last[0], False, last[1], None)
    return best[0].view_as(x), best[1], best[2], evals


def floor_per_row(model, x, targets, c, reps: int = 20) -> float:
    """Seconds per row of one batched forward + backward pass of the attack's objective."""
    x0 = x.reshape(len(x), -1)
    xa = x0.clone().requires_grad_(True)

    def once():
        loss = c * (xa - x0).pow(2).sum(1) + F.cross_entropy(model(xa.view_as(x)), targets, reduction="none")
        torch.autograd.grad(loss.sum(), xa)

    once()
    t = time.perf_counter()
    for _ in range(reps):
        once()
    return (time.perf_counter() - t) / reps / len(x)


def main(args) -> dict:
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, test_err = train_fc100(args.seed)
    train_s = time.perf_counter() - t0
    for p in model.parameters():
        p.requires_grad_(False)  # neither side needs parameter gradients

    test = load_mnist("test")
    g = torch.Generator().manual_seed(args.seed + 1)
    pick = torch.randperm(len(test), generator=g)[: args.n_images]
    x, y = test.images[pick], test.labels[pick]
    targets = (y + torch.randint(1, 10, (len(y),), generator=g)) % 10  # a random wrong label

    cfg = {k: setting(f"lbfgs.{k}", args.profile)
           for k in ("c_init", "c_factor", "c_steps", "refine_steps", "refine_points", "max_iter", "history")}
    cfg.update(warm_start=True, ftol=1e-6, pgtol=1e-5)  # lbfgs_attack's defaults, spelled out

    lbfgs_attack(model, x[:4], targets[:4], **{**cfg, "max_iter": 3})  # warm-up

    def time_ours():
        t, c = time.perf_counter(), time.process_time()
        res = lbfgs_attack(model, x, targets, labels=y, **cfg)
        return res, time.perf_counter() - t, time.process_time() - c

    # The machine may be shared: ours is timed three times (before, halfway through and after the
    # long baseline run) and averaged, so both sides see the same mix of load.
    nb = args.baseline_images or len(x)
    ours_runs = [time_ours()]
    base_adv, base_ok, base_evals, base_s, base_cpu = [], [], 0, 0.0, 0.0
    for i in range(nb):
        if i == nb // 2:
            ours_runs.append(time_ours())
        t, c = time.perf_counter(), time.process_time()
        xa, ok, _, ev = scipy_attack_one(model, x[i], int(targets[i]), **cfg)
        base_s, base_cpu = base_s + time.perf_counter() - t, base_cpu + time.process_time() - c
        base_adv.append(xa), base_ok.append(ok)
        base_evals += ev
    ours_runs.append(time_ours())
    ours = ours_runs[0][0]
    ours_s = sum(r[1] for r in ours_runs) / len(ours_runs)
    ours_cpu = sum(r[2] for r in ours_runs) / len(ours_runs)
    base_ok = torch.tensor(base_ok)
    base_dist = distortion(x[:nb], torch.stack(base_adv))

    n_stage1 = len(x) * cfg["c_steps"]
    reps = max(1, -(-n_stage1 // len(x)))
    per_row = floor_per_row(model, x.repeat(reps, 1, 1, 1)[:n_stage1], targets.repeat(reps)[:n_stage1], 1.0)
    floor_s = ours.n_rows * per_row

    def mean_dist(d, ok):
        return d[ok].mean().item() if ok.any() else float("nan")

    both = ours.success[:nb] & base_ok
    return {
        "device": "cpu", "threads": args.threads, "n_images": len(x), "baseline_images": nb,
        "model": "fc100_100_10", "model_test_error": round(test_err, 4), "train_s": round(train_s, 2),
        "settings": cfg,
        "ours_s_per_image": ours_s / len(x), "baseline_s_per_image": base_s / nb,
        "speedup": (base_s / nb) / (ours_s / len(x)),
        "ours_cpu_s_per_image": ours_cpu / len(x), "baseline_cpu_s_per_image": base_cpu / nb,
        "speedup_cpu": (base_cpu / nb) / (ours_cpu / len(x)),
        "ours_s_runs": [round(r[1], 3) for r in ours_runs],
        "ours_success": ours.success.float().mean().item(), "baseline_success": base_ok.float().mean().item(),
        "ours_mean_distortion": ours.mean_distortion(), "baseline_mean_distortion": mean_dist(base_dist, base_ok),
        "ours_mean_distortion_on_common": mean_dist(ours.distortion[:nb], both),
        "baseline_mean_distortion_on_common": mean_dist(base_dist, both),
        "ours_rows": ours.n_rows, "ours_batched_passes": ours.n_evals, "baseline_passes": base_evals,
        "floor_s": floor_s, "ours_s": ours_s, "overhead_over_floor": ours_s / floor_s,
    }


def report(r: dict) -> str:
    lines = [
        f"FC100-100-10 (test error {r['model_test_error']:.2%}, trained in {r['train_s']:.1f}s); "
        f"{r['n_images']} images (baseline: {r['baseline_images']}), {r['threads']} thread(s), CPU",
        f"settings: {r['settings']}",
        f"{'':22s}{'ours (batched)':>16s}{'scipy, 1 by 1':>16s}",
        f"{'s / image':22s}{r['ours_s_per_image']:16.4f}{r['baseline_s_per_image']:16.4f}",
        f"{'cpu s / image':22s}{r['ours_cpu_s_per_image']:16.4f}{r['baseline_cpu_s_per_image']:16.4f}",
        f"{'success rate':22s}{r['ours_success']:16.3f}{r['baseline_success']:16.3f}",
        f"{'mean distortion':22s}{r['ours_mean_distortion']:16.4f}{r['baseline_mean_distortion']:16.4f}",
        f"{'  (on common images)':22s}{r['ours_mean_distortion_on_common']:16.4f}"
        f"{r['baseline_mean_distortion_on_common']:16.4f}",
        f"{'fwd+bwd passes':22s}{r['ours_rows']:16d}{r['baseline_passes']:16d}",
        f"speed-up: {r['speedup']:.1f}x per image (wall clock; {r['speedup_cpu']:.1f}x in CPU time); "
        f"ours timed 3 times: {r['ours_s_runs']} s",
        f"ours: {r['ours_s']:.2f}s in {r['ours_batched_passes']} batched passes; compute floor "
        f"{r['floor_s']:.2f}s ({r['ours_rows']} rows x one batched pass per row) -> overhead "
        f"{r['overhead_over_floor']:.1f}x",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    result = main(ARGS)
    print(json.dumps(result) if ARGS.json else report(result))
    sys.exit(0)
