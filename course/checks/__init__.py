"""Answer checks: ``course.check("1.1", my_function)`` says pass or fail, with a hint that teaches.

Each lesson's checks live in a module of this package (``l01.py`` for lesson 01, ...) and
register themselves with :func:`exercise`. A checker receives the student's answer and raises
:class:`Hint` with what is wrong (never the answer) when it is not right. Checkers call the
answer *before* they compute what they expect, so an answer that reads its caller's frame finds
nothing to copy.

``course.check`` raises :class:`ExerciseFailed` on a wrong answer, so that the cell that calls it
fails: that is how nbgrader's "autograded tests" cells and ``course grade`` score it (an exercise
passes when its test cell raises nothing). The traceback a student sees has their own frames and
the hint; the checker's frames (its source holds the expected computation) are cut out.

The answer runs under :func:`call`, which watches what it calls: an answer that *is* one of the
course's reference implementations, or that calls one (a thin wrapper), or that calls into the
checkers, fails with a message saying so. The hidden tests of ``solutions/`` call answers through
:func:`call` as well.
"""
from __future__ import annotations

import functools
import importlib
import json
import linecache
import os
import pkgutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

_REGISTRY: dict[str, tuple[str, Callable[[Any], None]]] = {}
_REFERENCES: dict[str, tuple[str, ...]] = {}   # exercise id -> dotted names of the course's own versions
_CHECKER_CODES: set = set()                    # the registered checkers' code objects
_PACKAGE = Path(__file__).resolve().parent.parent     # course/
_CHECKS = Path(__file__).resolve().parent             # course/checks/


class Hint(AssertionError):
    """Raised by a checker: the answer is not right; the message says what to look at."""


class ExerciseFailed(AssertionError):
    """Raised by :func:`check` (and :func:`call`): the answer is wrong; the message is the hint."""


class ReferenceUsed(ExerciseFailed):
    """The answer is, or calls, the course's own implementation of the exercise: it scores zero."""


def exercise(exercise_id: str, title: str, reference: tuple[str, ...] | str = ()):
    """Register ``fn(answer)`` as the checker of exercise ``exercise_id`` (e.g. ``"1.1"``).

    ``reference``: dotted names of the course's own implementation(s) of this exercise (the later
    cells of a lesson use them); an answer that is or calls one of them is not the student's work.
    """
    def register(fn):
        _REGISTRY[exercise_id] = (title, fn)
        _CHECKER_CODES.add(fn.__code__)
        _REFERENCES[exercise_id] = (reference,) if isinstance(reference, str) else tuple(reference)
        return fn
    return register


def _load_all() -> None:
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")


def known_exercises() -> dict[str, str]:
    _load_all()
    return {k: v[0] for k, v in sorted(_REGISTRY.items())}


def references(exercise_id: str) -> tuple[str, ...]:
    """Dotted names of the course's implementations of ``exercise_id`` (may be empty)."""
    _load_all()
    return _REFERENCES.get(exercise_id, ())


def resolve(dotted: str):
    """The object a dotted name such as ``course.train.error_rate`` (or ``...Archive.update``) names."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def _code_of(obj):
    fn = getattr(obj, "forward", obj) if isinstance(obj, type) else obj
    fn = getattr(fn, "__func__", fn)
    return getattr(fn, "__code__", None)


def _forbidden_codes(exercise_id: str) -> dict:
    """Code objects an answer to ``exercise_id`` must not run: code object -> the name to report."""
    out = {}
    for dotted in references(exercise_id):
        try:
            obj = resolve(dotted)
        except (ImportError, AttributeError):
            continue
        objs = [obj, getattr(obj, "__init__", None), getattr(obj, "forward", None)] if isinstance(obj, type) else [obj]
        for o in objs:
            code = _code_of(o)
            if code is not None and Path(code.co_filename).resolve().is_relative_to(_PACKAGE):
                out[code] = dotted
    return out


def _is_checker_reference(code) -> bool:
    """Whether ``code`` is a checker or a checker's reference computation (``reference_*``)."""
    return _in_checks(code) and ("reference" in code.co_name or code in _CHECKER_CODES)


def _in_checks(code) -> bool:
    return _file_in_checks(code.co_filename)


@functools.lru_cache(maxsize=4096)
def _file_in_checks(filename: str) -> bool:
    """Whether a code object's file is one of this package's (cached: asked on every call watched)."""
    try:
        return Path(filename).resolve().is_relative_to(_CHECKS)
    except (OSError, ValueError):
        return False


def _is_course_code(answer) -> bool:
    """Whether ``answer`` is a function (or class) of the course package itself."""
    own = getattr(answer, "__module__", "") or ""
    return own == "course" or own.startswith("course.")


def call(exercise_id: str, answer: Callable, *args, **kwargs):
    """``answer(*args, **kwargs)``, watched: raise :class:`ReferenceUsed` if it runs the course's own
    implementation of the exercise or a checker's reference (``course.checks.*.reference_*``).
    Warnings are kept off stderr (an nbgrader test cell that writes to stderr scores zero).

    The hidden tests of ``solutions/`` call answers through this function.
    """
    if not callable(answer):
        raise ExerciseFailed(f"exercise {exercise_id}: the answer should be a function; got {type(answer).__name__}.")
    if _is_course_code(answer):
        raise ReferenceUsed(f"exercise {exercise_id}: the answer is the course's own "
                            f"{answer.__module__}.{getattr(answer, '__qualname__', '?')}; an exercise asks for "
                            "your code, so this scores zero. Write the function yourself.")
    forbidden, hits = _forbidden_codes(exercise_id), []

    def watch(frame, event, arg):
        if event == "call":
            code = frame.f_code
            if code in forbidden:
                hits.append(forbidden[code])
            elif _is_checker_reference(code):
                hits.append(f"{Path(code.co_filename).stem}.{code.co_name} (the checkers)")

    previous = sys.getprofile()
    sys.setprofile(watch)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = answer(*args, **kwargs)
    finally:
        still = sys.getprofile()
        sys.setprofile(previous)
    if still is not watch:
        raise ReferenceUsed(f"exercise {exercise_id}: your code switched off the course's call tracing "
                            "(sys.setprofile); an answer is graded only when it runs as written.")
    if hits:
        raise ReferenceUsed(f"exercise {exercise_id}: your answer calls the course's own implementation "
                            f"({hits[0]}), so it scores zero. Write the computation yourself.")
    return result


def plain(value) -> torch.Tensor:
    """``value`` as an ordinary CPU tensor: a tensor subclass that overrides comparisons (or any
    object posing as a number) cannot pass a test by lying about equality."""
    if isinstance(value, torch.Tensor):
        with torch._C.DisableTorchFunctionSubclass():
            return torch.Tensor.as_subclass(value.detach().cpu().clone(), torch.Tensor)
    if isinstance(value, (bool, int, float)) or value is None:
        return torch.tensor(float("nan") if value is None else float(value))
    if isinstance(value, (list, tuple)):
        return torch.tensor(value)
    raise ExerciseFailed(f"expected a tensor or a number, got {type(value).__name__}.")


@dataclass
class CheckResult:
    exercise: str
    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'} {self.exercise}: {self.message}"


def _student_frames(tb):
    """The traceback ``tb`` without the frames of the checkers (nor of this module's callers above):
    the student's own frames, which show where their code went wrong."""
    frames = []
    while tb is not None:
        if not _in_checks(tb.tb_frame.f_code):
            frames.append(tb)
        tb = tb.tb_next
    new = None
    for t in reversed(frames):
        new = type(t)(new, t.tb_frame, t.tb_lasti, t.tb_lineno)
    return new


def _remember(exercise_id: str, passed: bool) -> None:
    """Note the verdict in ``COURSE_RESULTS_FILE`` when ``course run`` set it, for its report of the
    solutions. Informational only: ``course grade`` neither sets nor reads it (a student's kernel
    can write anything there)."""
    target = os.environ.get("COURSE_RESULTS_FILE")
    if not target:
        return
    from ..results import write_json_atomic

    path = Path(target)
    data = json.loads(path.read_text()) if path.exists() else {"metrics": {}}
    data.setdefault("checks", {})[exercise_id] = passed
    write_json_atomic(path, data)


def _run(exercise_id: str, answer: Any) -> tuple[CheckResult, BaseException | None]:
    """Run the checker of ``exercise_id`` on ``answer``: the verdict, and the exception to raise
    (with the student's frames only) when it is not a pass."""
    _load_all()
    if exercise_id not in _REGISTRY:
        raise KeyError(f"No exercise {exercise_id!r}. Known exercises: {', '.join(sorted(_REGISTRY))}.")
    _, checker = _REGISTRY[exercise_id]
    watched = (lambda *a, **k: call(exercise_id, answer, *a, **k)) if callable(answer) else answer
    try:
        with warnings.catch_warnings():  # off stderr: nbgrader scores a tests cell that writes there zero
            warnings.simplefilter("ignore")
            checker(watched)
    except NotImplementedError as e:
        return (CheckResult(exercise_id, False, "not attempted"),
                e.with_traceback(_student_frames(e.__traceback__)))
    except ReferenceUsed as e:
        return CheckResult(exercise_id, False, str(e)), ReferenceUsed(str(e))
    except (Hint, ExerciseFailed) as e:
        return CheckResult(exercise_id, False, str(e)), ExerciseFailed(str(e))
    except Exception as e:  # the student's code crashed on our test input: show them where
        message = f"your code raised {type(e).__name__}: {e}"
        return (CheckResult(exercise_id, False, message),
                ExerciseFailed(message).with_traceback(_student_frames(e.__traceback__)))
    return CheckResult(exercise_id, True, "correct."), None


def verdict(exercise_id: str, answer: Any) -> CheckResult:
    """The check's verdict without printing or raising: ``assert course.checks.verdict("1.1", f)``
    is the assert form of :func:`check` (a failing ``assert`` shows no hint, so prefer ``check``)."""
    return _run(exercise_id, answer)[0]


def check(exercise_id: str, answer: Any) -> CheckResult:
    """Check a student's answer to exercise ``exercise_id``: print the verdict, raise if it is wrong.

    Right: prints ✅ and returns a passing :class:`CheckResult`. Wrong: prints ❌ with the hint and
    raises :class:`ExerciseFailed` (its message is the hint), so the cell fails — which is what
    nbgrader and ``course grade`` score. Unsolved (the body still raises ``NotImplementedError``):
    says so and raises that error again. Either way the traceback shows the student's frames, not
    the checker's; the lesson goes on regardless.
    """
    __tracebackhide__ = True  # IPython hides this frame; the checkers' frames are cut out by _run
    result, failure = _run(exercise_id, answer)
    title = _REGISTRY[exercise_id][0]
    _remember(exercise_id, result.passed)
    if failure is None:
        print(f"✅ Exercise {exercise_id} ({title}): correct.")
        return result
    if isinstance(failure, NotImplementedError):
        print(f"Exercise {exercise_id} ({title}): not attempted yet. Replace `raise NotImplementedError` "
              "with your code, run the cell again. The rest of the lesson uses the course's own version.")
    else:
        print(f"❌ Exercise {exercise_id} ({title}): {result.message}")
    failure.__cause__, failure.__suppress_context__ = None, True
    exec(_RAISE, {"failure": failure})  # the last frame a student sees is this line, not the checker's


# IPython never hides a traceback's last frame: raising from this one-line "file" makes that frame
# say what happened, while check's own frame (``__tracebackhide__``) is skipped.
_RAISE_SOURCE = "raise failure  # course.check: not right yet, the message says why\n"
linecache.cache["<course.check>"] = (len(_RAISE_SOURCE), None, [_RAISE_SOURCE], "<course.check>")
_RAISE = compile(_RAISE_SOURCE, "<course.check>", "exec")
