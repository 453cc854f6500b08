"""The student labs are exactly what nbgrader generates from the instructor sources, and they leak
neither solutions nor hidden tests."""

from __future__ import annotations

import json

import pytest

from coursekit import grading, nbtools

from conftest import REPO

LABS = nbtools.lab_ids(REPO)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    return grading.scratch_course(REPO, tmp_path_factory.mktemp("course"))


def _files(base):
    return sorted(p.relative_to(base) for p in base.rglob("*") if p.is_file())


@pytest.mark.parametrize("lab", LABS)
def test_committed_lab_equals_generated(lab, generated):
    ours, theirs = REPO / "labs" / lab, generated / "labs" / lab
    assert ours.is_dir(), f"labs/{lab} is missing: run `make labs`"
    assert _files(ours) == _files(theirs), "labs/ has other files than nbgrader generates: run `make labs`"
    for rel in _files(theirs):
        assert (ours / rel).read_bytes() == (theirs / rel).read_bytes(), f"labs/{lab}/{rel} is stale: run `make labs`"


def _cells(nb_path):
    return json.loads(nb_path.read_text())["cells"]


@pytest.mark.parametrize("lab", LABS)
def test_release_hides_solutions_and_hidden_tests(lab):
    source = nbtools.read_py(REPO / "solutions" / lab / f"{lab}.py")
    release = "\n".join("".join(c["source"]) for c in _cells(REPO / "labs" / lab / f"{lab}.ipynb"))
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
        assert marker not in release
    hidden = []
    for cell in source.cells:
        parts = cell.source.split("### BEGIN HIDDEN TESTS")
        hidden += [block.split("### END HIDDEN TESTS")[0] for block in parts[1:]]
    assert hidden, f"{lab} has no hidden tests"
    for block in hidden:
        for line in block.strip().splitlines():
            if len(line.strip()) > 25:  # long enough to be specific to the hidden test
                assert line.strip() not in release, f"hidden test line leaked into the release: {line.strip()}"


@pytest.mark.parametrize("lab", LABS)
def test_lab_structure(lab):
    """Each part is an answer cell followed by graded test cells with points; ids are unique."""
    nb = nbtools.read_py(REPO / "solutions" / lab / f"{lab}.py")
    meta = [c.metadata.get("nbgrader") for c in nb.cells if c.metadata.get("nbgrader")]
    ids = [m["grade_id"] for m in meta]
    assert len(ids) == len(set(ids)), f"duplicate grade_ids in {lab}"
    tests = [m for m in meta if m.get("grade")]
    answers = [m for m in meta if m.get("solution")]
    assert 5 <= len(tests) <= 12 and answers, f"{lab}: {len(tests)} graded cells, {len(answers)} answer cells"
    assert all(m.get("points", 0) > 0 and m.get("locked") for m in tests)
