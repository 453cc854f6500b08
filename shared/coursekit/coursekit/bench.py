"""``make bench``: the course's time budgets and benchmarks, printed (never enforced by timed tests).

1. every demo notebook's ``.py`` run as a plain script (budget: 60 s each on a 2-core CPU);
2. every lab's solution notebook executed (budget: ``LAB_BUDGET_S``);
3. every benchmark script ``benchmarks/bench_*.py`` (each prints its own table).

    python -m coursekit.bench [--only demos|labs|scripts] [--filter SUBSTRING]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from . import nbtools

DEMO_BUDGET_S = 60.0
LAB_BUDGET_S = {"lab1_transformers": 30.0}  # labs not listed get DEFAULT_LAB_BUDGET_S
DEFAULT_LAB_BUDGET_S = 45.0


def _env() -> dict[str, str]:
    env = nbtools.kernel_env()
    env.update(MPLBACKEND="Agg", LLMCOURSE_NO_PROGRESS="1", PYTHONUNBUFFERED="1")
    return env


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_script(path: Path, timeout: float = 900) -> tuple[float, float, str]:
    """Run a demo's .py with plain python in its folder; return (wall seconds, CPU seconds of all its
    threads, '' or the error tail). On a busy machine the wall time grows, the CPU time hardly does."""
    start, cpu = time.perf_counter(), _children_cpu()
    proc = subprocess.run([sys.executable, path.name], cwd=path.parent, env=_env(), capture_output=True,
                          text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    return seconds, _children_cpu() - cpu, "" if proc.returncode == 0 else (proc.stderr or proc.stdout)[-800:]


def time_lab(lab_py: Path, timeout: int = 600) -> tuple[float, str]:
    """Execute a lab's solution notebook (solutions included, hidden tests run) in a fresh kernel."""
    from nbclient import NotebookClient

    nb = nbtools.read_py(lab_py)
    start = time.perf_counter()
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(lab_py.parent)}}).execute()
        error = ""
    except Exception as exc:  # noqa: BLE001 - report and carry on with the other labs
        error = f"{type(exc).__name__}: {str(exc)[-600:]}"
    return time.perf_counter() - start, error


def _row(name: str, seconds: float, budget: float | None, error: str, cpu: float | None = None) -> str:
    status = "FAILED" if error else ("ok" if budget is None or seconds <= budget else "OVER BUDGET")
    budget_s = f"{budget:6.0f}" if budget else "     -"
    cpu_s = f"  (cpu {cpu:6.1f} s)" if cpu is not None else ""
    return f"  {name:<58} {seconds:7.1f} s{cpu_s}  budget {budget_s} s  {status}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coursekit.bench")
    parser.add_argument("--only", choices=["demos", "labs", "scripts"])
    parser.add_argument("--filter", default="")
    args = parser.parse_args(argv)
    root = nbtools.root()
    os.environ.update(_env())
    print(f"coursekit bench on {platform.node()} ({os.cpu_count()} CPUs, Python {platform.python_version()})")
    over = 0
    if args.only in (None, "demos"):
        print(f"\nDemo notebooks, each run as a plain script (wall time; cpu = all threads, {os.cpu_count()} cores):")
        for py in nbtools.demo_sources(root):
            if args.filter in str(py):
                seconds, cpu, err = time_script(py)
                over += bool(err) or seconds > DEMO_BUDGET_S
                print(_row(str(py.relative_to(root)), seconds, DEMO_BUDGET_S, err, cpu), flush=True)
                if err:
                    print("    " + err.replace("\n", "\n    "))
    if args.only in (None, "labs"):
        print("\nLab solutions, executed with their hidden tests:")
        for py in nbtools.lab_sources(root):
            if args.filter in str(py):
                budget = LAB_BUDGET_S.get(py.stem, DEFAULT_LAB_BUDGET_S)
                seconds, err = time_lab(py)
                over += bool(err) or seconds > budget
                print(_row(str(py.relative_to(root)), seconds, budget, err), flush=True)
    if args.only in (None, "scripts"):
        for script in sorted((root / "benchmarks").glob("bench_*.py")):
            if args.filter in str(script):
                print(f"\n{script.relative_to(root)}:", flush=True)
                proc = subprocess.run([sys.executable, str(script)], cwd=root, env=_env())
                over += proc.returncode != 0
    print(f"\n{over} item(s) failed or over budget" if over else "\nall within budget")
    return 0


if __name__ == "__main__":
    sys.exit(main())
