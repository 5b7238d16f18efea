"""Every solutions notebook, executed headless with papermill in the `ci` profile.

The lessons themselves (exercises unsolved) are executed by nbval: `pytest` collects lessons/
with --nbval-lax (see pyproject.toml).
"""
import math

import pytest

from course.runner import find_notebooks, run_one

ERRORS = (0.0, 0.6)  # ci models train on 3,000 images for a few epochs: far from the paper, far from chance
T1 = ("fc10_1e-4", "fc10_1e-2", "fc10_1", "fc100_100_10", "fc200_200_10", "ae400_10", "lenet")

# lesson -> {metric: (low, high)}: the key numbers each lesson must record, and their sane range
EXPECTED = {
    "00_welcome": {"data.train_images": (1000, 60000), "data.test_images": (100, 10000),
                   "untrained.test_error": (0.6, 1.0)},
    "01_training_mnist": {f"{m}.{k}": ERRORS for m in T1 for k in ("train_error", "test_error")},
}


def _check_value(name, value, low, high):
    values = value if isinstance(value, list) else [value]
    for v in values:
        assert isinstance(v, (int, float)) and math.isfinite(v), f"{name} is not a finite number: {value!r}"
        assert low <= v <= high, f"{name} = {v} outside its sane range [{low}, {high}]"


@pytest.mark.parametrize("notebook", find_notebooks(None), ids=lambda p: p.stem)
def test_solution_runs_and_records_its_results(notebook, tmp_path):
    entry = run_one(notebook, tmp_path, "ci", timeout=900)
    assert entry["status"] == "ok", f"{notebook.name} failed: {entry.get('error')}\n" + (
        (tmp_path / f"{notebook.stem}.log").read_text()[-3000:] if (tmp_path / f"{notebook.stem}.log").exists() else "")
    assert notebook.stem in EXPECTED, f"add {notebook.stem}'s key metrics to EXPECTED in {__file__}"
    for name, (low, high) in EXPECTED[notebook.stem].items():
        assert name in entry["metrics"], f"{notebook.stem} did not record {name}"
        _check_value(name, entry["metrics"][name]["value"], low, high)
        assert entry["metrics"][name]["profile"] == "ci"
    assert entry["checks"], f"{notebook.stem} checks no exercise"
    failed = [k for k, ok in entry["checks"].items() if not ok]
    assert not failed, f"the solutions of exercises {failed} do not pass their own checks"
