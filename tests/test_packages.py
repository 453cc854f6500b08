"""The two packages stay apart: ``llmcourse`` (shared/llmcourse) is the student library that Colab
installs, ``coursekit`` (shared/coursekit) the instructor and maintainer tools. The tools never load
torch (a grading worker imports it only when a lab's cells do) and the student library never imports
the tools."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib

from conftest import REPO

TOOLS = REPO / "shared" / "coursekit" / "coursekit"
LIBRARY = REPO / "shared" / "llmcourse"


def _imported_roots(path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
    return roots


def test_coursekit_imports_neither_torch_nor_the_student_library():
    modules = sorted(p.stem for p in TOOLS.glob("*.py") if p.stem != "__main__")
    code = ("import sys\n" + "".join(f"import coursekit.{m}\n" for m in modules)
            + "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'llmcourse', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"importing coursekit loaded {out.strip()}"
    for path in TOOLS.glob("*.py"):
        assert not _imported_roots(path) & {"torch", "llmcourse"}, f"{path.name} imports torch or llmcourse"


def test_student_library_never_imports_the_tools():
    tool_names = {p.stem for p in TOOLS.glob("*.py")} - {"__init__"}
    for path in LIBRARY.rglob("*.py"):
        assert "coursekit" not in _imported_roots(path), f"{path.relative_to(REPO)} imports coursekit"
        assert path.stem not in tool_names or path.parent != LIBRARY, f"{path.relative_to(REPO)}: a tool in the student library"


def test_colab_installs_only_the_student_library():
    library = tomllib.loads((REPO / "shared" / "pyproject.toml").read_text())
    assert library["tool"]["setuptools"]["packages"]["find"]["include"] == ["llmcourse*"]
    tools = tomllib.loads((TOOLS.parent / "pyproject.toml").read_text())
    assert tools["project"]["name"] == "coursekit"
    assert not any(dep.split(">")[0].split("=")[0].strip() in ("torch", "llmcourse") for dep in tools["project"]["dependencies"])
    from coursekit import course

    assert course.pip_spec().startswith("llmcourse @ ") and course.pip_spec().endswith("#subdirectory=shared")
