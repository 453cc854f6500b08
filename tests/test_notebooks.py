"""Static checks on every notebook: .py/.ipynb pairs in sync, demos executed cleanly, Colab cells
current, demos runnable as plain scripts. (nbval re-executes the demos and compares outputs.)"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from coursekit import nbtools

from conftest import REPO, has_avx512

DEMOS = nbtools.demo_sources(REPO)
LABS = nbtools.lab_sources(REPO)
ALL = DEMOS + LABS


def _id(p):
    return str(p.relative_to(REPO))


def test_course_has_notebooks():
    assert DEMOS, "no demo notebooks found under modules/"
    assert LABS, "no lab sources found under solutions/"


@pytest.mark.parametrize("py", ALL, ids=_id)
def test_pair_in_sync(py):
    ipynb = py.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb} is missing: run `make notebooks` (demos) or `make labs` (labs)"
    assert nbtools.cell_signature(nbtools.read_py(py)) == nbtools.cell_signature(nbtools.read_ipynb(ipynb)), (
        f"{py.name} and {ipynb.name} differ: run `make notebooks NB={_id(py)}` or `make labs`"
    )


@pytest.mark.parametrize("py", ALL, ids=_id)
def test_colab_cells_current(py):
    text = py.read_text()
    assert nbtools.stamp_text(py, text) == text, f"stale Colab cells: run `python -m coursekit.nbtools stamp {_id(py)}`"


@pytest.mark.parametrize("py", DEMOS, ids=_id)
def test_demo_executed_cleanly(py):
    nb = json.loads(py.with_suffix(".ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    assert code
    never_run = [i for i, c in enumerate(code) if c.get("execution_count") is None]
    assert not never_run, f"code cells {never_run} were never executed: run `make notebooks NB={_id(py)}`"
    counts = [c["execution_count"] for c in code]
    assert counts == list(range(1, len(code) + 1)), "cells were executed out of order"
    for c in code:
        for out in c.get("outputs", []):
            assert out.get("name") != "stderr", f"stderr in stored outputs: {''.join(out.get('text', ''))[:300]}"
            assert out["output_type"] != "error", f"an error is stored: {out.get('ename')}: {out.get('evalue')}"


def _stored_seconds(py) -> list[float]:
    return nbtools.cell_seconds(json.loads(py.with_suffix(".ipynb").read_text()))


@pytest.mark.parametrize("py", DEMOS, ids=_id)
def test_demo_stored_timing_within_budget(py):
    """The stored outputs prove the budget: each code cell carries nbclient's timing, and the cells
    together took at most 60 s on the 2-core machine that stored them (make notebooks refuses a busy one)."""
    seconds = _stored_seconds(py)
    untimed = [i for i, s in enumerate(seconds) if s != s]
    assert not untimed, f"code cells {untimed} carry no execution timing: run `make notebooks NB={_id(py)}`"
    assert sum(seconds) <= nbtools.DEMO_BUDGET_S, (
        f"{_id(py)}: stored cells took {sum(seconds):.1f} s, over the {nbtools.DEMO_BUDGET_S:.0f} s budget "
        f"(slowest cell {max(seconds):.1f} s)")


def test_demo_stored_timing_median():
    """Most demos leave room: the median stored total is at most 45 s."""
    import statistics

    totals = [sum(_stored_seconds(py)) for py in DEMOS]
    assert all(t == t for t in totals), "a demo carries no timing (see test_demo_stored_timing_within_budget)"
    assert statistics.median(totals) <= 45.0, f"median stored demo time {statistics.median(totals):.1f} s > 45 s"


def test_cpu_dependent_demos_are_rerun_with_avx2_kernels():
    """A demo that marks CPU-dependent values with "≈" (masked by nbval) is in nbtools.AVX2_DEMOS, so
    `make test` proves on every change that the mask is enough on an AVX2 CPU; the list names real demos."""
    import re

    demos = {_id(py) for py in DEMOS}
    assert set(nbtools.AVX2_DEMOS) <= demos, set(nbtools.AVX2_DEMOS) - demos
    marked = re.compile(r"≈(-?\d|'|\"|\[)")
    for py in DEMOS:
        text = "".join("".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
                       for c in json.loads(py.with_suffix(".ipynb").read_text())["cells"] for o in c.get("outputs", []))
        if marked.search(text):
            assert _id(py) in nbtools.AVX2_DEMOS, f"{_id(py)} prints CPU-dependent values (≈) but is not in AVX2_DEMOS"


@pytest.mark.skipif(not has_avx512(), reason="needs an AVX-512 CPU (the AVX2 copies are not collected without)")
def test_avx2_env_selects_the_avx2_kernels():
    """The AVX2 copies are a different run: torch started with AVX2_ENV dispatches to its AVX2 kernels."""
    import os
    import subprocess
    import sys

    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    env = {k: v for k, v in os.environ.items() if k not in nbtools.AVX2_ENV}
    native = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    lowered = subprocess.run([sys.executable, "-c", code], env={**env, **nbtools.AVX2_ENV}, capture_output=True,
                             text=True, check=True)
    assert native.stdout.strip() == "AVX512" and lowered.stdout.strip() == "AVX2", (native.stdout, lowered.stdout)


def test_cell_seconds_reads_nbclient_timing():
    nb = {"cells": [
        {"cell_type": "markdown", "metadata": {}},
        {"cell_type": "code", "source": "x = 1", "metadata": {"execution": {
            "iopub.execute_input": "2026-12-03T10:00:00.250Z", "shell.execute_reply": "2026-12-03T10:00:02.000Z"}}},
        {"cell_type": "code", "source": ["y = ", "2"], "metadata": {}},
        {"cell_type": "code", "source": "  \n", "metadata": {}},  # empty: nbclient skips it, so does the sum
    ]}
    first, second = nbtools.cell_seconds(nb)
    assert first == pytest.approx(1.75) and second != second  # nan: never timed


@pytest.mark.parametrize("py", DEMOS, ids=_id)
def test_demo_runs_as_plain_script(py):
    """A demo's .py must run with plain `python` (on a GPU box without Jupyter): no IPython magics
    or Jupyter-only imports outside the Colab setup cell."""
    tree = ast.parse(py.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "get_ipython":
            pytest.fail(f"{_id(py)}:{node.lineno}: get_ipython() does not exist in a plain script")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            bad = [n for n in names if n.split(".")[0] in {"IPython", "ipywidgets"}]
            assert not bad, f"{_id(py)}:{node.lineno}: import {bad} at top level; use llmcourse helpers that degrade outside Jupyter"


@pytest.mark.parametrize("py", DEMOS, ids=_id)
def test_demo_structure(py):
    """A demo is a story: a title, learning objectives, a summary and things to try, references."""
    text = py.read_text().lower()
    for needle in ("objectives", "try it yourself", "references"):
        assert needle in text, f"{_id(py)} has no '{needle}' section"


@pytest.mark.parametrize("module", sorted(p for p in (REPO / "modules").iterdir() if p.is_dir()), ids=lambda p: p.name)
def test_module_readme_has_claims_table(module):
    readme = module / "README.md"
    assert readme.exists(), f"{module.name} has no README.md"
    text = readme.read_text()
    assert "| Claim" in text or "| claim" in text, f"{readme} has no claims table"
    for demo in module.glob("[0-9]*.py"):
        assert demo.stem in text, f"{readme} does not mention {demo.name}"


def test_readme_module_map_is_true():
    """The top-level README's module map names exactly the demos, the lab and existing helper modules."""
    import re

    rows = [line for line in (REPO / "README.md").read_text().splitlines() if re.match(r"\| \d ", line)]
    modules = sorted(p for p in (REPO / "modules").iterdir() if p.is_dir())
    assert len(rows) == len(modules), f"{len(rows)} module rows for {len(modules)} module folders"
    for row, folder in zip(rows, modules):
        _, demos, lab, helpers = (cell.strip() for cell in row.strip("|").split("|"))
        named = re.findall(r"`([^`]+)`", demos)
        assert named == [p.stem for p in sorted(folder.glob("[0-9][0-9]_*.py"))], (folder.name, named)
        (lab_name,) = re.findall(r"`([^`]+)`", lab)
        assert (REPO / "labs" / lab_name).is_dir() and (REPO / "solutions" / lab_name).is_dir(), lab_name
        for helper in re.findall(r"`([^`]+)`", helpers):
            assert (REPO / "shared" / "llmcourse" / f"{helper}.py").is_file(), helper


def test_sync_text_copies_markdown_and_keeps_outputs(tmp_path):
    py = tmp_path / "01_demo.py"
    py.write_text("# %% [markdown]\n# Old text\n\n# %%\nprint(1)\n")
    nb = nbtools.read_py(py)
    import nbformat

    nb.cells[1]["outputs"] = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    nb.cells[1]["execution_count"] = 1
    nbtools.write_ipynb(nb, py.with_suffix(".ipynb"))
    assert not nbtools.sync_text(py)  # nothing to do
    py.write_text("# %% [markdown]\n# New text\n\n# %%\nprint(1)\n")
    assert nbtools.sync_text(py)
    stored = nbtools.read_ipynb(py.with_suffix(".ipynb"))
    assert stored.cells[0].source == "New text" and stored.cells[1].outputs[0]["text"] == "1\n"
    py.write_text("# %% [markdown]\n# New text\n\n# %%\nprint(2)\n")
    before = py.with_suffix(".ipynb").read_text()
    with pytest.raises(ValueError, match="code cells differ"):
        nbtools.sync_text(py)
    assert py.with_suffix(".ipynb").read_text() == before


def test_schedule_estimates_follow_the_stored_timings():
    """conftest orders xdist groups longest first from these estimates: a demo with an AVX2 copy counts
    twice, unknown groups count nothing, and the grading groups use their measured seconds."""
    import math

    from conftest import GROUP_SECONDS, group_cost, has_avx512

    avx2 = next(p for p in nbtools.AVX2_DEMOS)
    plain = next(p.relative_to(REPO).as_posix() for p in nbtools.demo_sources(REPO)
                 if p.relative_to(REPO).as_posix() not in nbtools.AVX2_DEMOS)
    for rel, copies in ((avx2, 2 if has_avx512() else 1), (plain, 1)):
        ipynb = Path(rel).with_suffix(".ipynb").as_posix()
        stored = sum(s for s in nbtools.cell_seconds(nbtools.read_ipynb(REPO / ipynb)) if not math.isnan(s))
        assert group_cost(ipynb) == pytest.approx(2 * (stored + 3.0) * copies)
    assert group_cost("grading-lab2_fine_tuning") == GROUP_SECONDS["grading-lab2_fine_tuning"]
    assert group_cost("tests/no_such_file.py") == 0.0
