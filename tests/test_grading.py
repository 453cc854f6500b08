"""The grading pipeline end to end, for every lab, in a scratch copy of the course, in one batch per lab:

* the solution gets full marks, and so does a copy whose every graded call writes progress bars and
  warnings to stderr (library noise costs nothing);
* the untouched student release gets 0 points and does not crash the batch;
* each wrong submission (common mistakes, described in tests/labs/<lab>.py) loses exactly the
  points of the parts it gets wrong and keeps every other point;
* the same wrong answers with the comparison helpers monkeypatched (torch.allclose, torch.isclose,
  torch.testing.assert_close, numpy's helpers, Tensor methods) and the lab's own test helpers overridden
  gain no point;
* nbgrader validate (what a student runs before submitting) passes the solution, which gets full marks
  (validate runs only the visible tests; the fixture lab checks it against wrong submissions too).

The grading scenarios themselves (timeouts, crashes, sandbox, broken files...) are tested once on a fast
fixture lab in tests/test_grading_scenarios.py.
"""

from __future__ import annotations

import ast
import shutil

import pytest

from coursekit import grading, nbtools, sandbox

from conftest import REPO, lab_spec

LABS = nbtools.lab_ids(REPO)
# bwrap where it runs (make test installs it); elsewhere the pipeline is still checked, unsandboxed, by choice.
SANDBOX = "none" if sandbox.bwrap_problem() else "bwrap"

# Prepended to every answer cell of the solution: noise on stderr at definition time and, through a
# wrapper, inside every graded call (the test cells' own cells then write to stderr too).
NOISE = '''import functools as _functools, sys as _sys, warnings as _warnings
from tqdm.auto import tqdm as _tqdm


def _noisy(fn):
    @_functools.wraps(fn)
    def wrapper(*args, **kwargs):
        for _ in _tqdm(range(2), desc="library progress bar"):
            pass
        _warnings.warn("a library warning", UserWarning)
        print("library noise on stderr", file=_sys.stderr)
        return fn(*args, **kwargs)
    return wrapper


print("noise while defining the answer", file=_sys.stderr)
'''

# Prepended to the first answer cell of a wrong submission: everything a test compares with says "equal".
PATCHES = '''import numpy as _np, torch as _torch
_yes = lambda *args, **kwargs: True
_none = lambda *args, **kwargs: None
_torch.allclose = _torch.equal = _yes
_torch.isclose = lambda a, b, *args, **kwargs: _torch.ones_like(_torch.as_tensor(a), dtype=_torch.bool)
_torch.testing.assert_close = _none
_torch.Tensor.allclose = _torch.Tensor.equal = _yes
_torch.Tensor.all = lambda self, *args, **kwargs: _torch.tensor(True)
_np.allclose = _np.array_equal = _yes
_np.testing.assert_allclose = _np.testing.assert_array_equal = _none
'''


def wrong_submissions(lab: str) -> dict:
    path = REPO / "tests" / "labs" / f"{lab}.py"
    assert path.exists(), f"{path} must describe at least three wrong submissions for {lab}"
    return lab_spec(lab).WRONG


def _top_level(source: str) -> tuple[list[str], list[str]]:
    """(functions, classes) defined at the top level of a cell (none for a cell with magics)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return [], []
    funcs = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    return funcs, classes


def noisy(answers: dict[str, str]) -> dict[str, str]:
    """The answers with stderr noise around every function and every class's forward."""
    out = {}
    for gid, source in answers.items():
        funcs, classes = _top_level(source)
        wrap = [f"{name} = _noisy({name})" for name in funcs]
        wrap += [f"if hasattr({name}, 'forward'):\n    {name}.forward = _noisy({name}.forward)" for name in classes]
        out[gid] = NOISE + "\n" + source + "\n\n" + "\n".join(wrap) + "\n"
    return out


def hostile(answers: dict[str, str], solution_nb) -> dict[str, str]:
    """The answers with PATCHES first and every helper function of the lab's setup cells overridden."""
    helpers = []
    for cell in solution_nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "code" and not meta.get("solution") and not meta.get("grade"):
            helpers += _top_level(cell.source)[0]
    first = next(iter(answers))
    overrides = "".join(f"def {name}(*args, **kwargs):\n    return None\n\n" for name in helpers)
    return {**answers, first: PATCHES + overrides + answers[first]}


def _course_config():
    """nbgrader_config.py as a traitlets Config (what `nbgrader validate` reads in the course folder)."""
    from traitlets.config import Config

    config = Config()
    path = REPO / "nbgrader_config.py"
    exec(compile(path.read_text(), str(path), "exec"), {"get_config": lambda: config})
    return config


def _validate_failures(notebook, release_nb) -> set[str]:
    """The test cells that nbgrader validate reports as failing."""
    from nbgrader.validator import Validator

    by_source = {c.source.strip(): c.metadata["nbgrader"]["grade_id"] for c in release_nb.cells
                 if c.metadata.get("nbgrader", {}).get("grade")}
    validator = Validator(config=_course_config())  # the course's Execute.timeout, not nbgrader's 30 s
    validator.ignore_checksums = True
    report = validator.validate(str(notebook))
    assert not report.get("type_changed") and not report.get("changed"), report
    return {by_source.get(c["source"], c["source"][:60]) for c in report.get("failed", [])}


@pytest.mark.slow
@pytest.mark.parametrize("lab", [pytest.param(lab, marks=pytest.mark.xdist_group(f"grading-{lab}")) for lab in LABS])
def test_grading_pipeline(lab, tmp_path):
    wrong = wrong_submissions(lab)
    assert len(wrong) >= 3, f"{lab}: at least three wrong submissions are needed"
    course = grading.scratch_course(REPO, tmp_path / "course", labs=[lab])
    release = course / "labs" / lab / f"{lab}.ipynb"
    solution = grading.answers_from_solution(REPO / "solutions" / lab / f"{lab}.py")

    def submit(student, answers):
        return grading.make_submission(release, answers, course / "submitted" / student / lab / f"{lab}.ipynb")

    submit("solution", solution)
    submit("solution_noisy", noisy(solution))
    target = course / "submitted" / "untouched" / lab / f"{lab}.ipynb"
    target.parent.mkdir(parents=True)
    shutil.copy2(release, target)
    for name, case in wrong.items():
        assert set(case["answers"]) <= set(solution), f"{name}: unknown answer cells {set(case['answers']) - set(solution)}"
        submit(f"wrong_{name}", {**solution, **case["answers"]})
    first_wrong, first_case = next(iter(wrong.items()))
    source_nb = nbtools.read_py(REPO / "solutions" / lab / f"{lab}.py")
    submit("hostile", hostile({**solution, **first_case["answers"]}, source_nb))

    results = grading.autograde(course, lab, grading.default_options(REPO, sandbox=SANDBOX))

    full = results["solution"]
    assert full.max_scores and full.scores == full.max_scores, f"solution lost points: {full.reasons}"
    untouched = results["untouched"]
    assert not untouched.error and set(untouched.scores) == set(full.max_scores)
    assert untouched.total == 0, f"the untouched release scored {untouched.scores}"
    for name, case in wrong.items():
        assert set(case["fails"]) <= set(full.max_scores), f"{name}: unknown test cells {case['fails']}"
        expected = {gid: 0.0 if gid in case["fails"] else pts for gid, pts in full.max_scores.items()}
        got = results[f"wrong_{name}"]
        assert got.scores == expected, f"wrong submission '{name}': expected {expected}, got {got.scores} ({got.reasons})"
    gained = {gid for gid, pts in results["hostile"].scores.items() if pts > results[f"wrong_{first_wrong}"].scores[gid]}
    assert not gained, f"monkeypatching gained points on {gained}: {results['hostile'].scores}"
    assert results["hostile"].review, "the patches were not flagged for review"

    noisy_result = results["solution_noisy"]
    assert noisy_result.scores == full.max_scores, f"stderr noise cost points: {noisy_result.reasons}"

    # What a student sees before submitting (nbgrader validate runs the visible tests) agrees with the
    # grade: the solution, full marks here, validates cleanly. (Wrong submissions are compared with
    # validate on the fixture lab, tests/test_grading_scenarios.py: one more kernel run per lab here.)
    failed = _validate_failures(course / "submitted" / "solution" / lab / f"{lab}.ipynb", nbtools.read_ipynb(release))
    assert not failed, f"the solution gets full marks, yet validate reports {failed}"
