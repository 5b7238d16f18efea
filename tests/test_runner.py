"""`course run` never loses a run, resolves paths where the user stands, owns its children, and
chooses the kernels' threads for the machine."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil
import pytest
import torch
from nbformat.v4 import new_code_cell, new_notebook

import course.device

from course import runner
from course.cli import main
from course.runner import run_folder, run_lessons

REPO = Path(__file__).resolve().parent.parent


def _notebook(folder: Path, name: str, code: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    nb = new_notebook()
    nb.cells = [new_code_cell("profile = 'default'", metadata={"tags": ["parameters"]}), new_code_cell(code)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / name)
    return folder / name


REPORTER = """
import os, torch, course
course.record('kernel.threads', torch.get_num_threads())
course.record('kernel.cache', os.environ['COURSE_CACHE'])
"""


def test_an_existing_run_in_out_is_refused_and_kept(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text('{"earlier": true}')
    (out / "00_welcome.ipynb").write_text("earlier notebook")
    assert main(["run", "00", "--profile", "ci", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--force" in err and "nothing was overwritten" in err
    assert (out / "results.json").read_text() == '{"earlier": true}'
    assert (out / "00_welcome.ipynb").read_text() == "earlier notebook"


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    first, _ = run_folder(None, "ci", "20260101-000000")
    second, how2 = run_folder(None, "ci", "20260101-000000")
    assert first != second and second.name == "20260101-000000-ci-2"
    assert first.is_dir() and second.is_dir() and "new run folder" in how2


def test_relative_paths_resolve_where_the_user_stands_and_threads_follow_the_cores(tmp_path, monkeypatch, capsys):
    nbs = tmp_path / "nbs"
    _notebook(nbs, "01_report.ipynb", REPORTER)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COURSE_CACHE", "cache")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(runner, "available_cores", lambda: 2)  # torch's own default would be 2 threads
    monkeypatch.setattr(runner, "busy_cores", lambda: 0)
    out, results = run_lessons(profile="ci", out=Path("runs/x"), jobs=2, folder=nbs)
    metrics = results["lessons"]["01_report"]["metrics"]
    assert out == tmp_path / "runs" / "x" and (out / "results.json").exists()
    assert metrics["kernel.cache"]["value"] == str(tmp_path / "cache"), "the kernel got a relative COURSE_CACHE"
    assert metrics["kernel.threads"]["value"] == 1, "2 cores // 2 jobs should give 1 thread per kernel"
    assert results["threads_per_kernel"] == 1
    assert not (nbs / "runs").exists() and not (nbs / "cache").exists()

    with pytest.raises(ValueError, match="already holds a run.*--force"):
        run_lessons(profile="ci", out=Path("runs/x"), folder=nbs)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's choice wins over 2 cores // 1 job
    out, results = run_lessons(profile="ci", out=Path("runs/x"), folder=nbs, force=True)
    assert "replacing the earlier run" in capsys.readouterr().out
    assert results["lessons"]["01_report"]["metrics"]["kernel.threads"]["value"] == 1
    assert json.loads((out / "results.json").read_text())["threads_per_kernel"] == 1


WAITS_FOR_A_SHARE = """
import os, time, torch, course
share, t0 = os.environ['COURSE_THREADS_FILE'], time.monotonic()
while not os.path.exists(share) and time.monotonic() - t0 < 120:   # the other lesson ends meanwhile
    time.sleep(0.1)
"""


def test_the_last_lesson_running_gets_the_cores_of_the_ones_that_ended(tmp_path, monkeypatch, capsys):
    nbs = tmp_path / "nbs"
    _notebook(nbs, "01_report.ipynb", REPORTER)
    nb = nbformat.read(_notebook(nbs, "02_waits.ipynb", WAITS_FOR_A_SHARE), as_version=4)
    nb.cells.append(new_code_cell("course.record('kernel.threads', torch.get_num_threads())"))  # after the cell hook
    nbformat.write(nb, nbs / "02_waits.ipynb")
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(runner, "available_cores", lambda: 2)
    monkeypatch.setattr(runner, "busy_cores", lambda: 0)
    made = []
    real_mkdtemp = runner.tempfile.mkdtemp
    monkeypatch.setattr(runner.tempfile, "mkdtemp", lambda **kw: made.append(real_mkdtemp(**kw)) or made[-1])
    out, results = run_lessons(profile="ci", out=tmp_path / "run", jobs=2, folder=nbs)
    lessons = results["lessons"]
    assert lessons["02_waits"]["status"] == "ok", lessons["02_waits"].get("error")
    assert lessons["01_report"]["metrics"]["kernel.threads"]["value"] == 1
    assert lessons["02_waits"]["metrics"]["kernel.threads"]["value"] == 2, "the lesson left alone kept 1 thread"
    assert lessons["01_report"]["threads"] == [1] and lessons["02_waits"]["threads"] == [1, 2]
    assert "02_waits: 2 threads each now" in capsys.readouterr().out
    assert len(made) == 1 and not Path(made[0]).exists(), "the threads files outlived the run"

    monkeypatch.setenv("OMP_NUM_THREADS", "1")   # the user's count is kept: no files, no growth
    _notebook(nbs, "02_waits.ipynb", "import torch, course\ncourse.record('kernel.threads', torch.get_num_threads())")
    out, results = run_lessons(profile="ci", out=tmp_path / "run2", jobs=2, folder=nbs)
    assert results["lessons"]["02_waits"]["metrics"]["kernel.threads"]["value"] == 1
    assert "threads" not in results["lessons"]["02_waits"]
    assert len(made) == 2 and not Path(made[1]).exists(), "the run's temporary folder outlived it"


def test_the_lessons_temporary_files_go_into_a_folder_the_run_removes(tmp_path, monkeypatch):
    """Each run gives its lessons a TMPDIR of their own (papermill's kernel connection file lands
    there), removed when the run ends, also with one lesson at a time."""
    _notebook(tmp_path / "nbs", "01_tmp.ipynb", "import os, tempfile, course\n"
              "course.record('kernel.tmpdir', os.environ['TMPDIR'])\n"
              "course.record('kernel.gettempdir', tempfile.gettempdir())\n"
              "course.record('kernel.headless', ' '.join(os.environ[k] for k in "
              "('COURSE_PROFILE', 'COURSE_HEADLESS', 'MPLBACKEND', 'PYTHONUNBUFFERED', 'MALLOC_MMAP_MAX_')))")
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(runner.tempfile, "tempdir", None)   # (tempfile caches the folder it found first)
    out, results = run_lessons(profile="ci", out=tmp_path / "run", jobs=1, folder=tmp_path / "nbs")
    metrics = results["lessons"]["01_tmp"]["metrics"]
    used = Path(metrics["kernel.tmpdir"]["value"])
    assert used.parent == tmp_path / "tmp" and used.name.startswith("course-run-")
    assert Path(metrics["kernel.gettempdir"]["value"]) == used
    assert metrics["kernel.headless"]["value"] == "ci 1 module://matplotlib_inline.backend_inline 1 0"
    assert list((tmp_path / "tmp").iterdir()) == [], "the run left files in the temp folder"


def test_without_a_temporary_folder_the_lessons_keep_their_threads(tmp_path, monkeypatch, capsys):
    _notebook(tmp_path / "nbs", "01_report.ipynb", REPORTER)
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)

    def no_tmp(**kw):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(runner.tempfile, "mkdtemp", no_tmp)
    out, results = run_lessons(profile="ci", out=tmp_path / "run", jobs=2, folder=tmp_path / "nbs")
    assert results["lessons"]["01_report"]["status"] == "ok" and "threads" not in results["lessons"]["01_report"]
    printed = capsys.readouterr().out
    assert "keep their threads to the end" in printed and "Permission denied" in printed and "TMPDIR" in printed


def test_kernel_threads_are_free_cores_over_jobs_at_least_one(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runner, "available_cores", lambda: 2)
    monkeypatch.setattr(runner, "busy_cores", lambda: 0)
    assert runner.kernel_threads(1) == (2, "2 cores // 1 job")
    assert runner.kernel_threads(4)[0] == 1
    monkeypatch.setattr(runner, "busy_cores", lambda: 1)   # one other busy process: one thread
    assert runner.kernel_threads(1) == (1, "2 cores, 1 busy elsewhere // 1 job")
    monkeypatch.setattr(runner, "available_cores", lambda: 8)
    monkeypatch.setattr(runner, "busy_cores", lambda: 3)
    assert runner.kernel_threads(2)[0] == 2 and runner.kernel_threads(1)[0] == 5
    monkeypatch.setattr(runner, "busy_cores", lambda: 12)  # more load than cores: still one thread
    assert runner.kernel_threads(1)[0] == 1


def test_busy_cores_come_from_a_cpu_sample_else_the_load_average(monkeypatch):
    import psutil

    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 4)
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval=None: 60.0)   # 2.4 of 4 cores busy
    monkeypatch.setattr(runner.os, "getloadavg", lambda: (0.1, 0.1, 0.1))   # a lagging load average
    assert runner.busy_cores(0.01) == 2

    def no_sample(interval=None):
        raise OSError("no /proc/stat here")
    monkeypatch.setattr(psutil, "cpu_percent", no_sample)
    monkeypatch.setattr(runner.os, "getloadavg", lambda: (1.4, 1.0, 0.5))
    assert runner.busy_cores() == 1
    monkeypatch.setattr(runner.os, "getloadavg", lambda: (0.2, 0.1, 0.1))
    assert runner.busy_cores() == 0

    def unknown():
        raise OSError("no load average here")
    monkeypatch.setattr(runner.os, "getloadavg", unknown)
    assert runner.busy_cores() == 0
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert runner.kernel_threads(4) == (5, "OMP_NUM_THREADS is set")
    monkeypatch.setenv("OMP_NUM_THREADS", "two")
    with pytest.raises(ValueError, match="OMP_NUM_THREADS='two' is not a positive whole number.*unset it"):
        runner.kernel_threads(1)


def test_doctor_shows_the_thread_choice(capsys, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runner, "available_cores", lambda: 8)
    monkeypatch.setattr(runner, "busy_cores", lambda: 0)
    monkeypatch.delenv("COURSE_JOBS", raising=False)
    monkeypatch.setattr(course.device, "get_device", lambda prefer=None: torch.device("cpu"))
    assert main(["doctor", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["threads"].startswith(
        "`course run` runs 8 lesson(s) at a time, 1 thread(s) each (8 cores // 8 jobs)")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert main(["doctor"]) == 0
    assert "1 per kernel, 8 lesson(s) at a time (OMP_NUM_THREADS is set" in capsys.readouterr().out


def test_out_under_a_file_is_explained(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("")
    assert main(["run", "00", "--profile", "ci", "--out", str(tmp_path / "notes.txt" / "run")]) == 2
    err = capsys.readouterr().err
    assert "notes.txt is a file, not a folder" in err and "Choose another --out" in err
    assert "Traceback" not in err


def test_a_bad_course_profile_names_the_variable(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_PROFILE", "fast")
    assert main(["run", "00"]) == 2
    err = capsys.readouterr().err
    assert "'fast'" in err and "COURSE_PROFILE" in err and "ci, default, paper" in err


def test_grade_without_solutions_says_how_to_install(tmp_path, monkeypatch, capsys):
    import course.lessons

    monkeypatch.setattr(course.lessons, "repo_root", lambda: tmp_path)  # as in site-packages
    sub = tmp_path / "sub.ipynb"
    nbformat.write(new_notebook(), sub)
    assert main(["grade", str(sub)]) == 2
    err = capsys.readouterr().err
    assert "solutions" in err and "pip install -e ." in err and "--solutions" in err
    assert "not one of our lessons" not in err


def test_run_without_notebooks_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner, "repo_root", lambda: tmp_path)  # as in site-packages
    assert main(["run", "00", "--profile", "ci"]) == 2
    assert "pip install -e ." in capsys.readouterr().err


def test_profile_errors_name_their_source_and_fix(monkeypatch):
    from course.profiles import resolve_profile

    monkeypatch.setenv("COURSE_PROFILE", "fast")
    with pytest.raises(ValueError, match=r"'fast' \(from the environment variable COURSE_PROFILE\).*unset COURSE_PROFILE"):
        resolve_profile("ci")


# --- the runner's children ----------------------------------------------------------------------

SLEEPER = """
import json, os, time
json.dump({{"kernel": os.getpid(), "papermill": os.getppid()}}, open({pids!r} + ".part", "w"))
os.replace({pids!r} + ".part", {pids!r})
while True:
    time.sleep(0.1)
    with open({tick!r}, "a") as f:
        f.write(".")
"""

DRIVER = """
import signal, sys
from pathlib import Path
# As a terminal's foreground job: Ctrl-C raises KeyboardInterrupt (a process started from a
# background job or a worker that ignores SIGINT would inherit the ignore, and never see it).
signal.signal(signal.SIGINT, signal.default_int_handler)
import course.runner as r
from course.cli import main
real = r.find_notebooks
r.find_notebooks = lambda selection, folder=None: real(selection, Path({nbs!r}))
sys.exit(main(["run", "--profile", "ci", "--out", {out!r}]))
"""


def _dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _start_run(tmp_path):
    """A `course run` whose lesson never ends, with TMPDIR ``tmp_path / "tmp"``; returns (runner
    process, pids of papermill and kernel)."""
    pids, tick = tmp_path / "pids.json", tmp_path / "tick"
    nbs = tmp_path / "nbs"
    _notebook(nbs, "01_forever.ipynb", SLEEPER.format(pids=str(pids), tick=str(tick)))
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "TMPDIR": str(tmp_path / "tmp")}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER.format(nbs=str(nbs), out=str(tmp_path / "out"))],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not pids.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the lesson never started: {proc.communicate()}")
        time.sleep(0.2)
    return proc, json.loads(pids.read_text()), tick


def _wait_dead(pids: dict, seconds: float = 15) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not all(_dead(p) for p in pids.values()):
        time.sleep(0.2)
    return {k: _dead(p) for k, p in pids.items()}


def _kill_leftovers(proc, pids: dict):
    proc.kill()
    proc.communicate()
    for p in pids.values():
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _killed_run(tmp_path) -> Path:
    """Start a run (:func:`_start_run`), SIGKILL the runner, check that its lesson died with it;
    return the temporary folder the runner could not remove."""
    proc, pids, tick = _start_run(tmp_path)
    try:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert _wait_dead(pids) == {"kernel": True, "papermill": True}
        size = tick.stat().st_size
        time.sleep(0.5)
        assert tick.stat().st_size == size, "something still writes into the run"
    finally:
        _kill_leftovers(proc, pids)
    (left,) = (tmp_path / "tmp").glob("course-run-*")   # a killed runner cannot clean up after itself
    return left


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux only")
def test_a_killed_runner_takes_its_lesson_with_it_and_the_next_run_removes_only_its_folder(tmp_path, monkeypatch):
    """papermill and the kernel die with a SIGKILLed runner (:func:`_killed_run`); the folder it
    left is removed by the next run, and no other run's folder is."""
    left = _killed_run(tmp_path)
    tmp = tmp_path / "tmp"
    ours = tmp / "course-run-live"          # a run still going (this process) keeps its folder
    ours.mkdir()
    (ours / "owner").write_text(runner._owner_tag(os.getpid()))
    reused = tmp / "course-run-reused"      # this pid, another start time: a dead run whose pid was reused
    reused.mkdir()
    (reused / "owner").write_text(f"{socket.gethostname()} {os.getpid()} 12345.000")
    abroad = tmp / "course-run-abroad"      # another machine's run (a shared temp folder): not ours to judge
    abroad.mkdir()
    (abroad / "owner").write_text("elsewhere.example 1 1.000")
    unknown = tmp / "course-run-old"        # no owner file (an older version, or not ours): kept
    unknown.mkdir()
    _notebook(tmp_path / "nbs2", "01_ok.ipynb", "x = 1")
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(runner.tempfile, "tempdir", None)
    run_lessons(profile="ci", out=tmp_path / "run2", jobs=1, folder=tmp_path / "nbs2")
    assert not left.exists() and not reused.exists(), "the killed runs' folders outlived the next run"
    assert sorted(p.name for p in tmp.iterdir()) == ["course-run-abroad", "course-run-live", "course-run-old"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_ctrl_c_stops_the_run_with_one_line(tmp_path, sig):
    proc, pids, _ = _start_run(tmp_path)
    try:
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130
        assert "Traceback" not in err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and "interrupted" in lines[0] and "1 running lesson(s) stopped" in lines[0], err
        assert _wait_dead(pids, seconds=2) == {"kernel": True, "papermill": True}, "the kernel outlived the run"
        assert json.loads((tmp_path / "out" / "results.json").read_text())["interrupted"] is True
        assert list((tmp_path / "tmp").iterdir()) == [], "the stopped lesson left files in the temp folder"
    finally:
        _kill_leftovers(proc, pids)


def test_auto_jobs_is_one_lesson_per_free_core_on_a_cpu_and_one_on_a_gpu(monkeypatch):
    monkeypatch.delenv("COURSE_JOBS", raising=False)
    monkeypatch.setattr(runner, "available_cores", lambda: 2)
    monkeypatch.setattr(runner, "busy_cores", lambda: 0)
    monkeypatch.setattr(course.device, "get_device", lambda prefer=None: torch.device("cpu"))
    assert runner.auto_jobs(13) == 2 and runner.auto_jobs(1) == 1
    assert runner.kernel_threads(runner.auto_jobs(13))[0] == 1      # two lessons, one thread each
    monkeypatch.setattr(runner, "busy_cores", lambda: 1)
    assert runner.auto_jobs(13) == 1
    monkeypatch.setattr(runner, "busy_cores", lambda: 5)
    assert runner.auto_jobs(13) == 1                                  # never fewer than one
    monkeypatch.setattr(runner, "busy_cores", lambda: 0)
    monkeypatch.setattr(course.device, "get_device", lambda prefer=None: torch.device("cuda"))
    assert runner.auto_jobs(13) == 1
    monkeypatch.setenv("COURSE_JOBS", "3")
    assert runner.auto_jobs(13) == 3
    monkeypatch.setenv("COURSE_JOBS", "two")
    with pytest.raises(ValueError, match="COURSE_JOBS"):
        runner.auto_jobs(13)
    with pytest.raises(ValueError, match="jobs must be a positive"):
        run_lessons(profile="ci", jobs=0, folder=Path("."))


def test_schedule_starts_the_longest_lessons_first_from_the_last_run(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    nbs = [Path(f"{n}.ipynb") for n in ("00_welcome", "01_training_mnist", "08_ascent", "12_imagenet_fooled")]
    assert [p.stem[:2] for p in runner.schedule(nbs, "default")] == ["12", "01", "08", "00"]  # typical times
    for name, started, profile, secs in (("a", "20260101-000000", "default", {"00_welcome": 5, "08_ascent": 2000}),
                                         ("b", "20250101-000000", "default", {"00_welcome": 999}),
                                         ("c", "20270101-000000", "ci", {"00_welcome": 999})):
        (tmp_path / "runs" / name).mkdir(parents=True)
        lessons = {k: {"status": "ok", "seconds": v} for k, v in secs.items()}
        (tmp_path / "runs" / name / "results.json").write_text(
            json.dumps({"profile": profile, "started": started, "lessons": lessons}))
    (tmp_path / "runs" / "broken").mkdir()
    (tmp_path / "runs" / "broken" / "results.json").write_text("{not json")
    # the newest run of this profile (a): 08 took 2000 s there, 00 5 s; the others keep typical times
    assert [p.stem[:2] for p in runner.schedule(nbs, "default")] == ["08", "12", "01", "00"]
