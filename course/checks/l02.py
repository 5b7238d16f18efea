"""Checks for lesson 02 (is meaning in a unit or in the space?)."""
import torch

from ..probing import label_purity, top_k_along
from . import Hint, exercise


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, tuple):  # (indices, scores) is fine too
        x = x[0]
    return torch.as_tensor(x)


@exercise("2.1", "label purity of the top-k images", reference="course.probing.label_purity")
def _purity(fn):
    labels = torch.tensor([
        [3, 3, 3, 3, 3, 3, 3, 3],   # all alike
        [1, 7, 7, 7, 7, 1, 2, 7],   # 5 of 8 share a label, but not the first image's
        [0, 1, 2, 3, 4, 5, 6, 7],   # all different
        [4, 4, 9, 9, 9, 4, 9, 4],   # a tie: 4 and 4
        [2, 2, 2, 5, 6, 8, 8, 0],
    ])
    got = fn(labels.clone())
    want = label_purity(labels).float()
    got = _as_tensor(got).float() if not isinstance(got, (int, float)) else torch.tensor(float(got))
    if got.dim() == 0 or got.numel() == 1 and len(want) > 1:
        raise Hint("one purity per row: each row holds the labels of one direction's top-k images. "
                   "Count within each row (dim=1), not over the whole matrix.")
    if got.shape != want.shape:
        raise Hint(f"expected one value per row, shape {tuple(want.shape)}; got shape {tuple(got.shape)}.")
    if torch.allclose(got, want * labels.shape[1]):
        raise Hint("that is how many images carry the most common label; the purity is their share: "
                   "divide by k.")
    first = (labels == labels[:, :1]).float().mean(1)
    if torch.allclose(got, first):
        raise Hint("you measured the share of the *first* image's label; the purity uses the most common "
                   "label of the row (look at the second row).")
    distinct = torch.tensor([len(r.unique()) for r in labels]).float()
    if torch.allclose(got, distinct / labels.shape[1]) or torch.allclose(got, 1 / distinct):
        raise Hint("counting distinct labels says how mixed a row is, but not how large its biggest group "
                   "is: count how often each label occurs, and keep the largest count.")
    if not torch.allclose(got, want, atol=1e-6):
        raise Hint("for each row: count the images of each label (bincount or one_hot(...).sum), take the "
                   "largest count, divide by k. A row of 8 identical labels gives 1.0, 8 different ones 0.125.")


@exercise("2.2", "the top-k images along a direction", reference="course.probing.top_k_along")
def _top_k(fn):
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(60, 6, generator=g) * torch.linspace(0.2, 3.0, 60).unsqueeze(1)
    dirs = torch.randn(4, 6, generator=g)
    k = 5
    got = _as_tensor(fn(feats.clone(), dirs.clone(), k)).long()
    want, _ = top_k_along(feats, dirs, k)
    if got.shape == (k, len(dirs)):
        raise Hint("one row per direction, please: the result should be (n_dirs, k). "
                   "topk along the images' axis gives (k, n_dirs): transpose it.")
    if got.shape != want.shape:
        raise Hint(f"expected indices of shape (n_dirs, k) = {tuple(want.shape)}, got {tuple(got.shape)}. "
                   "Score every image along every direction with one matrix product (N × n_dirs), "
                   "then take the top k over the images.")
    if torch.equal(got, want):
        return
    lowest, _ = top_k_along(-feats, dirs, k)
    if torch.equal(got.sort(1).values, lowest.sort(1).values):
        raise Hint("those are the images with the *lowest* scores: the paper looks at the images that "
                   "maximise ⟨φ(x), v⟩.")
    cosine, _ = top_k_along(feats / feats.norm(dim=1, keepdim=True), dirs, k)
    if torch.equal(got.sort(1).values, cosine.sort(1).values):
        raise Hint("you ranked by the cosine (normalised features). The paper ranks by the inner product "
                   "⟨φ(x), v⟩ itself: an image whose activations are large counts as large.")
    if torch.equal(got.sort(1).values, want.sort(1).values):
        raise Hint("the right images, in the wrong order: list each direction's images best first "
                   "(largest score first).")
    raise Hint("score = features @ directionsᵀ (one value per image and direction), then "
               "topk(k, dim=<the images' axis>).indices, one row per direction.")
