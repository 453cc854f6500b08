"""The grader's parts on their own, in milliseconds: reading what students hand in, finding each
student's file in a folder or zip, cutting test cells into visible and hidden segments, the static
review flags, and the sandbox's command line."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from coursekit import grading, sandbox

from conftest import REPO

LABS = ["lab1_transformers", "lab2_fine_tuning"]


def _nb(cells: list[dict], **extra) -> dict:
    return {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5, **extra}


def _code(source, **meta) -> dict:
    return {"cell_type": "code", "source": source, "metadata": meta, "outputs": [], "execution_count": None}


# ----------------------------------------------------------------------------- read_notebook
@pytest.mark.parametrize("data, words", [
    (b"", "empty"),
    (b"   \n\t ", "only whitespace"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not text"),
    (b'{"cells": [', "invalid JSON at line 1"),
    (b'["not", "a", "notebook"]', "no list of cells"),
    (b'{"cells": "nope"}', "no list of cells"),
])
def test_unreadable_files_are_reported(tmp_path, data, words):
    path = tmp_path / "lab1_transformers.ipynb"
    path.write_bytes(data)
    with pytest.raises(grading.SubmissionError, match=words):
        grading.read_notebook(path)


def test_notebook_shapes_from_other_editors_are_read_the_same(tmp_path):
    """Sources as lists or strings, a BOM, missing metadata, Colab ids in metadata, duplicate ids."""
    cells = [_code(["def f():\n", "    return 1\n"], nbgrader={"grade_id": "a", "solution": True}),
             {"cell_type": "markdown", "source": "text", "id": "x"},
             {**_code("f()"), "id": "x"},  # duplicate id
             "garbage"]
    path = tmp_path / "nb.ipynb"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(_nb(cells)).encode())
    read, notes = grading.read_notebook(path)
    assert [c.source for c in read] == ["def f():\n    return 1\n", "text", "f()"]
    assert read[0].nbgrader == {"grade_id": "a", "solution": True} and read[1].nbgrader == {}
    assert any("duplicate cell id" in n for n in notes) and any("malformed" in n for n in notes)


def test_nbformat3_notebooks_are_converted(tmp_path):
    v3 = {"nbformat": 3, "nbformat_minor": 0, "metadata": {"name": ""},
          "worksheets": [{"cells": [{"cell_type": "code", "input": "x = 1", "language": "python", "outputs": [],
                                     "metadata": {}}]}]}
    path = tmp_path / "old.ipynb"
    path.write_text(json.dumps(v3))
    cells, _ = grading.read_notebook(path)
    assert [c.source for c in cells] == ["x = 1"]


# ----------------------------------------------------------------------------- collect
def _write(base: Path, rel: str, data: bytes = b"{}") -> None:
    (base / rel).parent.mkdir(parents=True, exist_ok=True)
    (base / rel).write_bytes(data)


def test_collect_finds_each_students_file_in_every_layout(tmp_path):
    subs = tmp_path / "subs"
    _write(subs, "alice/lab1_transformers.ipynb")
    _write(subs, "alice/torch.py")  # ignored: not a lab file
    _write(subs, "bob/lab1_transformers/lab1_transformers.ipynb")  # nbgrader's layout
    _write(subs, "bob/lab2_fine_tuning/lab2_fine_tuning.ipynb")
    _write(subs, "carol__lab1_transformers.ipynb")  # flat, nbgrader export style
    _write(subs, "dave_lab1_transformers.ipynb")  # flat, LMS style
    _write(subs, "erin/lab1_transformers.ipynb")
    _write(subs, "erin/lab1_transformers-Copy1.ipynb")  # two candidates: the exact name wins
    _write(subs, "frank/Untitled.ipynb")  # no lab named: reported
    _write(subs, "gina/lab1_transformers.pdf")  # not a notebook: graded, so that it is reported
    _write(subs, "alice/.ipynb_checkpoints/lab1_transformers-checkpoint.ipynb")
    found, problems = grading.collect(subs, LABS, tmp_path / "work")
    assert sorted(found["lab1_transformers"]) == ["alice", "bob", "carol", "dave", "erin", "gina"]
    assert sorted(found["lab2_fine_tuning"]) == ["bob"]
    assert found["lab1_transformers"]["erin"].name == "lab1_transformers.ipynb"
    assert found["lab1_transformers"]["gina"].suffix == ".pdf"
    assert any(p.startswith("erin: 2 files") for p in problems)
    assert any(p.startswith("frank: no file") for p in problems)


def test_collect_reads_a_zip_safely(tmp_path):
    archive = tmp_path / "class.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("alice/lab1_transformers.ipynb", "{}")
        zf.writestr("__MACOSX/alice/._lab1_transformers.ipynb", "junk")
        zf.writestr("../../evil/lab1_transformers.ipynb", "{}")  # a path that climbs out
    found, _ = grading.collect(archive, LABS, tmp_path / "work")
    assert sorted(found["lab1_transformers"]) == ["alice", "evil"]
    for path in found["lab1_transformers"].values():
        assert (tmp_path / "work") in path.parents, f"{path} was unpacked outside the work folder"
    assert not (tmp_path / "evil").exists()


# ----------------------------------------------------------------------------- test segments
def test_hidden_tests_become_their_own_segments_with_line_numbers_kept():
    source = "a = 1\nassert a == 1\n### BEGIN HIDDEN TESTS\nassert a + 1 == 2\n### END HIDDEN TESTS\nb = 2\n"
    steps = grading._test_steps(grading.SpecCell("test", source, "", "t", 1.0))
    assert [s.hidden for s in steps] == [False, True, False]
    assert [s.first_line for s in steps] == [1, 4, 6]
    assert steps[1].source.splitlines()[3] == "assert a + 1 == 2"  # line 4 of the cell stays line 4


def test_a_hidden_block_inside_a_loop_keeps_the_cell_whole():
    source = "for i in range(2):\n    assert i < 2\n    ### BEGIN HIDDEN TESTS\n    assert i >= 0\n    ### END HIDDEN TESTS\n"
    (step,) = grading._test_steps(grading.SpecCell("test", source, "", "t", 1.0))
    assert step.hidden and "BEGIN HIDDEN" not in step.source
    compile(step.source, "<cell>", "exec")


def test_parses_wait_for_each_other():
    """Notebooks are graded in threads; CPython 3.11 shares the AST constructor's recursion counter
    between them (a concurrent parse raised "SystemError: AST constructor recursion depth mismatch" in
    CI), so every parse and compile in the grader waits for the lock."""
    import ast
    import threading

    done = []
    with grading._AST_LOCK:
        threads = [threading.Thread(target=lambda: done.append(grading._parse("x = 1"))),
                   threading.Thread(target=lambda: done.append(grading._compiles("y = 2"))),
                   threading.Thread(target=lambda: done.append(
                       grading._test_steps(grading.SpecCell("test", "assert 1", "", "t", 1.0))))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(0.2)
        assert not done, "a parse ran while another thread held the lock"
    for t in threads:
        t.join(5)
    assert len(done) == 3 and isinstance(done[0], ast.Module) and done[1] is True
    source = (REPO / "shared" / "coursekit" / "coursekit" / "grading.py").read_text()
    calls = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call)
             and (getattr(n.func, "attr", None) == "parse" and getattr(n.func.value, "id", None) == "ast"
                  or getattr(n.func, "id", None) == "compile")]
    assert len(calls) == 3, "a parse or compile outside _parse/_compiles (and the config reader) skips the lock"


def test_a_grader_failure_is_retried_once_then_flagged(monkeypatch, tmp_path):
    calls = []

    def flaky(spec, student, path, options, mode, scratch):
        calls.append(student)
        if student == "broken" or calls.count(student) == 1:
            raise SystemError("AST constructor recursion depth mismatch (before=33, after=26)")
        return grading.LabResult(student, spec.lab, scores={"t": 1.0}, max_scores={"t": 1.0})

    monkeypatch.setattr(grading, "grade_notebook", flaky)
    spec = _spec([grading.SpecCell("test", "assert True", "assert True", "t", 1.0)])
    options = grading.Options(sandbox="none", jobs=1)
    results = grading.grade_many(spec, {"lucky": tmp_path / "a.ipynb", "broken": tmp_path / "b.ipynb"}, options,
                                 scratch=tmp_path)
    assert results["lucky"].scores == {"t": 1.0} and not results["lucky"].error and not results["lucky"].review
    broken = results["broken"]
    assert broken.scores == {"t": 0.0} and "SystemError" in broken.error
    assert any("grade it by hand" in flag for flag in broken.review), broken.review
    assert calls.count("broken") == 2 and calls.count("lucky") == 2


# ----------------------------------------------------------------------------- review flags
def test_review_flags_attacks_and_not_honest_code():
    attack = ("import ctypes, sys\nimport numpy as np\nnp.allclose = lambda *a: True\nf = sys._getframe(1)\n"
              "setattr(np.testing, 'assert_allclose', print)\n"
              "class A:\n    __module__ = 'torch'\n    def __eq__(self, o):\n        return True\n")
    flags = grading.review([grading.Step("answer", attack, False)])
    for words in ("imports ctypes", "assigns np.allclose", "uses ._getframe", "defines __eq__", "calls setattr()",
                  "sets __module__"):
        assert any(words in f for f in flags), (words, flags)
    everyday = ("for p in model.parameters():\n    p.requires_grad = False\nmodel.head.weight = shared\n"
                "setattr(self, f'layer{i}', block)\n")
    assert grading.review([grading.Step("answer", everyday, False)]) == []
    honest = grading.answers_from_solution(REPO / "tests" / "grading" / "fixture_course" / "solutions" /
                                           "fixture_lab" / "fixture_lab.py")
    for lab_py in sorted((REPO / "solutions").glob("*/*.py")):
        if lab_py.stem == lab_py.parent.name:
            honest.update(grading.answers_from_solution(lab_py))
    assert grading.review([grading.Step(k, v, False) for k, v in honest.items()]) == []
    assert grading.review([grading.Step("instructor", attack, True)]) == []  # instructor code is trusted


# ----------------------------------------------------------------------------- options and sandbox
def test_options_and_limits_reject_nonsense():
    with pytest.raises(ValueError, match="cell_timeout"):
        grading.Options(cell_timeout=10, notebook_timeout=5)
    with pytest.raises(ValueError, match="jobs"):
        grading.Options(jobs=-1)
    with pytest.raises(ValueError, match="memory_bytes"):
        sandbox.Limits(memory_bytes=1 << 20)
    with pytest.raises(ValueError, match="sandbox mode"):
        sandbox.resolve_mode("docker")
    assert grading.default_options(REPO).cell_timeout == 120.0  # nbgrader_config.py's Execute.timeout


def test_sandbox_sees_python_and_the_package_but_not_the_course(tmp_path):
    argv, inside = sandbox.command(["python", "-c", "pass"], tmp_path, "bwrap")
    assert inside == sandbox.HOME and argv[-3:] == ["python", "-c", "pass"]
    assert "--unshare-all" in argv and "--cap-drop" in argv and "--die-with-parent" in argv
    visible = [Path(argv[i + 1]) for i, a in enumerate(argv) if a in ("--ro-bind", "--bind")]
    for path in visible:
        assert path != REPO and path not in REPO.parents, f"the sandbox would see the whole course: {path}"
        assert "solutions" not in path.parts and "submitted" not in path.parts
    assert (REPO / "shared" / "llmcourse").resolve() in visible
    assert sandbox.command(["x"], tmp_path, "none") == (["x"], str(tmp_path))


# ----------------------------------------------------------------------------- rebuilding a notebook
def _spec(cells: list[grading.SpecCell]) -> grading.LabSpec:
    return grading.LabSpec("lab", cells, Path("."), [], [])


def test_rebuild_keeps_instructor_cells_and_places_student_cells_in_order():
    S = grading.SpecCell
    spec = _spec([S("code", "import numpy as np", "import numpy as np"), S("markdown", "---", "---"),
                  S("answer", "def a(): ...", "def a():\n    raise NotImplementedError()", "a_answer"),
                  S("test", "assert a() == 1\n### BEGIN HIDDEN TESTS\nassert a() != 2\n### END HIDDEN TESTS",
                    "assert a() == 1", "a_test", 1.0),
                  S("markdown", "---", "---"),
                  S("answer", "def b(): ...", "def b():\n    raise NotImplementedError()", "b_answer"),
                  S("test", "assert b() == 2", "assert b() == 2", "b_test", 1.0)])
    C = grading.Cell
    student = [C("code", "import numpy as np", {}, None), C("markdown", "---", {}, None),
               C("code", "def a():\n    return helper()", {"grade_id": "a_answer"}, None),
               C("code", "def helper():\n    return 1", {}, None),  # a cell the student added
               C("code", "pass  # the student's version of the test", {"grade_id": "a_test"}, None),
               C("markdown", "---", {}, None),
               C("code", "def b():\n    return 2", {}, None)]  # metadata lost (Colab); b_test deleted
    steps, graded, notes = grading.plan(spec, student)
    assert [(s.label, s.trusted, s.hidden) for s in steps] == [
        ("cell 0", True, False), ("a_answer", False, False), ("cell you added (after a_answer, #1)", False, False),
        ("a_test", True, False), ("a_test", True, True),
        ("cell you added (after cell 4, #1)", False, False), ("b_test", True, False)]
    assert "assert a() != 2" in steps[4].source and steps[6].source == "assert b() == 2"
    assert graded == {"a_answer": "def a():\n    return helper()"}
    assert any("1 edited test cell" in n for n in notes) and any("b_test" in n for n in notes)


# ----------------------------------------------------------------------------- the worker's guard
def test_guard_restores_patches_but_accepts_library_wrappers():
    """Importing torch._dynamo wraps torch.manual_seed (a library wrapper of the original, accepted);
    a student's wrapper, even one that claims to wrap the original, is undone."""
    import functools

    import torch

    from coursekit import gradeworker

    guard = gradeworker.Guard({})
    guard.snapshot(["torch", "torch.testing"])
    guard.index()
    original, assert_close = torch.manual_seed, torch.testing.assert_close
    try:
        fake = functools.wraps(assert_close)(lambda *args, **kwargs: None)  # written here: not library code
        torch.testing.assert_close = fake
        torch.manual_seed = torch._disable_dynamo(original)  # what torch._dynamo does
        changed = guard._drift(restore=True)
        assert changed == ["torch.testing.assert_close"], changed
        assert torch.testing.assert_close is assert_close and torch.manual_seed.__wrapped__ is original
        assert guard._drift(restore=True) == []  # the wrapper is the new normal
    finally:
        torch.manual_seed, torch.testing.assert_close = original, assert_close


def test_edit_answer_replaces_one_line_keeping_its_indent():
    solution = {"a_answer": "def f(x):\n    y = x * 2  # double\n    return y\n"}
    assert grading.edit_answer(solution, "a_answer", ("y = x", "y = x * 3\ny += 1")) == {
        "a_answer": "def f(x):\n    y = x * 3\n    y += 1\n    return y\n"}
    with pytest.raises(ValueError, match="'missing' is on 0 lines"):
        grading.edit_answer(solution, "a_answer", ("missing", "z"))
    with pytest.raises(ValueError, match="no answer cell 'b_answer'"):
        grading.edit_answer(solution, "b_answer", ("y", "z"))


def test_combine_mistakes_uses_each_mistake_once_in_different_cells():
    mistakes = {"m1": {"answers": {"a": "1"}, "fails": {"a_test"}},
                "m2": {"answers": {"b": "2"}, "fails": {"b_test"}},
                "m3": {"answers": {"a": "3"}, "fails": {"a_test"}}}
    wrong = grading.combine_mistakes(mistakes, [("m1", "m2"), ("m3",)])
    assert wrong == {"m1+m2": {"answers": {"a": "1", "b": "2"}, "fails": {"a_test", "b_test"}},
                     "m3": {"answers": {"a": "3"}, "fails": {"a_test"}}}
    with pytest.raises(ValueError, match=r"unused \['m3'\]"):
        grading.combine_mistakes(mistakes, [("m1", "m2")])
    with pytest.raises(ValueError, match="same answer cell"):
        grading.combine_mistakes(mistakes, [("m1", "m3"), ("m2",)])


def test_scratch_course_generates_only_the_labs_asked_for(tmp_path):
    with pytest.raises(ValueError, match="no_such_lab"):
        grading.scratch_course(REPO, tmp_path / "a", labs=["no_such_lab"])
    course = grading.scratch_course(REPO, tmp_path / "b", labs=[])
    assert (course / "solutions").is_dir() and not (course / "labs").exists()
