"""Answer checks: ``course.check("1.1", my_function)`` says pass or fail, with a hint that teaches.

Each lesson's checks live in a module of this package (``l01.py`` for lesson 01, ...) and
register themselves with :func:`exercise`. A checker receives the student's answer and raises
:class:`Hint` with what is wrong (never the answer) when it is not right.
"""
from __future__ import annotations

import importlib
import json
import os
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

_REGISTRY: dict[str, tuple[str, Callable[[Any], None]]] = {}


class Hint(AssertionError):
    """Raised by a checker: the answer is not right; the message says what to look at."""


def exercise(exercise_id: str, title: str):
    """Register ``fn(answer)`` as the checker of exercise ``exercise_id`` (e.g. ``"1.1"``)."""
    def register(fn):
        _REGISTRY[exercise_id] = (title, fn)
        return fn
    return register


def _load_all() -> None:
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")


def known_exercises() -> dict[str, str]:
    _load_all()
    return {k: v[0] for k, v in sorted(_REGISTRY.items())}


@dataclass
class CheckResult:
    exercise: str
    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'} {self.exercise}: {self.message}"


def _remember(exercise_id: str, passed: bool) -> None:
    target = os.environ.get("COURSE_RESULTS_FILE")
    if not target:
        return
    from ..results import write_json_atomic

    path = Path(target)
    data = json.loads(path.read_text()) if path.exists() else {"metrics": {}}
    data.setdefault("checks", {})[exercise_id] = passed
    write_json_atomic(path, data)


def check(exercise_id: str, answer: Any) -> CheckResult:
    """Check a student's answer to exercise ``exercise_id``; print and return the verdict.

    An unsolved exercise (its body still raises ``NotImplementedError``) is reported as not yet
    attempted and the error is raised again, so the cell shows it; the lesson goes on regardless.
    """
    _load_all()
    if exercise_id not in _REGISTRY:
        raise KeyError(f"No exercise {exercise_id!r}. Known exercises: {', '.join(sorted(_REGISTRY))}.")
    title, checker = _REGISTRY[exercise_id]
    try:
        checker(answer)
    except NotImplementedError:
        print(f"Exercise {exercise_id} ({title}): not attempted yet. Replace `raise NotImplementedError` "
              "with your code, run the cell again. The rest of the lesson uses the course's own version.")
        _remember(exercise_id, False)
        raise
    except Hint as h:
        result = CheckResult(exercise_id, False, str(h))
    except Exception as e:  # the student's code crashed on our test input
        result = CheckResult(exercise_id, False, f"your code raised {type(e).__name__}: {e}")
    else:
        result = CheckResult(exercise_id, True, "correct.")
    print(f"{'✅' if result.passed else '❌'} Exercise {exercise_id} ({title}): {result.message}")
    _remember(exercise_id, result.passed)
    return result
