"""Evolving images that fool a classifier (Nguyen, Yosinski & Clune, 2015).

>>> from course.evolution import map_elites, DirectEncoding, CPPNEncoding
>>> archive, history = map_elites(model, DirectEncoding(), generations=200, offspring=200)

- :mod:`.map_elites`: the algorithm and its archive (one cell per class, every-cell insertion;
  the insertion compiled for the CPU in :mod:`.archive_cpu`);
- :mod:`.direct`: one gene per pixel, polynomial mutation (compiled for the CPU in :mod:`.mutation_cpu`);
- :mod:`.cppn`: CPPN genomes as padded tensors and a renderer for a whole population at once.
"""
from .cppn import ACTIVATIONS, CPPNEncoding, coordinates, render_reference
from .direct import (DirectEncoding, bernoulli_positions, expected_abs_delta, polynomial_delta,
                     polynomial_mutation)
from .map_elites import (Archive, EmptyArchiveError, MapElitesResult, check_classifier, classify,
                         map_elites)

__all__ = [
    "ACTIVATIONS", "Archive", "CPPNEncoding", "bernoulli_positions", "DirectEncoding", "EmptyArchiveError", "MapElitesResult",
    "check_classifier", "classify", "coordinates", "expected_abs_delta", "map_elites",
    "polynomial_delta", "polynomial_mutation", "render_reference",
]
