"""The grading pipeline end to end, for every lab, in a scratch copy of the course:

* the solution gets full marks;
* the untouched student release gets 0 points and does not crash the batch;
* each wrong submission (common mistakes, described in tests/labs/<lab>.py) loses exactly the
  points of the parts it gets wrong and keeps every other point.
"""

from __future__ import annotations

import importlib.util
import shutil

import pytest

from llmcourse import grading, nbtools

from conftest import REPO

LABS = nbtools.lab_ids(REPO)


def wrong_submissions(lab: str) -> dict:
    path = REPO / "tests" / "labs" / f"{lab}.py"
    assert path.exists(), f"{path} must describe at least three wrong submissions for {lab}"
    spec = importlib.util.spec_from_file_location(f"labspec_{lab}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.WRONG


@pytest.mark.slow
@pytest.mark.parametrize("lab", [pytest.param(lab, marks=pytest.mark.xdist_group(f"grading-{lab}")) for lab in LABS])
def test_grading_pipeline(lab, tmp_path):
    wrong = wrong_submissions(lab)
    assert len(wrong) >= 3, f"{lab}: at least three wrong submissions are needed"
    course = grading.scratch_course(REPO, tmp_path / "course")
    release = course / "labs" / lab / f"{lab}.ipynb"
    solution = grading.answers_from_solution(REPO / "solutions" / lab / f"{lab}.py")

    def submit(student, answers):
        grading.make_submission(release, answers, course / "submitted" / student / lab / f"{lab}.ipynb")

    submit("solution", solution)
    target = course / "submitted" / "untouched" / lab / f"{lab}.ipynb"
    target.parent.mkdir(parents=True)
    shutil.copy2(release, target)
    for name, case in wrong.items():
        assert set(case["answers"]) <= set(solution), f"{name}: unknown answer cells {set(case['answers']) - set(solution)}"
        submit(f"wrong_{name}", {**solution, **case["answers"]})

    results = grading.autograde(course, lab)

    full = results["solution"]
    assert full.max_scores and full.scores == full.max_scores, f"solution lost points: {full.scores}"
    untouched = results["untouched"]
    assert not untouched.error and set(untouched.scores) == set(full.max_scores)
    assert untouched.total == 0, f"the untouched release scored {untouched.scores}"
    for name, case in wrong.items():
        assert set(case["fails"]) <= set(full.max_scores), f"{name}: unknown test cells {case['fails']}"
        expected = {gid: 0.0 if gid in case["fails"] else pts for gid, pts in full.max_scores.items()}
        got = results[f"wrong_{name}"].scores
        assert got == expected, f"wrong submission '{name}': expected {expected}, got {got}"
