"""Plots for the lessons: image grids and curves (matplotlib), small and reusable."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import torch


def image_grid(images: torch.Tensor, titles=None, ncols: int = 8, scale: float = 1.3, cmap: str = "gray",
               suptitle: str | None = None, vmin=0.0, vmax=1.0):
    """Show a batch of images (N, C, H, W) in a grid; returns the figure."""
    images = images.detach().cpu()
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(scale * ncols, scale * nrows * (1.25 if titles else 1)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i]
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap=cmap, vmin=vmin, vmax=vmax)
        else:
            ax.imshow(img.permute(1, 2, 0).clamp(0, 1))
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def curves(series: dict, xlabel: str = "epoch", ylabel: str = "", title: str = "", logy: bool = False, ax=None):
    """Plot several named sequences on one axis; returns the axis."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    for name, ys in series.items():
        ys = [float("nan") if y is None else float(y) for y in ys]  # numbers or tensors, on any device
        ax.plot(range(1, len(ys) + 1), ys, marker="o" if len(ys) < 20 else None, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if logy:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def text_table(rows, headers) -> str:
    """A fixed-width table as text (prints the same in a notebook and in a log)."""
    rows = [[("—" if c is None else (f"{c:.4g}" if isinstance(c, float) else str(c))) for c in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def explore(fn, **controls):
    """An ipywidgets ``interact`` over ``fn`` in JupyterLab; one plain call when run headless.

    ``controls`` are ipywidgets (sliders, dropdowns). Headless runs (``course run``, the tests:
    ``COURSE_HEADLESS=1``) call ``fn`` once with each control's current value, so executed
    notebooks hold a plot, not a widget's JSON.
    """
    import os

    if os.environ.get("COURSE_HEADLESS"):
        fn(**{name: getattr(w, "value", w) for name, w in controls.items()})
        return None
    import ipywidgets

    ipywidgets.interact(fn, **controls)
    return None
