"""Checks for lesson 07 (evolving fooling images with the CPPN encoding)."""
import torch

from ..evolution import coordinates
from . import Hint, exercise


def reference_activations(z, act):
    """The four CPPN activations, applied node by node: ``z`` (nodes, pixels), ``act`` (nodes,) ids."""
    outs = torch.stack([torch.sin(z), 2 * (torch.sigmoid(z) - 0.5), torch.exp(-z * z), z.clamp(-3, 3) / 3])
    return outs.gather(0, act.view(1, -1, 1).expand(1, *z.shape)).squeeze(0)


@exercise("7.1", "one layer of CPPN activations")
def _activations(fn):
    g = torch.Generator().manual_seed(7)
    z = torch.randn(8, 50, generator=g, dtype=torch.float64) * 4
    act = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    got = fn(z.clone(), act.clone())
    want = reference_activations(z, act)
    if got is None:
        raise Hint("return the activated values, a tensor with the same shape as z.")
    got = torch.as_tensor(got, dtype=torch.float64)
    if got.shape != z.shape:
        raise Hint(f"return one value per entry of z: expected shape {tuple(z.shape)}, got {tuple(got.shape)}.")
    if torch.allclose(got, want, atol=1e-6):
        return
    names = ["sin (id 0)", "2(σ(x) − 0.5) (id 1)", "exp(−x²) (id 2)", "clip(x, −3, 3)/3 (id 3)"]
    wrong = [names[k] for k in range(4) if not torch.allclose(got[act == k], want[act == k], atol=1e-6)]
    if len(wrong) == 4 and torch.allclose(got, reference_activations(z, act.flip(0)), atol=1e-6):
        raise Hint("node i uses act[i]: row i of z gets the activation with id act[i].")
    hints = {
        "2(σ(x) − 0.5) (id 1)": "id 1 is a sigmoid stretched to (−1, 1): 2(σ(x) − 0.5), not σ(x) itself.",
        "exp(−x²) (id 2)": "id 2 is the Gaussian exp(−x²) (no 1/2, no normalising constant).",
        "clip(x, −3, 3)/3 (id 3)": "id 3 is linear but bounded: clip x to [−3, 3], then divide by 3.",
        "sin (id 0)": "id 0 is sin(x).",
    }
    if len(wrong) == 1:
        raise Hint(hints[wrong[0]])
    raise Hint("wrong for: " + ", ".join(wrong) + ". Every activation keeps its output in [−1, 1].")


@exercise("7.2", "the CPPN's inputs x, y, d, bias", reference="course.evolution.coordinates")
def _inputs(fn):
    H, W = 5, 7
    got = fn(H, W)
    want = coordinates(H, W, dtype=torch.float64)
    if got is None:
        raise Hint("return a (4, height·width) tensor: rows x, y, d, bias.")
    got = torch.as_tensor(got, dtype=torch.float64)
    if got.shape != want.shape:
        raise Hint(f"expected shape (4, height·width) = {tuple(want.shape)}, got {tuple(got.shape)}: "
                   "one column per pixel, row-major (pixel (row, col) is column row·width + col).")
    if torch.allclose(got, want, atol=1e-6):
        return
    if got[:2].abs().max() > 1.0 + 1e-6:
        raise Hint("x and y should be normalised to [−1, 1] (the authors' code feeds raw pixel indices; "
                   "the course, like most CPPN work, normalises): linspace(−1, 1, width) along a row.")
    if torch.allclose(got[0], want[1], atol=1e-6) or torch.allclose(got[1], want[0], atol=1e-6):
        raise Hint("x runs along the width (changes from column to column), y along the height: swap them.")
    if not torch.allclose(got[:2], want[:2], atol=1e-6):
        raise Hint("x, y: a grid with x = linspace(−1, 1, width) varying along each row and "
                   "y = linspace(−1, 1, height) down the columns, flattened row by row.")
    if torch.allclose(got[2], want[2] ** 2, atol=1e-6):
        raise Hint("d is the distance from the centre, √(x² + y²), not its square.")
    if not torch.allclose(got[2], want[2], atol=1e-6):
        raise Hint("d = √(x² + y²): the distance of each pixel from the image's centre.")
    raise Hint("the fourth row is the bias: a constant 1 for every pixel.")
