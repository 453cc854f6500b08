"""Shared test configuration: offline environment, repository paths, xdist grouping."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import pytest

# No test may wait on the network (the suite passes under `unshare -n`).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Figures drawn by package tests go nowhere. Not through MPLBACKEND: nbval kernels would inherit it
# and `plt.show()` in a demo would then store no output at all.
matplotlib.use("Agg")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Keep each file's tests on one xdist worker (nbval needs one kernel per notebook) unless a
    test names its own group with `@pytest.mark.xdist_group` (the grading pipeline, one per lab)."""
    for item in items:
        if not any(True for _ in item.iter_markers("xdist_group")):
            item.add_marker(pytest.mark.xdist_group(str(item.fspath)))
