"""Grading that survives a real class: every scenario of ``tests/grading/scenarios.py`` (what students
actually hand in) graded in one batch through ``grade_class``, the code behind ``make grade``, on the
fixture lab. Each submission must get exactly its expected score on every test cell, with the reasons,
notes and review flags a person needs; the batch writes a CSV row and a feedback page for every student,
and no feedback page shows a hidden test.

The sandbox (bubblewrap) is installed by ``make test``; where it cannot be, the sandbox scenario is
skipped with a loud message and everything else still runs unsandboxed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import warnings
from pathlib import Path

import pytest

from coursekit import cgroups, grading, nbtools, sandbox

from conftest import REPO

sys.path.insert(0, str(REPO / "tests" / "grading"))
import scenarios

FIXTURE = REPO / "tests" / "grading" / "fixture_course"
LAB = scenarios.LAB
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("grading-fixture")]
BWRAP_PROBLEM = sandbox.bwrap_problem()
if BWRAP_PROBLEM:
    warnings.warn(f"\n\n{'!' * 78}\nNO SANDBOX FOR THE GRADING TESTS: {BWRAP_PROBLEM}\n"
                  f"The sandbox scenario is skipped; the others run unsandboxed.\n{'!' * 78}\n", stacklevel=1)
_PROBE = cgroups.create(1 << 30, 64)  # which cgroup controllers this machine lets the grader use
_PROBE.remove()
CGROUP_MISSING = dict(_PROBE.missing)
if CGROUP_MISSING:
    warnings.warn(f"\n\n{'!' * 78}\nNO CGROUP CONTROLLERS {sorted(CGROUP_MISSING)} FOR THE GRADING TESTS: "
                  f"{CGROUP_MISSING}\nThe scenarios that are only safe with them are skipped.\n{'!' * 78}\n",
                  stacklevel=1)


def runnable(scenario: scenarios.Scenario) -> bool:
    """Whether this machine has what the scenario needs (bubblewrap, a cgroup controller)."""
    return not (scenario.needs_bwrap and BWRAP_PROBLEM) and scenario.needs_cgroup not in CGROUP_MISSING


HONEST = {"honest", "untouched", "honest_wrong", "edited_tests", "deleted_tests", "duplicated_cells", "infinite_loops",
          "memory_hog", "stderr_noise", "extra_files", "colab", "colab_wrong", "vscode"}
# Short limits keep the loops and crashes quick; they are generous for cells that take milliseconds.
OPTIONS = grading.Options(cell_timeout=10.0, notebook_timeout=90.0, memory_gib=2.0, processes=128, jobs=2,
                          sandbox="none" if BWRAP_PROBLEM else "bwrap")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    return grading.scratch_course(REPO, tmp_path_factory.mktemp("fixture") / "course", FIXTURE / "solutions")


@pytest.fixture(scope="module")
def batch(course, tmp_path_factory):
    """Every scenario graded at once, as ``make grade`` would: (results by student, csv rows, out, paths)."""
    base = tmp_path_factory.mktemp("class")
    submissions, out = base / "submissions", base / "grades"
    targets = {"solution": str(FIXTURE / "solutions" / LAB / f"{LAB}.py"),
               "source_ipynb": str(course / "solutions" / LAB / f"{LAB}.ipynb"),
               "gradebook": str(course / "gradebook.db"),
               "other": str(submissions / "honest" / f"{LAB}.ipynb"),
               "grades": str(out / "grades.csv")}
    ctx = scenarios.Context(json.loads((course / "labs" / LAB / f"{LAB}.ipynb").read_text()),
                            grading.answers_from_solution(FIXTURE / "solutions" / LAB / f"{LAB}.py"), targets)
    for student, scenario in scenarios.SCENARIOS.items():
        if not runnable(scenario):
            continue
        for name, data in scenario.build(ctx).items():
            (submissions / student).mkdir(parents=True, exist_ok=True)
            (submissions / student / name).write_bytes(data)
    protected = {key: _sha(Path(targets[key])) for key in ("gradebook", "other", "solution")}
    results = grading.grade_class(REPO, submissions, out, OPTIONS, course=course)
    with open(out / "grades.csv") as fh:
        rows = {row["student"]: row for row in csv.DictReader(fh)}
    return {r.student: r for r in results}, rows, out, targets, protected


def _check(result: grading.LabResult, scenario: scenarios.Scenario) -> None:
    if scenario.expected is None:
        assert result.error, f"{result.student}: expected an error, got scores {result.scores}"
        assert scenario.error in result.error, f"{result.student}: error {result.error!r}"
        return
    assert not result.error, f"{result.student}: not graded: {result.error}"
    assert result.scores == scenario.expected, (
        f"{result.student}: expected {scenario.expected}\n got {result.scores}\n reasons {result.reasons}\n"
        f" notes {result.notes}")
    for gid, words in scenario.reasons.items():
        assert words in result.reasons.get(gid, ""), f"{result.student}/{gid}: reason {result.reasons.get(gid)!r}"
    if scenario.note:
        assert any(scenario.note in n for n in result.notes), f"{result.student}: notes {result.notes}"
    if scenario.review:
        assert any(scenario.review in f for f in result.review), f"{result.student}: review flags {result.review}"
    if result.student in HONEST:  # an honest student is never flagged for review
        assert not result.review, f"{result.student}: flagged for review: {result.review}"


@pytest.mark.parametrize("student", [s for s in scenarios.SCENARIOS if s != "sandbox_escape"])  # (tested below)
def test_scenario(student, batch):
    scenario = scenarios.SCENARIOS[student]
    if scenario.needs_bwrap and BWRAP_PROBLEM:
        pytest.skip(f"NO SANDBOX: {BWRAP_PROBLEM}")
    if not runnable(scenario):
        pytest.skip(f"{student} needs the cgroup controller {scenario.needs_cgroup}: "
                    f"{CGROUP_MISSING.get(scenario.needs_cgroup)}")
    results, rows, *_ = batch
    scenario = scenarios.SCENARIOS[student]
    _check(results[student], scenario)
    row = rows[student]  # the CSV says the same
    if scenario.expected is not None:
        assert float(row["score"]) == sum(scenario.expected.values()) and row["status"] == "graded"
        assert all(float(row[gid]) == pts for gid, pts in scenario.expected.items())
    else:
        assert row["status"].startswith("error") and float(row["score"]) == 0


def test_sandbox_keeps_solutions_and_grades_out_of_reach(batch):
    """Scenario 8: the submission searches the disk for the solution and writes to the gradebook,
    the grades and another student's notebook. In the sandbox it finds nothing and changes nothing."""
    if BWRAP_PROBLEM:
        pytest.skip(f"NO SANDBOX: {BWRAP_PROBLEM}")
    results, _, out, targets, protected = batch
    _check(results["sandbox_escape"], scenarios.SCENARIOS["sandbox_escape"])
    assert "nowhere to be found" in results["sandbox_escape"].reasons["softmax_test"]
    assert results["sandbox_escape"].sandbox == "bwrap"
    for key, digest in protected.items():
        assert _sha(Path(targets[key])) == digest, f"the sandboxed submission changed {targets[key]}"
    for folder in {Path(p).parent for p in targets.values()} | {out}:
        assert not (folder / "PWNED").exists(), f"the sandboxed submission wrote into {folder}"
    with open(out / "grades.csv") as fh:
        assert "mallory" not in fh.read()


def test_notebook_wall_clock_cap(course, tmp_path):
    """Scenario 4: a notebook whose every answer loops forever stops at its wall-clock cap."""
    ctx = scenarios.Context(json.loads((course / "labs" / LAB / f"{LAB}.ipynb").read_text()), {})
    folder = tmp_path / "subs" / "looper"
    folder.mkdir(parents=True)
    for name, data in scenarios.CAP_SCENARIO.build(ctx).items():
        (folder / name).write_bytes(data)
    options = grading.Options(cell_timeout=3.0, notebook_timeout=8.0, memory_gib=2.0, jobs=1, sandbox=OPTIONS.sandbox)
    (result,) = grading.grade_class(REPO, tmp_path / "subs", tmp_path / "out", options, course=course)
    _check(result, scenarios.CAP_SCENARIO)
    assert result.seconds < 8.0 + 15.0, f"the cap of 8 s was overrun: {result.seconds} s"


def test_every_student_gets_a_row_and_a_feedback_page_without_hidden_tests(batch):
    results, rows, out, *_ = batch
    assert set(rows) == set(results) >= {s for s, sc in scenarios.SCENARIOS.items() if runnable(sc)}
    source = nbtools.read_py(FIXTURE / "solutions" / LAB / f"{LAB}.py")
    hidden = [line.strip() for c in source.cells for block in c.source.split("### BEGIN HIDDEN TESTS")[1:]
              for line in block.split("### END HIDDEN TESTS")[0].splitlines() if len(line.strip()) > 20]
    solutions = [line.strip() for c in source.cells for block in c.source.split("### BEGIN SOLUTION")[1:]
                 for line in block.split("### END SOLUTION")[0].splitlines() if len(line.strip()) > 20]
    assert hidden and solutions
    for student in results:
        page = (out / "feedback" / student / f"{LAB}.html").read_text()
        submitted = "".join(p.read_text(errors="replace") for p in (out.parent / "submissions" / student).iterdir())
        assert "Score:" in page
        for line in hidden:
            assert line not in page, f"{student}'s feedback shows a hidden test: {line}"
        for line in solutions:  # students see their own code, never the instructor's solution
            assert line not in page or json.dumps(line)[1:-1] in submitted, f"{student}'s feedback shows: {line}"
    assert "visible part" in (out / "feedback" / "honest" / f"{LAB}.html").read_text()


def _course_config():
    """nbgrader_config.py as a traitlets Config (what `nbgrader validate` reads in the course folder)."""
    from traitlets.config import Config

    config = Config()
    path = REPO / "nbgrader_config.py"
    exec(compile(path.read_text(), str(path), "exec"), {"get_config": lambda: config})
    return config


def test_student_feedback_before_submitting_agrees_with_the_grader(batch, course):
    """nbgrader validate (the Validate button) on honest submissions: every test cell it reports as
    failing loses its points, and a submission with full marks validates cleanly."""
    from nbgrader.validator import Validator

    results, _, out, *_ = batch
    submissions = out.parent / "submissions"
    release = json.loads((course / "labs" / LAB / f"{LAB}.ipynb").read_text())
    by_source = {"".join(c["source"]).strip(): c["metadata"]["nbgrader"]["grade_id"] for c in release["cells"]
                 if c["metadata"].get("nbgrader", {}).get("grade")}
    for student in ("honest", "honest_wrong", "untouched"):
        validator = Validator(config=_course_config())  # the course's Execute.timeout, not nbgrader's 30 s
        validator.ignore_checksums = True
        report = validator.validate(str(submissions / student / f"{LAB}.ipynb"))
        failed = {by_source[c["source"]] for c in report.get("failed", []) if c["source"] in by_source}
        result = results[student]
        lost = {gid for gid, pts in result.scores.items() if pts < result.max_scores[gid]}
        # Validate only runs the visible tests, so in general failed <= lost; these three submissions'
        # mistakes are all visible ones, so both must say exactly the same.
        assert failed == lost, f"{student}: validate fails {failed}, the grader takes points for {lost}"
        if not lost:
            assert not report.get("failed"), f"{student}: full marks but validate reports {report['failed']}"
