"""MAP-Elites with one cell per class, as Nguyen et al. ran it to fool a classifier.

The archive keeps one *elite* per class: the image the classifier has so far found most confidently
that class. Each generation:

1. pick ``offspring`` parents uniformly (with replacement) among the filled cells;
2. mutate copies of their genomes (the encoding decides how) and render them to images;
3. classify all the images in one batched forward pass; softmax gives a probability per class;
4. every offspring competes for *every* cell: a cell's elite is replaced by the offspring with the
   highest probability for that class, if that probability is *strictly* higher than the elite's.
   One image may so take several cells at once; ties keep the old elite.

Step 4 is one vectorised update: ``probs.max(dim=0)`` finds each cell's best offspring, a
comparison finds the cells it improves, and indexed assignment copies those offspring in. There is
no Python loop over cells or offspring anywhere. On the CPU the same step runs as one compiled pass
(:mod:`~course.evolution.archive_cpu`, bit for bit the same archive): for a small classifier the
ten tensor operations' dispatch cost is a visible share of a generation.

The encoding is any object with ``random(n, generator)``, ``mutate(genomes, generator,
generation)``, ``render(genomes) -> (n, C, H, W)`` and ``image_shape``, and optionally ``mutate_``,
the same as ``mutate`` but in place (used on the parents, a fresh copy of the elites, it saves a
copy), and ``bind_offspring(store, out)``, which returns ``make(index, generator, generation)``
writing the mutated copies of ``store[index]`` into ``out`` (the copy and the mutation in one
step, bound once for a run: the archive's genomes and the children's memory); a population of
genomes is a tensor or a dict of tensors, each with the population on its first axis (see
:class:`~course.evolution.direct.DirectEncoding`, :class:`~course.evolution.cppn.CPPNEncoding`).
The classifier is any ``nn.Module`` mapping images to logits, for 10 classes or 1000.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .. import validate
from . import archive_cpu
from ..cores import follow as follow_cores
from ..modes import restore, to_eval

Genomes = torch.Tensor | dict  # a tensor, or a dict of tensors, population on axis 0


def take(genomes: Genomes, index: torch.Tensor, out: Genomes | None = None) -> Genomes:
    """The genomes at ``index`` (a population of len(index)), written into ``out`` when given (the
    same form as ``genomes``, len(index) on the first axis)."""
    if isinstance(genomes, dict):
        if out is None:
            return {k: v.index_select(0, index) for k, v in genomes.items()}
        return {k: torch.index_select(v, 0, index, out=out[k]) for k, v in genomes.items()}
    if out is None:
        return genomes.index_select(0, index)  # several times faster than genomes[index] on CPU
    return torch.index_select(genomes, 0, index, out=out)


def put(dest: Genomes, index: torch.Tensor, src: Genomes) -> None:
    """In place: ``dest[index] = src`` for a tensor or every tensor of a dict."""
    if isinstance(dest, dict):
        for k in dest:
            _put_rows(dest[k], index, src[k])
    else:
        _put_rows(dest, index, src)


def _put_rows(dest: torch.Tensor, index: torch.Tensor, src: torch.Tensor) -> None:
    """``dest[index] = src`` for distinct indices; ``index_copy_`` (faster on CPU) where it applies."""
    if src.dtype == dest.dtype and src.shape[1:] == dest.shape[1:] and len(src) == len(index):
        dest.index_copy_(0, index, src)
    else:  # casts or broadcasts
        dest[index] = src


def count(genomes: Genomes) -> int:
    """How many genomes a population holds."""
    return (next(iter(genomes.values())) if isinstance(genomes, dict) else genomes).shape[0]


def _empty_like(genomes: Genomes, n: int) -> Genomes:
    if isinstance(genomes, dict):
        return {k: v.new_zeros((n, *v.shape[1:])) for k, v in genomes.items()}
    return genomes.new_zeros((n, *genomes.shape[1:]))


class EmptyArchiveError(RuntimeError):
    """Raised when elites are asked for before anything was inserted."""


@dataclass
class Archive:
    """One elite per cell (class), as tensors on one device.

    - ``genomes``: the elites' genomes in the encoding's own form, ``n_cells`` on the first axis;
    - ``images``: (n_cells, C, H, W) their renderings (see below);
    - ``scores``: (n_cells,) each elite's probability for *its* cell (−inf where empty);
    - ``filled``: (n_cells,) bool.

    Where the images come from:

    - ``render`` given (an encoding's ``render``; :func:`map_elites` passes it): only the genomes
      are kept, and ``images`` renders the elites on first use after an update (then cached until
      the next update changes a cell). A 1000-cell archive of 224×224 colour images would
      otherwise hold 600 MB and copy images on every improvement. The re-rendered images are the
      ones that were scored: bit for bit with the CPU's default renderers (the compiled one and
      the per-genome one draw each genome on its own), up to float32 rounding with the batched
      one, whose BLAS kernels and vectorised loops round a genome's pixels by a last bit or so
      differently depending on where it sits in a batch (observed: at most ~4e-6; see the tests).
    - no ``render``, and :meth:`update` given the genomes themselves as images (the direct
      encoding, whose genome *is* the image): the images are the genomes, stored once.
    - otherwise the images passed to :meth:`update` are stored beside the genomes.

    Storage is allocated on the first :meth:`update`.
    """

    n_cells: int
    device: torch.device = torch.device("cpu")
    genomes: Genomes | None = None
    render: Callable[[Genomes], torch.Tensor] | None = field(default=None, repr=False)
    scores: torch.Tensor = field(init=False)
    filled: torch.Tensor = field(init=False)

    def __post_init__(self):
        if self.n_cells < 1:
            raise ValueError(f"An archive needs at least one cell, got n_cells={self.n_cells}.")
        self.scores = torch.full((self.n_cells,), float("-inf"), device=self.device)
        self.filled = torch.zeros(self.n_cells, dtype=torch.bool, device=self.device)
        self._stored: torch.Tensor | None = None   # images kept beside the genomes (third case)
        self._same = False                         # images are the genomes (second case)
        self._rendered: torch.Tensor | None = None # the cache of the first case
        self._full = False                         # every cell filled (stays so)
        self._inserter = None                      # the compiled insertion, bound (_inserter_for)

    def __len__(self) -> int:
        """The number of filled cells."""
        return int(self.filled.sum())

    @property
    def images(self) -> torch.Tensor | None:
        """(n_cells, C, H, W): every cell's elite image, zeros where a cell is empty (None
        before the first update)."""
        if self.genomes is None:
            return None
        if self._same:
            return self.genomes
        if self._stored is not None:
            return self._stored
        if self._rendered is None:
            images = self.render(self.genomes)
            if not self._full:     # (a render may return its input: the direct encoding's does)
                images = images.masked_fill(~self.filled.view(-1, *[1] * (images.dim() - 1)), 0)
            self._rendered = images
        return self._rendered

    def update(self, genomes: Genomes, images: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """Insert a batch: each cell takes its best offspring if strictly better. Returns the
        (n_cells,) bool mask of cells that changed.

        ``probs`` (B, n_cells): every offspring's probability for every cell. ``images``: the
        offspring's renderings (used only when the archive stores images, see the class).
        """
        # The compiled insertion, bound to these very children (map_elites' children memory, every
        # generation), with probabilities of the shape it takes: the checks below all hold.
        inserter = self._inserter
        if (inserter is not None and inserter.holds(genomes) and probs.shape == inserter.probs_shape
                and (images is genomes or not self._same) and self._stored is None
                and archive_cpu.takes(probs, self.scores)):
            return self._insert_compiled(probs)
        if probs.dim() != 2 or probs.shape[1] != self.n_cells:
            raise ValueError(f"probs must be (offspring, {self.n_cells}), got {tuple(probs.shape)}.")
        n = images.shape[0]
        if probs.shape[0] != n or count(genomes) != n:
            raise ValueError(f"{count(genomes)} genomes, {n} images and {probs.shape[0]} "
                             "rows of probabilities: they must match.")
        if self.genomes is None:
            self.genomes = _empty_like(genomes, self.n_cells)
            self._same = self.render is None and images is genomes
            if self.render is None and not self._same:
                self._stored = images.new_zeros((self.n_cells, *images.shape[1:]))
        elif self._same and images is not genomes:  # images that differ from the genomes after all
            self._stored, self._same = self.genomes.clone(), False
        if self._stored is None and archive_cpu.takes(probs, self.scores) and self._inserter_for(genomes):
            return self._insert_compiled(probs)
        best, who = probs.max(dim=0)  # per cell: the best offspring (first one on ties)
        better = best > self.scores   # strictly better only
        cells = better.nonzero().squeeze(1)
        if len(cells):                # nothing to copy (often, late in a run): skip the copies
            winners = who.index_select(0, cells)
            rows = take(genomes, winners)
            put(self.genomes, cells, rows)
            if self._stored is not None:
                put(self._stored, cells, rows if images is genomes else images.index_select(0, winners))
            self._rendered = None
            # A new tensor, never written in place: map_elites keeps each generation's in its history.
            self.scores = torch.where(better, best, self.scores)
            if not self._full:       # (once full, filled stays all True)
                self.filled |= better
                self._full = bool(self.filled.all())
        return better

    def _insert_compiled(self, probs: torch.Tensor) -> torch.Tensor:
        """The steps below in :meth:`update`, compiled (archive_cpu), by the bound inserter."""
        scores, better, changed = self._inserter(probs, self.scores)
        if changed:
            self._rendered, self.scores = None, scores
            if not self._full:
                self.filled |= better
                self._full = bool(self.filled.all())
        return better

    def _inserter_for(self, genomes: Genomes) -> bool:
        """Whether the compiled insertion takes these children; binds it to them (kept while the
        same tensor comes back: map_elites' children memory, every generation)."""
        inserter = self._inserter
        if inserter is not None and inserter.holds(genomes):
            return True
        if not archive_cpu.binds(self.genomes, genomes):
            return False
        self._inserter = archive_cpu.Inserter(self.genomes, genomes)
        return True

    def _check_nonempty(self):
        if not bool(self.filled.any()):
            raise EmptyArchiveError("The archive is empty: nothing has been inserted yet. "
                                    "Call update() (or run map_elites) before asking for elites.")

    def sample_parents(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` cell indices drawn uniformly, with replacement, among the filled cells."""
        if self._full:               # every cell filled: the index is the pick itself
            pick = torch.randint(self.n_cells, (n,), generator=generator, device=generator.device)
            if pick.device == self.filled.device:
                return pick
            return pick.to(self.filled.device)
        cells = self.filled.nonzero().squeeze(1)
        if not len(cells):
            self._check_nonempty()  # raises
        pick = torch.randint(len(cells), (n,), generator=generator, device=generator.device)
        return cells.index_select(0, pick.to(cells.device))

    def elites(self) -> tuple[torch.Tensor, torch.Tensor, Genomes]:
        """(cells, images, genomes) of the filled cells."""
        self._check_nonempty()
        cells = self.filled.nonzero().squeeze(1)
        return cells, self.images.index_select(0, cells), take(self.genomes, cells)


@dataclass
class MapElitesResult:
    """What :func:`map_elites` returns. Unpacks as ``archive, history = map_elites(...)``.

    ``history`` (generations_run + 1, n_cells): each cell's best probability after the initial
    population (row 0) and after every generation.
    """

    archive: Archive
    history: torch.Tensor
    generations: int
    evaluations: int
    seconds: float

    def __iter__(self):
        return iter((self.archive, self.history))


def _device_of(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def classify(classifier: nn.Module, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Softmax probabilities (N, classes) of a batch, in chunks of ``batch_size`` images."""
    return _probabilities(classifier, images, batch_size)


def _probabilities(classifier: nn.Module, images: torch.Tensor, batch_size: int | None) -> torch.Tensor:
    """:func:`classify` without its ``no_grad`` (for a caller already under one: map_elites)."""
    if batch_size is None or batch_size >= len(images):
        return torch.softmax(classifier(images).float(), dim=1)
    return torch.cat([torch.softmax(classifier(images[i:i + batch_size]).float(), dim=1)
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def check_classifier(classifier: nn.Module, images: torch.Tensor) -> int:
    """Run the classifier on a few rendered images; return its number of classes.

    Explains the usual mistakes: an input size it cannot take, outputs that are already
    probabilities (softmax applied twice flattens every score towards 1/classes).
    """
    try:
        out = classifier(images)
    except (RuntimeError, ValueError) as e:
        if isinstance(e, torch.cuda.OutOfMemoryError):
            raise
        raise ValueError(
            f"The classifier failed on the encoding's images of shape {tuple(images.shape[1:])} "
            f"(a batch of {tuple(images.shape)}): {e}\nMake the encoding render what the classifier "
            "expects, e.g. DirectEncoding(shape=(1, 28, 28)) for MNIST models or shape=(3, 224, 224) "
            "for ImageNet models.") from e
    validate.check_logits(out, len(images), "map_elites")  # (N, classes >= 2), finite
    if bool((out >= 0).all()) and torch.allclose(out.sum(dim=1), out.new_ones(len(out)), atol=1e-4):
        raise ValueError(
            "The classifier seems to return probabilities (every row is non-negative and sums to 1), "
            "not logits. MAP-Elites applies the softmax itself; applying it twice squashes every "
            "confidence towards 1/classes. Pass the model without its final softmax layer.")
    return out.shape[1]


@torch.no_grad()
def map_elites(classifier: nn.Module, encoding, generations: int = 200, offspring: int = 200,
               initial: int | None = None, seed: int = 0, threshold: float | None = None,
               batch_size: int | None = None, progress: bool = True) -> MapElitesResult:
    """Evolve one elite per class of ``classifier`` (see the module docstring).

    ``initial``: random genomes to start with (default: ``offspring``). ``threshold``: stop early
    once every cell's elite has at least this probability. ``batch_size``: images per forward pass
    (default: the whole generation at once). Everything random flows from one ``torch.Generator``
    seeded with ``seed`` on the classifier's device, so the same seed gives the same archive on CPU.
    """
    validate.check_model(classifier, "map_elites")
    if not isinstance(generations, int) or generations < 1:
        raise ValueError(f"generations must be a positive integer, got {generations!r}.")
    if not isinstance(offspring, int) or offspring < 1:
        raise ValueError(f"offspring must be a positive integer, got {offspring!r}.")
    initial = offspring if initial is None else initial
    if not isinstance(initial, int) or initial < 1:
        raise ValueError(f"initial must be a positive integer, got {initial!r}.")
    if threshold is not None and not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold is a probability in (0, 1], got {threshold}.")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size}.")

    device = _device_of(classifier)
    generator = torch.Generator(device=device).manual_seed(seed)
    modes = to_eval(classifier)
    start = time.perf_counter()
    archive = None
    try:
        genomes = encoding.random(initial, generator)
        images = encoding.render(genomes)
        n_cells = check_classifier(classifier, images[:2])
        archive = Archive(n_cells, device=device, render=encoding.render)
        archive.update(genomes, images, _probabilities(classifier, images, batch_size))
        history = [archive.scores]   # update replaces scores, never writes them in place
        evaluations = initial
        # The parents are a copy (take), so an encoding that can mutate in place may. The copy goes
        # into the same memory every generation: nothing keeps the children once the archive has
        # copied its winners, and memory the CPU has just used is in its caches (for the small MLP
        # on the CPU a generation took 5-15% less time).
        # An encoding with bind_offspring (the direct one) makes that copy and the mutation in one
        # step, bound once to the archive and that memory.
        mutate = getattr(encoding, "mutate_", None) or encoding.mutate
        bind = getattr(encoding, "bind_offspring", None) if isinstance(archive.genomes, torch.Tensor) else None
        parents_memory = make_offspring = None
        if bind is not None:
            parents_memory = archive.genomes.new_empty((offspring, *archive.genomes.shape[1:]))
            make_offspring = bind(archive.genomes, parents_memory)
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=generations, desc="MAP-Elites", leave=False)
        for gen in range(1, generations + 1):
            follow_cores()   # more threads once the lessons beside this one end (course run)
            parents = archive.sample_parents(offspring, generator)
            if make_offspring is not None:
                children = make_offspring(parents, generator, gen)
            else:
                parents_memory = take(archive.genomes, parents, out=parents_memory)
                children = mutate(parents_memory, generator, gen)
            images = encoding.render(children)
            archive.update(children, images, _probabilities(classifier, images, batch_size))
            history.append(archive.scores)
            evaluations += offspring
            if bar is not None:
                bar.update()
                if gen % 10 == 0 or gen == generations:
                    bar.set_postfix(min=f"{float(archive.scores.min()):.4f}",
                                    mean=f"{float(archive.scores.mean()):.4f}")
            if threshold is not None and bool((archive.scores >= threshold).all()):
                break
        if bar is not None:
            bar.close()
    finally:
        restore(modes)
        if archive is not None:
            archive._inserter = None   # unbind the children memory: the archive outlives the run
    history = torch.stack(history).cpu()
    return MapElitesResult(archive, history, len(history) - 1, evaluations, time.perf_counter() - start)
