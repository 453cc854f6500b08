"""Autograding with nbgrader, as the tests and ``make grade`` use it.

The course follows nbgrader's layout with two renamed folders (see ``nbgrader_config.py``):
``solutions/<lab>/`` is the instructor source, ``labs/<lab>/`` the student release, and a class's
work goes to ``submitted/<student>/<lab>/<lab>.ipynb``. Grading always happens in a scratch copy of
the course, so the repository never gains a gradebook or half-written folders.

    python -m llmcourse.grading SUBMISSIONS [--out grades]    # a folder of notebooks, or a .zip

Each student's notebook is matched to a lab by its name (``lab1_transformers*.ipynb``; a folder per
student or files named ``<student>__<lab>.ipynb``); the grades CSV has one row per student and lab.
"""

from __future__ import annotations

import argparse
import csv
import re
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from . import nbtools

_MARKER = re.compile(r"^[ \t]*### (BEGIN|END) (SOLUTION|HIDDEN TESTS)[ \t]*\n?", re.M)


@dataclass
class LabResult:
    """One student's result on one lab: score per graded cell (test cells, by grade_id)."""

    student: str
    lab: str
    scores: dict[str, float] = field(default_factory=dict)
    max_scores: dict[str, float] = field(default_factory=dict)
    error: str = ""

    @property
    def total(self) -> float:
        return sum(self.scores.values())

    @property
    def max_total(self) -> float:
        return sum(self.max_scores.values())


# ----------------------------------------------------------------------------- course copies
def scratch_course(repo: Path, dest: Path) -> Path:
    """Copy what grading needs (config, solutions) into ``dest`` and generate the labs there."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(repo / "nbgrader_config.py", dest / "nbgrader_config.py")
    shutil.copytree(repo / "solutions", dest / "solutions", dirs_exist_ok=True)
    nbtools.generate_labs(dest, db=dest / "gradebook.db")
    return dest


def answers_from_solution(lab_source: Path) -> dict[str, str]:
    """The solution of every answer cell (by grade_id), as a student would type it (no markers)."""
    nb = nbtools.read_py(lab_source) if lab_source.suffix == ".py" else nbtools.read_ipynb(lab_source)
    return {
        c.metadata["nbgrader"]["grade_id"]: _MARKER.sub("", c.source)
        for c in nb.cells
        if c.metadata.get("nbgrader", {}).get("solution")
    }


def make_submission(release_nb: Path, answers: dict[str, str], dest: Path) -> Path:
    """Write the release notebook with the given answer cells filled in (others left as stubs)."""
    import nbformat

    nb = nbtools.read_ipynb(release_nb)
    unknown = set(answers) - {c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells}
    if unknown:
        raise ValueError(f"answers for cells that {release_nb.name} does not have: {sorted(unknown)}")
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid in answers and cell.metadata["nbgrader"].get("solution"):
            cell.source = answers[gid]
    dest.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dest)
    return dest


# ----------------------------------------------------------------------------- autograde
def autograde(course_root: Path, lab: str) -> dict[str, LabResult]:
    """Run ``nbgrader autograde`` on every submission of ``lab`` and read the gradebook back."""
    from nbgrader.api import Gradebook, MissingEntry

    db = course_root / "gradebook.db"
    nbtools.nbgrader(["autograde", lab, "--force"], course_root, db=db, strict=False)
    results: dict[str, LabResult] = {}
    notebook = lab  # one notebook per lab, named like the lab
    with Gradebook(f"sqlite:///{db}") as gb:
        for student_dir in sorted((course_root / "submitted").iterdir()):
            student = student_dir.name
            result = LabResult(student, lab)
            try:
                sub = gb.find_submission_notebook(notebook, lab, student)
            except MissingEntry:
                result.error = "not graded (missing or unreadable notebook)"
            else:
                for grade in sub.grades:
                    if grade.cell.cell_type == "code" and grade.max_score:
                        result.scores[grade.name] = float(grade.score)
                        result.max_scores[grade.name] = float(grade.max_score)
            results[student] = result
    return results


def grade_notebooks(repo: Path, lab: str, notebooks: dict[str, Path], workdir: Path) -> dict[str, LabResult]:
    """Grade ``{student: notebook}`` for one lab in a scratch course under ``workdir``."""
    course = scratch_course(repo, workdir)
    for student, path in notebooks.items():
        target = course / "submitted" / student / lab / f"{lab}.ipynb"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return autograde(course, lab)


# ----------------------------------------------------------------------------- command line
def collect(submissions: Path, labs: list[str], workdir: Path) -> dict[str, dict[str, Path]]:
    """Find ``{lab: {student: notebook}}`` in a folder or zip of student notebooks."""
    if submissions.suffix == ".zip":
        unpacked = workdir / "unpacked"
        with zipfile.ZipFile(submissions) as zf:
            zf.extractall(unpacked)
        submissions = unpacked
    if not submissions.is_dir():
        raise ValueError(f"SUBMISSIONS ({submissions}) must be a folder or a .zip of notebooks")
    found: dict[str, dict[str, Path]] = {lab: {} for lab in labs}
    for nb in sorted(submissions.rglob("*.ipynb")):
        if ".ipynb_checkpoints" in nb.parts:
            continue
        lab = next((lab for lab in labs if lab in nb.name or lab in nb.parent.name), None)
        if lab is None:
            continue
        rel = nb.relative_to(submissions)
        student = rel.parts[0] if len(rel.parts) > 1 else nb.stem.split("__")[0]
        found[lab][re.sub(r"[^A-Za-z0-9_.-]", "_", student)] = nb
    return {lab: subs for lab, subs in found.items() if subs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmcourse.grading", description="Grade a class.")
    parser.add_argument("submissions", type=Path)
    parser.add_argument("--out", type=Path, default=Path("grades"))
    args = parser.parse_args(argv)
    repo = nbtools.root()
    with tempfile.TemporaryDirectory(prefix="llmcourse-grade-") as tmp:
        found = collect(args.submissions, nbtools.lab_ids(repo), Path(tmp))
        if not found:
            print(f"no lab notebooks found in {args.submissions}", file=sys.stderr)
            return 2
        rows = []
        for lab, notebooks in found.items():
            for r in grade_notebooks(repo, lab, notebooks, Path(tmp) / lab).values():
                rows.append({"student": r.student, "lab": r.lab, "score": r.total, "max_score": r.max_total,
                             **{k: v for k, v in r.scores.items()}, "error": r.error})
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "grades.csv"
    fields = ["student", "lab", "score", "max_score"] + sorted({k for r in rows for k in r} - {
        "student", "lab", "score", "max_score", "error"}) + ["error"]
    with open(out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
