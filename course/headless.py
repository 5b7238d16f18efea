"""The environment a lesson's kernel starts with when nobody watches it: ``course run`` and
``course grade`` both start their kernels with :func:`headless_environment`, each adding its own
variables (threads, paths, TMPDIR, the grading folder) on top.

- ``COURSE_PROFILE``: the scale every profile-dependent number is read at (:mod:`course.profiles`);
- ``MPLBACKEND``: figures become PNG outputs saved in the executed notebook;
- ``PYTHONUNBUFFERED``: a lesson's prints reach the log as they happen;
- ``COURSE_HEADLESS``: widgets call their function once, with each control's value (:func:`course.viz.explore`);
- glibc's malloc told to keep freed memory (:data:`course.memory.MALLOC_ENV`, unless the caller's
  environment sets those variables itself): EfficientNet on the CPU runs 2-3x faster.
"""
from __future__ import annotations

from typing import Mapping

from .memory import MALLOC_ENV

HEADLESS_ENV = {"MPLBACKEND": "module://matplotlib_inline.backend_inline",
                "PYTHONUNBUFFERED": "1", "COURSE_HEADLESS": "1"}


def headless_environment(profile: str, base: Mapping[str, str]) -> dict[str, str]:
    """``base`` (a copy of the caller's environment, say) with the profile and :data:`HEADLESS_ENV`
    set, and :data:`~course.memory.MALLOC_ENV` where ``base`` does not set those variables."""
    return {**MALLOC_ENV, **base, "COURSE_PROFILE": profile, **HEADLESS_ENV}
