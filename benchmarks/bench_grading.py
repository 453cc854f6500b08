"""How long grading a class takes, and what the sandbox costs.

For every lab (and the grading tests' fixture lab), a class of ``--n`` submissions (default 30: the
solution, the untouched release and the wrong submissions of ``tests/labs/<lab>.py``, in turn) is graded
twice with ``coursekit.grading`` on ``--jobs`` workers: once unsandboxed (``--sandbox none``: one process
per notebook with the same limits and the same in-process guard) and once in bubblewrap. The table shows
the wall-clock time of each run, the median time of one notebook, the sandbox's overhead (goal: at most
20%), and the median time to start one worker in each mode (the part of the overhead that does not
depend on the machine's load). Both runs must give every student the same scores.

    python benchmarks/bench_grading.py [--n 30] [--jobs 2] [--labs lab1_transformers,...]

On a shared machine the numbers move with the load: compare the two columns of one row, not rows of
different runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from coursekit import grading, nbtools, sandbox

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "grading" / "fixture_course"


def variants(lab: str, source: Path) -> dict[str, dict[str, str] | None]:
    """name -> answers (None: the untouched release) for a class of this lab."""
    solution = grading.answers_from_solution(source)
    out: dict[str, dict[str, str] | None] = {"solution": solution, "untouched": None}
    spec_path = REPO / "tests" / "labs" / f"{lab}.py"
    if spec_path.exists():
        spec = importlib.util.spec_from_file_location(f"labspec_{lab}", spec_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        out.update({name: {**solution, **case["answers"]} for name, case in module.WRONG.items()})
    return out


def make_class(course: Path, lab: str, source: Path, n: int, dest: Path) -> dict[str, Path]:
    release = course / "labs" / lab / f"{lab}.ipynb"
    kinds = list(variants(lab, source).items())
    notebooks = {}
    for i in range(n):
        name, answers = kinds[i % len(kinds)]
        path = dest / f"student{i:02d}_{name}" / f"{lab}.ipynb"
        if answers is None:
            path.parent.mkdir(parents=True)
            shutil.copy2(release, path)
        else:
            grading.make_submission(release, answers, path)
        notebooks[path.parent.name] = path
    return notebooks


def startup(spec: grading.LabSpec, mode: str, workdir: Path, repeat: int = 8) -> float:
    """Median seconds to start a worker and have it import what the lab's instructor cells import."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        worker = grading.Worker(spec, workdir, grading.Options(jobs=1, sandbox=mode), mode)
        worker.receive(120)
        times.append(time.perf_counter() - start)
        worker.close()
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_grading.py")
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=0)
    parser.add_argument("--labs", default="", help="comma-separated lab ids (default: every lab + fixture_lab)")
    args = parser.parse_args(argv)
    problem = sandbox.bwrap_problem()
    modes = ["none"] + ([] if problem else ["bwrap"])
    if problem:
        print(f"  WARNING: no sandbox ({problem}); only the unsandboxed time is measured")
    wanted = [s for s in args.labs.split(",") if s]
    courses = [(REPO / "solutions", lab) for lab in nbtools.lab_ids(REPO)] + [(FIXTURE / "solutions", "fixture_lab")]
    options = grading.default_options(REPO, jobs=args.jobs)
    print(f"  {args.n} submissions per lab, {options.workers} at a time, cell timeout {options.cell_timeout:.0f} s, "
          f"{os.cpu_count()} CPUs")
    print(f"  {'lab':<24} {'unsandboxed':>12} {'sandboxed':>10} {'overhead':>9} {'per notebook':>13} "
          f"{'worker start (none / bwrap)':>28}  scores")
    failed = 0
    for solutions, lab in courses:
        if wanted and lab not in wanted:
            continue
        with tempfile.TemporaryDirectory(prefix="bench-grading-") as tmp:
            course = grading.scratch_course(REPO, Path(tmp) / "course", solutions)
            notebooks = make_class(course, lab, solutions / lab / f"{lab}.py", args.n, Path(tmp) / "class")
            spec = grading.LabSpec.load(course, lab)
            starts = {mode: startup(spec, mode, Path(tmp)) for mode in modes}
            wall = {m: 0.0 for m in modes}
            seconds: dict[str, list[float]] = {m: [] for m in modes}
            totals: dict[str, dict] = {m: {} for m in modes}
            # Half the class in each order (none, bwrap, bwrap, none), so that a change of load on a
            # shared machine weighs on both modes alike.
            names = sorted(notebooks)
            halves = [names[: len(names) // 2], names[len(names) // 2:]]
            for half, order in zip(halves, (modes, modes[::-1])):
                for mode in order:
                    opts = grading.Options(**{**options.__dict__, "sandbox": mode})
                    start = time.perf_counter()
                    results = grading.grade_many(spec, {n: notebooks[n] for n in half}, opts)
                    wall[mode] += time.perf_counter() - start
                    seconds[mode] += [r.seconds for r in results.values()]
                    totals[mode].update({s: r.scores for s, r in results.items()})
            per = {m: statistics.median(seconds[m]) for m in modes}
        same = all(totals[m] == totals["none"] for m in modes)
        failed += not same
        sandboxed = f"{wall['bwrap']:9.1f}s" if "bwrap" in wall else "        -"
        overhead = f"{100 * (wall['bwrap'] / wall['none'] - 1):+8.0f}%" if "bwrap" in wall else "        -"
        start_s = " / ".join(f"{starts[m]:.2f} s" for m in modes)
        print(f"  {lab:<24} {wall['none']:11.1f}s {sandboxed} {overhead} "
              f"{per[modes[-1]]:12.1f}s {start_s:>28}  {'identical' if same else 'DIFFERENT'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
