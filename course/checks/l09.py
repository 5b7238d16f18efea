"""Checks for lesson 09 (adversarial training)."""
import torch

from ..models import build_model
from ..retraining.layers import LayersAbove
from . import Hint, exercise


def _pool(n=20):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 4, 4, generator=g), torch.arange(n) % 10


def _rows_match(out_x, out_y, pool_x, pool_y):
    """For each appended row: is it some pool row, with that row's label?"""
    flat = pool_x.reshape(len(pool_x), -1)
    ok = []
    for x, y in zip(out_x.reshape(len(out_x), -1), out_y):
        same = (flat == x).all(1)
        ok.append(bool(same.any()) and bool((pool_y[same] == y).any()))
    return ok


@exercise("9.1", "mixing the pool into a batch",
          reference=("course.retraining.pool.AdversarialPool.mix", "course.retraining.pool.AdversarialPool.sample"))
def _mix(fn):
    pool_x, pool_y = _pool()
    batch_x, batch_y = torch.rand(8, 1, 4, 4) + 2.0, torch.arange(8) % 10  # values no pool row has
    out = fn(batch_x, batch_y, pool_x, pool_y, 5, torch.Generator().manual_seed(1))
    if not isinstance(out, tuple) or len(out) != 2:
        raise Hint("return a pair (x, y): the mixed images and their labels.")
    x, y = out
    if len(x) != len(y):
        raise Hint("x and y must have the same number of rows: every image needs its label.")
    if len(x) == 5:
        raise Hint("the clean batch is gone: pool entries are mixed in *besides* the batch, not instead of it.")
    if len(x) != 13:
        raise Hint("the result should have len(batch) + k rows.")
    if not (torch.equal(x[:8], batch_x) and torch.equal(y[:8], batch_y)):
        raise Hint("keep the clean batch first and unchanged, then append the pool entries.")
    if not all(_rows_match(x[8:], y[8:], pool_x, pool_y)):
        raise Hint("each appended example must be a pool entry together with *its own* label: draw one set of "
                   "indices and use it for both tensors.")
    outs = [fn(batch_x, batch_y, pool_x, pool_y, 5, torch.Generator().manual_seed(s))[0][8:] for s in range(2, 6)]
    if all(torch.equal(o, outs[0]) for o in outs):
        raise Hint("the entries should be drawn at random with the generator you are given, not always the same ones.")
    x0, y0 = fn(batch_x, batch_y, pool_x, pool_y, 0, torch.Generator().manual_seed(1))
    if len(x0) != 8:
        raise Hint("with k = 0 nothing is appended.")
    big = fn(batch_x, batch_y, pool_x, pool_y, 40, torch.Generator().manual_seed(1))[0]
    if len(big) != 48:
        raise Hint("k may exceed the pool's size: draw with replacement.")


@exercise("9.2", "replacing a share of the pool",
          reference=("course.retraining.pool.AdversarialPool.replace", "course.retraining.pool.AdversarialPool.put"))
def _replace(fn):
    pool_x, pool_y = _pool(20)
    keep_x, keep_y = pool_x.clone(), pool_y.clone()
    fresh_x, fresh_y = -torch.rand(10, 1, 4, 4) - 1.0, torch.full((10,), 7)
    out = fn(pool_x, pool_y, 0.25, fresh_x, fresh_y, torch.Generator().manual_seed(0))
    if not isinstance(out, tuple) or len(out) != 2:
        raise Hint("return a pair (x, y): the new pool's examples and labels.")
    x, y = out
    if not (torch.equal(pool_x, keep_x) and torch.equal(pool_y, keep_y)):
        raise Hint("the pool you were given changed: work on copies (clone) and return them.")
    if len(x) != 20 or len(y) != 20:
        raise Hint("the pool must keep its size: overwrite slots, do not append or drop.")
    changed = (x.reshape(20, -1) != pool_x.reshape(20, -1)).any(1)
    if int(changed.sum()) < 5 and int(changed.sum()) > 0:
        raise Hint("fewer slots changed than asked: some slot was drawn twice. Draw the slots without "
                   "replacement (a random permutation).")
    if int(changed.sum()) != 5:
        raise Hint("round(fraction · size) slots should hold fresh examples — no more, no fewer.")
    fresh_rows = (x[changed] < 0).all() and bool((y[changed] == 7).all())
    if not fresh_rows:
        raise Hint("the changed slots should hold the fresh examples with the fresh labels.")
    if not bool((y[~changed] == pool_y[~changed]).all()):
        raise Hint("the labels of the untouched slots changed.")
    picks = [fn(pool_x, pool_y, 0.25, fresh_x, fresh_y, torch.Generator().manual_seed(s))[0] for s in range(1, 5)]
    if all(torch.equal(p, picks[0]) for p in picks) and torch.equal(picks[0], x):
        raise Hint("the slots should be chosen at random with the generator, not always the same ones.")
    x1, _ = fn(pool_x, pool_y, 1.0, fresh_x.repeat(2, 1, 1, 1), fresh_y.repeat(2), torch.Generator().manual_seed(0))
    if not bool((x1 < 0).all()):
        raise Hint("with fraction = 1 every slot is replaced.")
    x0, _ = fn(pool_x, pool_y, 0.0, fresh_x, fresh_y, torch.Generator().manual_seed(0))
    if not torch.equal(x0, pool_x):
        raise Hint("with fraction = 0 nothing changes.")


@exercise("9.3", "the network above a layer", reference="course.retraining.layers.LayersAbove")
def _above(fn):
    torch.manual_seed(0)
    model = build_model("fc100_100_10").eval()
    x = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        h1 = model.act1(model.fc1(x.reshape(6, -1)))
        h2 = model.act2(model.fc2(h1))
        cases = {0: x.reshape(6, -1), 1: h1, 2: h2}
        for layer, h in cases.items():
            got = fn(model, layer, h)
            want = LayersAbove(model, layer)(h)
            if not isinstance(got, torch.Tensor) or got.shape != want.shape:
                raise Hint(f"for layer {layer} return the logits, shape (N, 10).")
            if not torch.allclose(got, want, atol=1e-5):
                if layer == 2 and torch.allclose(got, model.out(model.act2(model.fc2(h))), atol=1e-5):
                    raise Hint("layer ℓ's output already went through fc_ℓ and its activation: start at layer ℓ + 1.")
                if layer == 1 and torch.allclose(got, model.out(model.fc2(h1)), atol=1e-5):
                    raise Hint("every hidden layer above applies its activation after its linear map.")
                raise Hint(f"wrong logits for layer {layer}: apply, in order, each hidden layer above it "
                           "(linear map, then activation), then the output layer.")
