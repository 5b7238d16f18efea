import json

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from course.cli import main
from course.runner import format_table, run_lessons


def test_data_command_reports_its_source(capsys, tmp_cache):
    assert main(["data", "mnist"]) == 0
    assert "mnist-full" in capsys.readouterr().out


def test_doctor_lists_what_is_missing(capsys):
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"torch", "device", "mnist", "cache", "todo"} <= set(report)


def test_run_writes_results_and_prints_the_table(tmp_path, capsys):
    assert main(["run", "00", "--profile", "ci", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "results.json").read_text())
    lesson = results["lessons"]["00_welcome"]
    assert lesson["status"] == "ok" and lesson["seconds"] > 0
    assert lesson["metrics"]["untrained.test_error"]["paper"] == 0.9
    assert "untrained.test_error" in out and (tmp_path / "00_welcome.ipynb").exists()


def test_a_failing_lesson_is_reported_and_the_others_still_run(tmp_path):
    folder = tmp_path / "nbs"
    folder.mkdir()
    good, bad = new_notebook(), new_notebook()
    good.cells = [new_code_cell("profile = 'default'", metadata={"tags": ["parameters"]}),
                  new_code_cell("import course\ncourse.record('demo.value', 1.0, paper=2.0)")]
    bad.cells = [new_code_cell("profile = 'default'", metadata={"tags": ["parameters"]}),
                 new_code_cell("raise RuntimeError('boom')")]
    for nb in (good, bad):
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(bad, folder / "01_bad.ipynb")
    nbformat.write(good, folder / "02_good.ipynb")
    out, results = run_lessons(profile="ci", out=tmp_path / "out", folder=folder)
    assert results["lessons"]["01_bad"]["status"] == "failed"
    assert "boom" in results["lessons"]["01_bad"]["error"]
    assert results["lessons"]["02_good"]["metrics"]["demo.value"]["value"] == 1.0
    assert "FAILED" in format_table(results)


def test_unknown_lesson_and_profile(capsys):
    assert main(["run", "77"]) == 2
    assert "No lesson matches" in capsys.readouterr().err
