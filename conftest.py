"""Shared test configuration: offline environment, repository paths, xdist grouping."""

from __future__ import annotations

import os
from pathlib import Path

# Set before anything loads torch (and with it libgomp, which reads this once). The suite runs two
# xdist workers, and each may start a notebook kernel or a grading worker with two torch threads: on
# two cores, OpenMP threads that spin while they wait then starve each other (a training loop ran 8x
# slower, two at once, than alone). Passive waiting changes no result, only the scheduling.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import matplotlib
import pytest

from coursekit.nbtools import AVX2_DEMOS, AVX2_ENV, REPRODUCIBLE_ENV

# No test may wait on the network (the suite passes under `unshare -n`).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# nbval's kernels inherit this environment: hash strings and use as many torch threads as
# `make notebooks` does (coursekit.nbtools.kernel_env), or stored outputs reproduce only by chance.
os.environ.update(REPRODUCIBLE_ENV)

# Figures drawn by package tests go nowhere. Not through MPLBACKEND: nbval kernels would inherit it
# and `plt.show()` in a demo would then store no output at all.
matplotlib.use("Agg")

REPO = Path(__file__).resolve().parent


def has_avx512() -> bool:
    """Whether this CPU has AVX-512 (x86-64, /proc/cpuinfo): only then is an AVX2 run a different run. On
    an AVX2-only CPU it would repeat the first, and on ARM the AVX2 variables mean nothing."""
    try:
        return "avx512f" in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


def pytest_collect_file(file_path, parent):
    """Collect each demo of ``AVX2_DEMOS`` a second time, as ``<notebook>.ipynb::avx2``: nbval runs it in a
    kernel started with AVX2 kernels (``AVX2_ENV``), so one `make test` proves the stored outputs on both
    kinds of x86-64 CPU. Both copies share the notebook's xdist group and so run one after the other."""
    if not parent.config.option.nbval or file_path.suffix != ".ipynb":
        return None
    try:
        rel = file_path.resolve().relative_to(REPO).with_suffix(".py").as_posix()
    except ValueError:
        return None
    if rel not in AVX2_DEMOS or not has_avx512():
        return None
    from nbval.plugin import IPyNbFile

    class AVX2Notebook(IPyNbFile):
        def setup(self):  # the kernel starts here and inherits this process's environment
            saved = {key: os.environ.get(key) for key in AVX2_ENV}
            os.environ.update(AVX2_ENV)
            try:
                super().setup()
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value

    nodeid = f"{file_path.resolve().relative_to(REPO).as_posix()}::avx2"
    return AVX2Notebook.from_parent(parent, path=file_path, nodeid=nodeid)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


# Seconds a few long xdist groups take in `make test` (2-core CI machine, junit times, 2026-12-04).
# Only the order in which groups start depends on them (see group_cost); a wrong number costs time, never
# a result.
GROUP_SECONDS = {
    "grading-lab2_fine_tuning": 125, "grading-lab4_multimodal": 95, "grading-lab1_transformers": 55,
    "grading-lab3_deployment": 50, "grading-fixture": 60, "tests/test_train.py": 90, "tests/test_browser.py": 35,
    "tests/test_labs.py": 35, "tests/test_distributed.py": 30, "tests/test_lab2_references.py": 25,
}


def group_cost(group: str) -> float:
    """Estimated seconds of an xdist group: GROUP_SECONDS, else twice a demo notebook's stored cell timings
    (two workers share the two cores) and twice again for a demo of AVX2_DEMOS (its AVX2 copy runs in
    the same group), else 0."""
    if group in GROUP_SECONDS:
        return GROUP_SECONDS[group]
    path = REPO / group
    if path.suffix != ".ipynb" or not path.exists():
        return 0.0
    import math

    from coursekit import nbtools

    seconds = sum(s for s in nbtools.cell_seconds(nbtools.read_ipynb(path)) if not math.isnan(s)) + 3.0
    try:
        twice = path.resolve().relative_to(REPO).with_suffix(".py").as_posix() in AVX2_DEMOS and has_avx512()
    except ValueError:
        twice = False
    return 2 * seconds * (2 if twice else 1)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Keep each file's tests on one xdist worker (nbval needs one kernel per notebook) unless a
    test names its own group with `@pytest.mark.xdist_group` (the grading pipeline, one per lab).

    Then order the groups longest first (stable within a group): with ``--no-loadscope-reorder``
    (pytest.ini) xdist hands groups out in this order, so no long group starts while the other worker is
    nearly done (xdist's own order, most tests first, started every one-test grading group last)."""
    groups = {}
    for item in items:
        marker = next(iter(item.iter_markers("xdist_group")), None)
        if marker is None:
            group = os.path.relpath(str(item.fspath), REPO)
            item.add_marker(pytest.mark.xdist_group(str(item.fspath)))
        else:
            group = marker.args[0] if marker.args else marker.kwargs.get("name", "")
        groups[item] = group
    cost = {group: group_cost(group) for group in set(groups.values())}
    first = {}
    for n, item in enumerate(items):
        first.setdefault(groups[item], n)
    items.sort(key=lambda item: (-cost[groups[item]], first[groups[item]]))


@pytest.hookimpl(optionalhook=True)  # an xdist hook: unknown when xdist is disabled
def pytest_xdist_node_collection_finished(node, ids):
    """With --dist loadgroup the scheduler reads each test's group from an '@group' suffix of the
    node id. pytest 9.2 dropped that suffix silently: each notebook cell then ran in a fresh kernel
    and failed with NameError. Stop with the reason instead."""
    if node.config.getvalue("dist") == "loadgroup" and ids and not any("@" in i for i in ids):
        pytest.exit(f"pytest {pytest.__version__} ignores pytest-xdist's --dist loadgroup groups (node id "
                    f"{ids[0]!r} has no '@group'); install the pinned versions with: make install", returncode=4)


def lab_spec(lab: str):
    """The wrong-submission module ``tests/labs/<lab>.py`` (MISTAKES, SUBMISSIONS, WRONG), loaded by path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"labspec_{lab}", REPO / "tests" / "labs" / f"{lab}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def graded_cells(lab_py: Path) -> set[str]:
    """The grade_ids of a lab's graded (test) cells."""
    from coursekit import nbtools

    return {c.metadata["nbgrader"]["grade_id"] for c in nbtools.read_py(lab_py).cells
            if c.metadata.get("nbgrader", {}).get("grade")}


def run_lab_in_process(lab_py: Path, answers: dict[str, str], run_tests: bool = False) -> tuple[dict, set[str]]:
    """Run a lab in-process as nbgrader would, cell by cell: setup and helper cells, the given answer
    cells and, with ``run_tests``, the test cells (hidden tests included). Returns the namespace and the
    grade_ids of the test cells that failed. Ungraded demonstration cells are skipped. The warning filters
    that the setup cell's ``quiet()`` sets hold during the run (as in a kernel) and are undone after it."""
    import warnings

    from coursekit import nbtools

    space: dict = {"__name__": lab_py.stem}
    failed: set[str] = set()
    with warnings.catch_warnings():
        for cell in nbtools.read_py(lab_py).cells:
            meta = cell.metadata.get("nbgrader", {})
            gid = meta.get("grade_id")
            if gid in ("setup", "test_helpers"):
                exec(cell.source, space)
            elif meta.get("solution") and gid in answers:
                try:
                    exec(answers[gid], space)
                except Exception:  # noqa: BLE001 - a broken answer fails its tests, like in a kernel
                    pass
            elif meta.get("grade") and run_tests:
                try:
                    exec(cell.source, space)
                except Exception:  # noqa: BLE001 - whatever a test cell raises, that test failed
                    failed.add(gid)
    return space, failed
