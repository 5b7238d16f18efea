"""pytest runs everything in the `ci` profile: unit tests, papermill runs and nbval runs of the lessons.

Set here, at import time, so the kernels that nbval and papermill start inherit it.
"""
import os

os.environ["COURSE_PROFILE"] = os.environ.get("COURSE_TEST_PROFILE", "ci")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("PYTHONUNBUFFERED", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # one torch thread per xdist worker and kernel: no oversubscription
os.environ["COURSE_HEADLESS"] = "1"  # widgets render as one plain call (course.viz.explore)
