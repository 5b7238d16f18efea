"""intriguing-course: the library behind the lessons.

The notebooks import small, single-purpose helpers from here; everything heavy is batched and
runs on any device. The most used names are re-exported::

    import course
    profile = course.resolve_profile("default")   # ci / default / paper (COURSE_PROFILE overrides)
    train = course.load_mnist("train")            # tensors in [0, 1], with .source
    model, info = course.train_model("fc100_100_10")
    course.record("fc100_100_10.test_error", info["test_error"], paper=0.0164, source=info["source"])
    course.check("1.1", my_function)
"""
from . import cores
from .checks import check
from .data import load_mnist, p1_p2_split
from .device import get_device, seed_everything
from .profiles import resolve_profile, setting
from .results import record, recorded, results_table
from .train import evaluate, train_model

__version__ = "0.1.0"

cores.install_cell_hook()   # only in a kernel `course run` started: more threads as the lessons beside it end

__all__ = [
    "check", "evaluate", "get_device", "load_mnist", "p1_p2_split", "record", "recorded", "resolve_profile",
    "results_table", "seed_everything", "setting", "train_model",
]
