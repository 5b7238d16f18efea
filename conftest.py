"""pytest runs everything in the `ci` profile: unit tests, papermill runs and nbval runs of the lessons.

Set here, at import time, so the kernels that nbval and papermill start inherit it.
"""
import os

os.environ["COURSE_PROFILE"] = os.environ.get("COURSE_TEST_PROFILE", "ci")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("PYTHONUNBUFFERED", "1")
