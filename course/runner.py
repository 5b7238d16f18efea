"""``course run``: execute lessons headless with papermill and gather their numbers.

Each notebook runs in its own process (``python -m papermill``) with ``COURSE_RESULTS_FILE``
pointing at a per-lesson JSON that :func:`course.record` fills. The runner then writes
``DIR/results.json`` — per lesson: status, seconds, error, metrics (value, paper value, source) — and
prints one table. A failing lesson is reported with its error; the others still run.

Nothing is lost or left behind: a run never overwrites an earlier one (:func:`run_folder`); every
path a kernel gets is absolute (the kernels run in ``solutions/``); each papermill runs in its own
process group and, on Linux, dies with the runner even when the runner is SIGKILLed (its kernel
follows within a second); Ctrl-C stops them all and keeps what finished. Each kernel gets
``(free cores) // jobs`` torch threads unless ``OMP_NUM_THREADS`` is set (:func:`kernel_threads`).

On a CPU the default is one lesson per free core, one thread each (:func:`auto_jobs`): the course's
networks are small, so two lessons on one thread each finish sooner than one after the other on two
threads. The longest lessons start first (:func:`schedule`), so no core idles at the end while one
long lesson runs alone; a model two lessons need is trained once (the checkpoint lock). Once nothing
is left to start and a lesson ends, the ones still running share its cores: each kernel is told its new
thread count through a file and takes it up before its next cell or loop step (:mod:`course.cores`;
not when the user set ``OMP_NUM_THREADS``).
"""
from __future__ import annotations

import functools
import json
import os
import signal
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime, timezone
from pathlib import Path

import psutil

from .cores import THREADS_FILE_ENV, write_share
from .data import cache_root
from .headless import headless_environment
from .lessons import repo_root
from .profiles import NAMES
from .results import _fmt, write_json_atomic


def find_notebooks(selection: list[str] | None, folder: Path | None = None) -> list[Path]:
    """Notebooks in ``folder`` (default ``solutions/``) matching ``selection`` ("01", "01_training_mnist")."""
    default = folder is None
    folder = Path(folder or repo_root() / "solutions")
    every = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if not every:
        hint = (" A plain `pip install .` installs the package without its notebooks: run `course run` "
                "from a checkout installed with `pip install -e .`." if default else "")
        raise FileNotFoundError(f"No lesson notebooks in {folder}.{hint}")
    if not selection:
        return every
    chosen = []
    for sel in selection:
        hits = [p for p in every if p.stem == sel or p.stem.startswith(sel.rstrip(".ipynb") + "_") or p.name == sel]
        if not hits:
            raise ValueError(f"No lesson matches {sel!r}. Lessons: {', '.join(p.stem for p in every)}.")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def _last_error(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "Exception" in ln:
            return ln.strip()[:300]
    return lines[-1][:300] if lines else "unknown error"


PATH_VARIABLES = ("COURSE_CACHE", "COURSE_ALEXNET", "COURSE_IMAGENET")  # paths a kernel reads


def absolute_path(path: str | Path) -> Path:
    """``path`` made absolute against the caller's working directory (``~`` expanded).

    The kernels run in ``solutions/``, so a relative path handed to them as it is would land there.
    """
    return Path(os.path.abspath(Path(path).expanduser()))


def kernel_environment(profile: str, jobs: int, busy: int | None = None) -> dict[str, str]:
    """The environment every kernel of one run starts with.

    Paths the user gave relative to their working directory are made absolute (else a relative
    ``COURSE_CACHE=cache`` downloads a second MNIST into ``solutions/cache``), and each kernel gets
    :func:`kernel_threads` torch threads unless the user set ``OMP_NUM_THREADS`` themselves.
    """
    env = headless_environment(profile, os.environ)
    for name in PATH_VARIABLES:
        if env.get(name) and "://" not in env[name]:
            env[name] = str(absolute_path(env[name]))
    if not os.environ.get("OMP_NUM_THREADS"):
        threads, _ = kernel_threads(jobs, busy)
        env["OMP_NUM_THREADS"] = str(threads)
        env.setdefault("MKL_NUM_THREADS", str(threads))
    return env


def available_cores() -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup CPU quota (containers)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def kernel_threads(jobs: int = 1, busy: int | None = None) -> tuple[int, str]:
    """Torch threads per kernel of ``course run -j jobs``, and why.

    ``(cores − busy) // jobs`` (at least 1), ``busy`` the cores other processes keep busy
    (:func:`busy_cores`): with more threads than free cores, torch's threads spin against each other
    and against anything else running — a training step of FC100-100-10 took 24x as long with 2
    threads as with 1 on a busy 2-core machine. ``OMP_NUM_THREADS``, if set, wins.
    """
    given = os.environ.get("OMP_NUM_THREADS")
    if given:
        if not given.strip().isdigit() or int(given) < 1:
            raise ValueError(f"OMP_NUM_THREADS={given!r} is not a positive whole number of threads; "
                             "set it to one (e.g. OMP_NUM_THREADS=1) or unset it to let the course choose.")
        return int(given), "OMP_NUM_THREADS is set"
    cores = available_cores()
    busy = busy_cores() if busy is None else busy
    jobs = max(1, jobs)
    free = max(1, cores - busy)
    why = f"{cores} cores" + (f", {busy} busy elsewhere" if busy else "") + f" // {jobs} job{'s' if jobs > 1 else ''}"
    return max(1, free // jobs), why


def auto_jobs(n_lessons: int, busy: int | None = None) -> int:
    """Lessons run at once by default: one per free core on a CPU (each with one thread), one on a
    GPU or MPS (the lessons would share its memory). ``COURSE_JOBS`` overrides."""
    given = os.environ.get("COURSE_JOBS")
    if given:
        if not given.strip().isdigit() or int(given) < 1:
            raise ValueError(f"COURSE_JOBS={given!r} is not a positive whole number; set it to e.g. 2 or unset it.")
        return int(given)
    from .device import get_device

    if get_device().type != "cpu":
        return 1
    return max(1, min(n_lessons, available_cores() - (busy_cores() if busy is None else busy)))


# Seconds each lesson took in the default profile on a 2-core CPU, one thread beside another lesson
# (`course run --profile default`, 2026-12-02): only their order matters, for a first run; later
# runs use the last run's own times (:func:`schedule`).
TYPICAL_SECONDS = {"00": 8, "01": 197, "02": 27, "03": 15, "04": 68, "05": 32, "06": 35, "07": 155,
                   "08": 18, "09": 143, "10": 248, "11": 133, "12": 1333}


def _last_run_seconds(profile: str) -> dict[str, float]:
    """Each lesson's seconds in the newest finished run of ``profile`` under the cache's runs/."""
    runs = cache_root() / "runs"
    found = []
    for f in runs.glob("*/results.json") if runs.is_dir() else ():
        try:
            r = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(r, dict) and r.get("profile") == profile and not r.get("interrupted"):
            found.append((str(r.get("started", "")), r.get("lessons", {})))
    if not found:
        return {}
    lessons = max(found, key=lambda x: x[0])[1]
    return {k: float(v["seconds"]) for k, v in lessons.items()
            if isinstance(v, dict) and v.get("status") == "ok" and isinstance(v.get("seconds"), (int, float))}


def schedule(notebooks: list[Path], profile: str) -> list[Path]:
    """The order to start ``notebooks`` in: longest first (the last run's times of this profile,
    else :data:`TYPICAL_SECONDS`), so that parallel lessons end together. Ties keep lesson order."""
    last = _last_run_seconds(profile)

    def seconds(nb: Path) -> float:
        return last.get(nb.stem, TYPICAL_SECONDS.get(nb.stem[:2], 60))

    return sorted(notebooks, key=lambda nb: -seconds(nb))


def busy_cores(sample: float = 1.0) -> int:
    """Cores other processes keep busy now, rounded (0 where unknown): the CPU use of the whole
    machine over ``sample`` seconds (this process sleeps meanwhile), else the 1-minute load average.

    The load average lags: a minute after a heavy job ended it still counts it, and a job started
    ten seconds ago barely shows, so the sample comes first. Measured on a 2-core machine: lesson 01
    took 384 s idle with 2 threads per kernel, and had not finished its first network after 650 s
    with 2 threads beside one busy process (torch's threads spin against it). So a core that
    something else keeps busy is not offered to the kernels.
    """
    try:
        import psutil

        return max(0, int(round(psutil.cpu_percent(interval=sample) / 100 * (psutil.cpu_count() or 1))))
    except Exception:  # noqa: BLE001 - no psutil or no /proc: fall back to the load average
        pass
    try:
        return max(0, int(round(os.getloadavg()[0])))
    except (AttributeError, OSError):
        return 0


# --- the children: papermill and its kernel die with the runner ---------------------------------

_CHILDREN: set[subprocess.Popen] = set()
_CHILDREN_LOCK = threading.Lock()
_STOPPING = threading.Event()  # set on Ctrl-C: a worker thread must not start another papermill
PR_SET_PDEATHSIG = 1
_PRCTL = None  # libc's prctl once looked up; False where there is none (not Linux)


def _prctl():
    """libc's ``prctl``, looked up in the parent (a forked child of a threaded process must not dlopen)."""
    global _PRCTL
    if _PRCTL is None:
        try:
            import ctypes

            _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
            _PRCTL.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        except (OSError, AttributeError):
            _PRCTL = False
    return _PRCTL


def _die_with_parent(prctl, parent: int) -> None:
    """In the child, before papermill starts: on Linux, ask the kernel for SIGKILL when the runner dies.

    The runner may be killed without a chance to clean up (SIGKILL, the OOM killer, a closed
    terminal); the kernel papermill starts exits within a second of papermill (ipykernel polls its
    parent), so nothing keeps writing into the run folder. Linux sends the signal when the *thread*
    that started the child ends: the pool's worker threads live until :func:`run_lessons` shuts
    the pool down, after every child has ended. A runner that died before the request was made is
    caught by comparing the parent's pid.
    """
    prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _descendants(proc: subprocess.Popen) -> list:
    """Every process below papermill (its kernel runs in a session of its own, out of the group)."""
    import psutil

    try:
        return psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        return []


def stop_children(grace: float = 3.0) -> int:
    """Terminate every papermill the runner started, its process group and its kernel; return how many.

    SIGTERM first, then SIGKILL for whatever is still alive after ``grace`` seconds.
    """
    import psutil

    _STOPPING.set()
    with _CHILDREN_LOCK:
        children = [p for p in _CHILDREN if p.poll() is None]
    below = [q for p in children for q in _descendants(p)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in children:
            try:
                os.killpg(proc.pid, sig) if os.name == "posix" else proc.kill()
            except (ProcessLookupError, PermissionError):
                pass
        for q in below:
            try:
                q.send_signal(sig)
            except psutil.Error:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (any(p.poll() is None for p in children)
                                               or any(_running(q) for q in below)):
            time.sleep(0.05)
    return len(children)


def _running(q) -> bool:
    import psutil

    try:
        return q.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _spawn(cmd: list[str], env: dict) -> subprocess.Popen:
    """Start papermill in a process group of its own, tied to the runner's life (see _die_with_parent)."""
    if _STOPPING.is_set():
        raise RuntimeError("course run was interrupted; no new lesson is started")
    posix = os.name == "posix"
    prctl = _prctl() if sys.platform.startswith("linux") else None
    guard = functools.partial(_die_with_parent, prctl, os.getpid()) if prctl else None
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=posix,
                            preexec_fn=guard)  # noqa: PLW1509 (guard only calls prctl, looked up before the fork)
    with _CHILDREN_LOCK:
        _CHILDREN.add(proc)
    if _STOPPING.is_set():  # interrupted while it started: stop_children may have missed it
        os.killpg(proc.pid, signal.SIGKILL) if posix else proc.kill()
    return proc


def run_one(nb: Path, out_dir: Path, profile: str, timeout: int | None = None, env: dict | None = None) -> dict:
    """Execute one notebook; return its entry for results.json."""
    out_dir = absolute_path(out_dir)
    out_nb = out_dir / nb.name
    metrics_file = out_dir / f"{nb.stem}.metrics.json"
    metrics_file.unlink(missing_ok=True)
    env = {**(env or kernel_environment(profile, 1)), "COURSE_RESULTS_FILE": str(metrics_file)}
    cmd = [sys.executable, "-m", "papermill", str(nb), str(out_nb), "-p", "profile", profile,
           "-k", "python3", "--cwd", str(nb.parent), "--no-progress-bar"]
    if timeout:
        cmd += ["--execution-timeout", str(timeout)]
    start = time.perf_counter()
    proc = _spawn(cmd, env)
    try:
        stdout, stderr = proc.communicate()
    finally:
        with _CHILDREN_LOCK:
            _CHILDREN.discard(proc)
    seconds = round(time.perf_counter() - start, 1)
    data = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    entry = {"status": "ok" if proc.returncode == 0 else "failed", "seconds": seconds,
             "notebook": str(out_nb), "metrics": data.get("metrics", {}), "checks": data.get("checks", {})}
    if proc.returncode != 0:
        entry["error"] = _last_error(stderr or stdout)
        (out_dir / f"{nb.stem}.log").write_text(stdout + "\n" + stderr)
    return entry


RUN_OUTPUTS = ("results.json", "*.ipynb", "*.metrics.json", "*.log", "report.html", "report.md")


def _earlier_run(folder: Path) -> list[Path]:
    """The files of an earlier run in ``folder`` (what a new run would overwrite)."""
    return sorted(p for pattern in RUN_OUTPUTS for p in folder.glob(pattern))


def _make_folder(folder: Path) -> None:
    """``mkdir -p`` with an error that names the problem when part of the path is a file."""
    for part in [folder, *folder.parents]:
        if part.exists() and not part.is_dir():
            raise ValueError(f"Cannot write the run into {folder}: {part} is a file, not a folder. "
                             "Choose another --out.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"Cannot create the run folder {folder}: {e.strerror or e}. Choose another --out "
                         "(or set COURSE_CACHE to a folder you can write).") from e


class RunInterrupted(Exception):
    """Ctrl-C (or SIGTERM) during ``course run``: the children are stopped, what finished is saved."""

    def __init__(self, out_dir: Path, results: dict, stopped: int):
        super().__init__(f"interrupted; {stopped} running lesson(s) stopped")
        self.out_dir, self.results, self.stopped = out_dir, results, stopped


def run_folder(out: Path | None, profile: str, stamp: str, force: bool = False) -> tuple[Path, str]:
    """The folder a run writes into, created, and a line that says how it was chosen.

    Without ``out``: ``$COURSE_CACHE/runs/<timestamp>-<profile>``, with ``-2``, ``-3`` ... added when
    a run started in the same second already has it. With ``out``: used as it is if it holds no
    earlier run; an earlier run there is refused unless ``force``, which removes its files first.
    Nothing of an earlier run is ever overwritten silently.
    """
    if out is None:
        base = absolute_path(cache_root() / "runs" / f"{stamp}-{profile}")
        _make_folder(base.parent)
        for n in range(1, 1000):
            folder = base if n == 1 else base.with_name(f"{base.name}-{n}")
            try:
                folder.mkdir()
                return folder, f"new run folder {folder}"
            except FileExistsError:
                continue
        raise ValueError(f"Too many runs named {base.name}* in {base.parent}.")
    folder = absolute_path(out)
    _make_folder(folder)
    earlier = _earlier_run(folder)
    if earlier and not force:
        names = ", ".join(p.name for p in earlier[:4]) + (" ..." if len(earlier) > 4 else "")
        raise ValueError(f"{folder} already holds a run ({names}); nothing was overwritten. Pass --force "
                         "to replace it, or choose another --out (without --out every run gets a fresh "
                         "folder under $COURSE_CACHE/runs).")
    for p in earlier:
        p.unlink()
    return folder, (f"replacing the earlier run in {folder} ({len(earlier)} files removed, --force)"
                    if earlier else f"run folder {folder}")


def grown_share(free: int, running: int, current: int) -> int | None:
    """Threads each of the ``running`` kernels may use once no lesson is left to start: the ``free``
    cores shared out (``free // running``), if that is more than their ``current`` count; else None."""
    if running < 1:
        return None
    share = max(1, free // running)
    return share if share > current else None


SCRATCH_PREFIX, SCRATCH_OWNER = "course-run-", "owner"


def _owner_tag(pid: int) -> str | None:
    """``host pid start-time`` of a live process (None if it has ended): what a run's temporary
    folder records about the run that made it. The start time tells a reused pid from the run."""
    try:
        return f"{socket.gethostname()} {pid} {psutil.Process(pid).create_time():.3f}"
    except psutil.NoSuchProcess:
        return None


def _remove_orphaned_scratch() -> None:
    """Remove the temporary folders of runs that ended without cleaning up (a runner killed by
    SIGKILL or by the out-of-memory killer cannot run its ``finally``). Only folders this user owns,
    whose ``owner`` file names a process of this machine that no longer runs; anything else,
    including a folder without that file, is left alone."""
    try:
        folders = list(Path(tempfile.gettempdir()).glob(SCRATCH_PREFIX + "*"))
    except OSError:
        return
    host, uid = socket.gethostname(), getattr(os, "getuid", lambda: None)()
    for folder in folders:
        try:
            tag = (folder / SCRATCH_OWNER).read_text()
            name, pid, _ = tag.split()
            if (uid is not None and folder.stat().st_uid != uid) or name != host or _owner_tag(int(pid)) == tag:
                continue
        except (OSError, ValueError, psutil.AccessDenied):   # (AccessDenied: that process still runs)
            continue
        shutil.rmtree(folder, ignore_errors=True)


def _scratch_folder(sharing: bool) -> Path | None:
    """A fresh temporary folder for one run, removed when the run ends: the kernels' threads files
    live in it, and the lessons' processes get it as TMPDIR (papermill's kernel connection file goes
    there, so a lesson stopped mid-run leaves nothing behind in the system's temp folder). None where
    no temporary folder can be made: then the lessons keep their threads (``sharing``: a note says
    why) and the system's TMPDIR. The folder names the run in its ``owner`` file, so that a later
    run removes it if this one is killed before it can (:func:`_remove_orphaned_scratch`)."""
    _remove_orphaned_scratch()
    folder = None
    try:
        folder = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))
        (folder / SCRATCH_OWNER).write_text(_owner_tag(os.getpid()))
        return folder
    except OSError as e:
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
        if sharing:
            print(f"note: the lessons keep their threads to the end (no temporary folder for their threads "
                  f"files: {e.strerror or e}; set TMPDIR to a folder you can write)", flush=True)
        return None


def _share_cores(started: dict, shares: Path, free: int, offered: dict) -> None:
    """After a lesson ended: if every lesson not done is running (none queued), give them the free
    cores (:func:`grown_share`) through their threads files and note it in ``offered``."""
    pending = [name for name, fut in started.items() if not fut.done()]
    if not pending or not all(started[name].running() for name in pending):
        return
    share = grown_share(free, len(pending), min(offered[name][-1] for name in pending))
    if share is None:
        return
    for name in pending:
        write_share(shares / f"{name}.threads", share)
        offered[name].append(share)
    print(f"{', '.join(pending)}: {share} threads each now (nothing left to start)", flush=True)


def _stop_run(pool: ThreadPoolExecutor) -> int:
    """Cancel the lessons not started, stop the running ones, wait for the pool; return how many stopped.

    A second Ctrl-C (or SIGTERM) meanwhile is ignored, so the cleanup is never cut short.
    """
    main = threading.current_thread() is threading.main_thread()
    signals = (signal.SIGINT, signal.SIGTERM)
    before = [signal.signal(s, signal.SIG_IGN) for s in signals] if main else []
    try:
        pool.shutdown(wait=False, cancel_futures=True)
        stopped = stop_children()
        pool.shutdown(wait=True)
    finally:
        for s, handler in zip(signals, before):
            signal.signal(s, handler)
    return stopped


def run_lessons(selection: list[str] | None = None, profile: str = "default", out: Path | None = None,
                jobs: int | None = None, timeout: int | None = None, folder: Path | None = None,
                force: bool = False) -> tuple[Path, dict]:
    """Run lessons, ``jobs`` at once (default :func:`auto_jobs`), longest first; write and return
    ``(DIR, results)`` (lessons in their own order).

    Raises :class:`RunInterrupted` on Ctrl-C once the children are stopped and the lessons that
    finished are written to ``results.json``.
    """
    if profile not in NAMES:
        raise ValueError(f"Unknown profile {profile!r}; use one of {', '.join(NAMES)}.")
    if jobs is not None and (not isinstance(jobs, int) or jobs < 1):
        raise ValueError(f"jobs must be a positive whole number of lessons run at once, got {jobs!r}.")
    notebooks = find_notebooks(selection, folder)
    busy = busy_cores()   # sampled once per run, for the number of lessons and their threads
    if jobs is None:
        jobs = auto_jobs(len(notebooks), busy)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    env = kernel_environment(profile, jobs, busy)
    threads, _ = kernel_threads(jobs, busy)
    out_dir, how = run_folder(out, profile, stamp, force)
    print(how, flush=True)
    _STOPPING.clear()
    results = {"profile": profile, "started": stamp, "jobs": jobs, "threads_per_kernel": threads, "lessons": {}}
    if jobs > 1:
        print(f"{jobs} lessons at a time, {threads} thread(s) each, longest first", flush=True)
    # the kernels share out the cores of the lessons that end once none is left to start (course.cores)
    sharing = jobs > 1 and not os.environ.get("OMP_NUM_THREADS")
    scratch = _scratch_folder(sharing)
    shares = scratch if sharing else None
    if scratch:
        env = {**env, "TMPDIR": str(scratch)}
    free = max(1, available_cores() - busy)
    order = schedule(notebooks, profile) if jobs > 1 else notebooks
    offered = {nb.stem: [threads] for nb in order}
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        def lesson_env(nb: Path) -> dict:   # each kernel's own threads file
            return {**env, THREADS_FILE_ENV: str(shares / f"{nb.stem}.threads")} if shares else env

        started = {nb.stem: pool.submit(run_one, nb, out_dir, profile, timeout, lesson_env(nb)) for nb in order}
        names = {fut: name for name, fut in started.items()}
        done = {}
        for fut in as_completed(started.values()):                 # printed as each one ends
            entry = done[names[fut]] = fut.result()
            if shares:
                entry["threads"] = offered[names[fut]]              # the thread counts it was given, in order
            mark = "ok" if entry["status"] == "ok" else "FAILED: " + entry.get("error", "")
            print(f"{names[fut]}: {mark} ({entry['seconds']} s)", flush=True)
            results["lessons"] = {nb.stem: done[nb.stem] for nb in notebooks if nb.stem in done}  # lesson order
            if shares:
                _share_cores(started, shares, free, offered)
    except KeyboardInterrupt:
        stopped = _stop_run(pool)
        results["interrupted"] = True
        write_json_atomic(out_dir / "results.json", results)
        raise RunInterrupted(out_dir, results, stopped) from None
    except BaseException:  # the runner itself failed: its lessons must not run on without it
        _stop_run(pool)
        raise
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    pool.shutdown(wait=True)
    from .device import get_device

    results["device"] = str(get_device())
    write_json_atomic(out_dir / "results.json", results)
    return out_dir, results


def format_table(results: dict) -> str:
    """The paper's numbers beside ours, one row per metric."""
    rows = []
    for lesson, entry in results["lessons"].items():
        if entry["status"] != "ok":
            rows.append((lesson, "FAILED", entry.get("error", "")[:60], "", ""))
        for name, m in entry["metrics"].items():
            rows.append((lesson, name, _fmt(m.get("value")), _fmt(m.get("paper")), m.get("source") or ""))
    head = ("lesson", "metric", "ours", "paper", "source")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(5)]
    fmt = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])
