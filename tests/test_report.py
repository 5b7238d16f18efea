"""``course report``: every metric appears, a missed paper value is shown as missed, the page is
self-contained."""
import base64
import io
import json
import re

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from course.cli import main
from course.report import MISSED, NO_PAPER, REPRODUCED, build_report, verdict


def _png() -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [1, 0])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


METRICS = {
    "fc100_100_10.test_error": {"value": 0.0171, "paper": 0.0164, "source": "mnist-full", "profile": "paper"},
    "lbfgs.mean_distortion": {"value": 0.21, "paper": 0.058, "source": "mnist-5k", "profile": "ci"},
    "fooling.mean_confidence": {"value": [0.9999, 0.62], "paper": [0.9999, 0.9999], "source": "mnist-full",
                                "profile": "ci"},
    "data.test_images": {"value": 1000, "paper": None, "source": "mnist-full", "profile": "ci"},
    "imagenet.top1": {"value": 0.001, "paper": 0.57, "source": "imagenet-val", "weights": "none (untrained)",
                      "profile": "ci"},
}


def _run_dir(tmp_path):
    png = _png()
    nb = new_notebook(cells=[
        new_markdown_cell("# 03 · Adversarial examples"),
        new_markdown_cell("## The adversarial grid"),
        new_code_cell("fig = grid()", outputs=[new_output("display_data", data={
            "image/png": base64.b64encode(png).decode(), "text/plain": "<Figure>"})]),
    ])
    nbformat.write(nb, tmp_path / "03_lbfgs.ipynb")
    results = {"profile": "ci", "started": "20260101-000000", "device": "cuda:0", "lessons": {
        "03_lbfgs": {"status": "ok", "seconds": 12.5, "notebook": "/elsewhere/03_lbfgs.ipynb",
                     "metrics": METRICS, "checks": {"3.1": True}},
        "05_spectral": {"status": "failed", "seconds": 3.0, "error": "RuntimeError: boom", "metrics": {},
                        "checks": {}},
    }}
    (tmp_path / "results.json").write_text(json.dumps(results))
    return png


def test_verdicts():
    assert verdict(METRICS["fc100_100_10.test_error"]) == REPRODUCED
    assert verdict(METRICS["lbfgs.mean_distortion"]) == MISSED
    assert verdict(METRICS["fooling.mean_confidence"]) == MISSED
    assert verdict(METRICS["data.test_images"]) == NO_PAPER
    assert verdict({"value": 0.01, "paper": 0.0164, "better": "lower"}) == REPRODUCED
    assert verdict({"value": 0.5, "paper": 0.4, "tolerance": 0.2}) == REPRODUCED
    assert verdict({"value": "nan", "paper": 0.4}) == MISSED


def test_report_shows_every_metric_and_every_miss(tmp_path):
    png = _run_dir(tmp_path)
    html_path, md_path = build_report(tmp_path)
    page, md = html_path.read_text(), md_path.read_text()
    for text in (page, md):
        for name in METRICS:
            assert name in text
        for fact in ("cuda:0", "12.5 s", "mnist-5k", "imagenet-val", "none (untrained)", "03 · Adversarial examples",
                     "RuntimeError: boom", "0.058"):
            assert fact in text, fact
    # the misses are shown as such, row by row
    rows = {name: row for row in re.findall(r"<tr>.*?</tr>", page) for name in METRICS if name in row}
    for name, m in METRICS.items():
        assert verdict(m) in rows[name]
    assert page.count(f"class=missed>{MISSED}<") == 3
    assert md.count(f"**{MISSED.upper()}**") == 3
    # the figure is embedded, and nothing is fetched from elsewhere
    assert base64.b64encode(png).decode() in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script" not in page and "<link" not in page
    assert (tmp_path / "report_files" / "03_lbfgs-1.png").read_bytes() == png
    assert "report_files/03_lbfgs-1.png" in md


def test_report_command_defaults_to_the_newest_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    run = tmp_path / "runs" / "20260101-000000-ci"
    run.mkdir(parents=True)
    _run_dir(run)
    assert main(["report"]) == 0
    assert str(run / "report.html") in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nothing-here")]) == 2
