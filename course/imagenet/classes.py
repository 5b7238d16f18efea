"""The 1000 ImageNet classes: names in torchvision's order (every network of the registry uses it),
and look-up by name."""
from __future__ import annotations

import difflib
import functools
import re

N_CLASSES = 1000
OSTRICH = 9   # Szegedy et al.'s Figure 5 turns every image into an "ostrich, Struthio camelus"


@functools.cache
def _names() -> tuple[str, ...]:
    import torchvision

    names = tuple(torchvision.models.AlexNet_Weights.IMAGENET1K_V1.meta["categories"])
    if len(names) != N_CLASSES:
        raise RuntimeError(f"Expected {N_CLASSES} ImageNet class names, torchvision gives {len(names)}.")
    return names


def class_names() -> list[str]:
    """The 1000 ImageNet class names, index by index (torchvision's metadata: no download)."""
    return list(_names())


def _simplify(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def class_index(name: str | int) -> int:
    """The index of an ImageNet class given its name (``"ostrich"`` → 9; case, ``_`` and ``-`` ignored)."""
    if isinstance(name, bool):
        raise TypeError("A class is an index (0-999) or a name such as 'ostrich', not a bool.")
    if isinstance(name, int) or (isinstance(name, str) and name.isdigit()):
        i = int(name)
        if not 0 <= i < N_CLASSES:
            raise ValueError(f"ImageNet class indices run from 0 to {N_CLASSES - 1}, got {i}.")
        return i
    names = [_simplify(n) for n in _names()]
    key = _simplify(name)
    if key in names:
        return names.index(key)
    close = difflib.get_close_matches(key, names, n=3)
    hint = f" Did you mean {', '.join(repr(_names()[names.index(c)]) for c in close)}?" if close else ""
    raise KeyError(f"No ImageNet class named {name!r}.{hint}")


__all__ = ["N_CLASSES", "OSTRICH", "class_index", "class_names"]
