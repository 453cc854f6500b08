"""Static checks on every notebook: .py/.ipynb pairs in sync, demos executed cleanly, Colab cells
current, demos runnable as plain scripts. (nbval re-executes the demos and compares outputs.)"""

from __future__ import annotations

import ast
import json

import pytest

from llmcourse import nbtools

from conftest import REPO

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
    assert nbtools.stamp_text(py, text) == text, f"stale Colab cells: run `python -m llmcourse.nbtools stamp {_id(py)}`"


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
