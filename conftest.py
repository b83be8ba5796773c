"""Run everything pytest collects, the notebooks included, in quick mode unless told otherwise."""
import os
import sys

os.environ.setdefault("SAMLIB_MODE", "quick")

# Under pytest-xdist, share the cores among the workers (and the kernels and subprocesses they start,
# which inherit this environment). Left alone, torch gives every worker one OpenMP thread per core:
# two workers on two cores run four threads that spin-wait on each other, and the suite took 929 s
# and 1650 CPU-s instead of about half of each.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, str(_threads))
    if "torch" in sys.modules:       # imported before this file by a plugin: set it directly too
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


# The longest files first, so that neither core finishes the run alone with one of them: pyproject's
# addopts hand whole files to the workers (--dist loadfile) in this order (--no-loadscope-reorder).
LONGEST_FIRST = ("tests/test_browser.py", "tests/test_release.py")


def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))   # stable: the rest keep their order
