"""Autograding that survives a real class: ``make grade SUBMISSIONS=<folder or zip>``.

    python -m coursekit.grading SUBMISSIONS [--out grades] [--jobs N] [--sandbox auto|bwrap|none]
                                [--cell-timeout S] [--notebook-timeout S] [--memory GIB]
                                [--disk GIB] [--processes N] [--lab LAB]

writes ``grades/grades.csv`` (one row per student and lab: total, points per test cell, status, the
reason of every lost point, review flags) and ``grades/feedback/<student>/<lab>.html`` (per-part results
with the visible tests only), and prints a summary. Instructor guide and threat model:
``docs/INSTRUCTORS.md``.

How a notebook is graded (nbgrader's course layout: ``solutions/`` is the source, ``labs/`` the release):

1. **Read** the file as JSON without trusting its shape: empty, corrupted, or not a notebook is a result
   for that student ("not a notebook: invalid JSON at line 3"), never a crash of the batch. Notebooks
   saved by JupyterLab, Colab or VS Code differ only in metadata, which is ignored.
2. **Rebuild** the notebook from the instructor's source: every instructor cell (setup, markdown, test
   cells *with their hidden tests*) comes from ``solutions/``, whatever the student did to it (edited,
   emptied, turned into markdown, deleted, metadata stripped); the student contributes only the answer
   cells (matched by nbgrader ``grade_id``) and the cells they added (kept in place, after the instructor
   cell they follow). Duplicated cells are reduced to one (the last edited copy).
3. **Run** it in a sandboxed worker process (``coursekit.sandbox``, ``coursekit.gradeworker``): no
   network, a read-only view of only Python and the course's packages, a home folder in memory, a cgroup
   of its own (memory of all its processes, their number, a CPU share: ``coursekit.cgroups``), time
   limits. Cells go to the worker one at a time; a test cell's hidden part only after its visible part
   passed. A cell that runs past ``--cell-timeout`` or kills the process (segfault, ``os._exit``, memory) fails with that
   reason; the worker is restarted, the cells before it are replayed, and grading goes on with the next
   cell, so the points earned elsewhere are kept. The whole notebook has a wall-clock cap.
4. **Score**: a test cell earns its points when it runs without an exception. Output on stderr (progress
   bars, warnings) is ignored. Student code cannot swap the functions the tests use (see gradeworker).

Submissions are graded in parallel (``--jobs``, default: the number of CPUs), each in its own process.
Before a class, each lab's solution is graded once outside the sandbox (:func:`calibration`): it must
get full marks here, and it fills caches (converted models) that the sandbox then sees read-only.
"""

from __future__ import annotations

import argparse
import ast
import csv
import hashlib
import hmac
import html
import json
import os
import re
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import cgroups, nbtools, sandbox

_MARKER = re.compile(r"^[ \t]*### (BEGIN|END) (SOLUTION|HIDDEN TESTS)[ \t]*\n?", re.M)
_HIDDEN = re.compile(r"^[ \t]*### (BEGIN|END) HIDDEN TESTS[ \t]*$")
MAX_FILE_BYTES = 100 << 20  # a notebook larger than this is not graded (outputs included)
MAX_ZIP_BYTES = 2 << 30


@dataclass
class LabResult:
    """One student's result on one lab: score per graded cell (test cells, by grade_id), the reason of
    every lost point, notes about the submission and flags for a human to review."""

    student: str
    lab: str
    scores: dict[str, float] = field(default_factory=dict)
    max_scores: dict[str, float] = field(default_factory=dict)
    error: str = ""  # the submission could not be graded at all (not a notebook, ...)
    reasons: dict[str, str] = field(default_factory=dict)  # grade_id -> why the points were lost
    notes: list[str] = field(default_factory=list)  # cleanups and student-cell errors, for the feedback
    review: list[str] = field(default_factory=list)  # constructs a human should look at
    answers: dict[str, str] = field(default_factory=dict)  # answer grade_id -> the code that was graded
    seconds: float = 0.0
    sandbox: str = ""
    isolation: str = ""  # the notebook's cgroup (coursekit.cgroups.CGroup.description)

    @property
    def total(self) -> float:
        return sum(self.scores.values())

    @property
    def max_total(self) -> float:
        return sum(self.max_scores.values())


@dataclass(frozen=True)
class Options:
    """How to grade: limits, parallelism and the sandbox."""

    cell_timeout: float = 120.0  # seconds one cell may run (nbgrader_config.py's Execute.timeout)
    notebook_timeout: float = 600.0  # wall-clock cap of one notebook, restarts included
    memory_gib: float = 4.0  # memory of one notebook: address space per process, all processes in its cgroup
    disk_gib: float = 1.0  # what one notebook may write (its home folder)
    processes: int = 256  # processes and threads of one notebook (cgroup pids.max, else RLIMIT_NPROC)
    cgroup: bool = True  # put each notebook in its own cgroup where this machine allows (coursekit.cgroups)
    jobs: int = 0  # notebooks graded at once (0: one per CPU)
    sandbox: str = "auto"  # "auto" (bwrap when it works), "bwrap" (required) or "none"
    max_restarts: int = 4  # crashes or timeouts per notebook before the rest is given up

    def __post_init__(self):
        if self.cell_timeout <= 0 or self.notebook_timeout < self.cell_timeout:
            raise ValueError(f"cell_timeout ({self.cell_timeout}) must be > 0 and <= notebook_timeout "
                             f"({self.notebook_timeout})")
        if self.jobs < 0:
            raise ValueError(f"jobs ({self.jobs}) must be >= 0")
        _ = self.limits  # validates memory, processes and disk (ValueError naming the value)

    @property
    def limits(self) -> sandbox.Limits:
        return sandbox.Limits(memory_bytes=int(self.memory_gib * sandbox.GIB), processes=self.processes,
                              disk_bytes=int(self.disk_gib * sandbox.GIB))

    @property
    def workers(self) -> int:
        return self.jobs or os.cpu_count() or 1


def default_options(repo: Path | None = None, **overrides) -> Options:
    """Options with the per-cell timeout of the course's ``nbgrader_config.py``."""
    from traitlets.config import Config

    config = Config()
    path = (repo or nbtools.root()) / "nbgrader_config.py"
    if path.exists():
        exec(compile(path.read_text(), str(path), "exec"), {"get_config": lambda: config})
    timeout = config.Execute.get("timeout") if "Execute" in config else None
    values = {"cell_timeout": float(timeout)} if timeout else {}
    values.update(overrides)
    return Options(**values)


# ----------------------------------------------------------------------------- course copies
def scratch_course(repo: Path, dest: Path, solutions: Path | None = None, labs: list[str] | None = None) -> Path:
    """Copy what grading needs (config, solutions) into ``dest`` and generate the labs there (all of them,
    or only ``labs``; an empty list generates none). ``solutions`` overrides the labs' source folder (the
    tests' fixture course)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(repo / "nbgrader_config.py", dest / "nbgrader_config.py")
    shutil.copytree(solutions or repo / "solutions", dest / "solutions", dirs_exist_ok=True)
    if labs is None or labs:
        nbtools.generate_labs(dest, db=dest / "gradebook.db", labs=labs)
    return dest


def answers_from_solution(lab_source: Path) -> dict[str, str]:
    """The solution of every answer cell (by grade_id), as a student would type it (no markers)."""
    nb = nbtools.read_py(lab_source) if lab_source.suffix == ".py" else nbtools.read_ipynb(lab_source)
    return {
        c.metadata["nbgrader"]["grade_id"]: _MARKER.sub("", c.source)
        for c in nb.cells
        if c.metadata.get("nbgrader", {}).get("solution")
    }


def edit_answer(solution: dict[str, str], grade_id: str, *replacements: tuple[str, str]) -> dict[str, str]:
    """A wrong answer written as a diff of the solution (so wrong-submission fixtures stay in step with it):
    the answer cell ``grade_id`` of ``solution`` (see :func:`answers_from_solution`) where, for each
    ``(old, new)``, the one line that contains ``old`` becomes ``new`` (lines of ``new`` keep that line's
    indent). Returns ``{grade_id: source}``."""
    if grade_id not in solution:
        raise ValueError(f"the solution has no answer cell {grade_id!r}; it has {sorted(solution)}")
    lines = solution[grade_id].splitlines()
    for old, new in replacements:
        hits = [i for i, line in enumerate(lines) if old in line]
        if len(hits) != 1:
            raise ValueError(f"{grade_id}: {old!r} is on {len(hits)} lines of the solution, expected 1")
        indent = lines[hits[0]][: len(lines[hits[0]]) - len(lines[hits[0]].lstrip())]
        lines[hits[0]:hits[0] + 1] = [indent + line for line in new.splitlines()]
    return {grade_id: "\n".join(lines) + "\n"}


def combine_mistakes(mistakes: dict[str, dict], submissions: list[tuple[str, ...]]) -> dict[str, dict]:
    """Wrong submissions from single mistakes. ``mistakes[name]`` is ``{"answers": {grade_id: source},
    "fails": {test grade_ids}}``; each entry of ``submissions`` names mistakes in *different* answer cells
    and becomes one submission ``{"answers": ..., "fails": ...}`` keyed by the names joined with "+".
    Every mistake must be used exactly once."""
    used = sorted(name for names in submissions for name in names)
    if used != sorted(mistakes):
        raise ValueError(f"use every mistake exactly once: unused {sorted(set(mistakes) - set(used))}, "
                         f"repeated or unknown {sorted({n for n in used if used.count(n) > 1 or n not in mistakes})}")
    wrong = {}
    for names in submissions:
        answers: dict[str, str] = {}
        fails: set[str] = set()
        for name in names:
            if set(mistakes[name]["answers"]) & set(answers):
                raise ValueError(f"{names}: two mistakes in the same answer cell")
            answers.update(mistakes[name]["answers"])
            fails |= set(mistakes[name]["fails"])
        wrong["+".join(names)] = {"answers": answers, "fails": fails}
    return wrong


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


# ----------------------------------------------------------------------------- the lab
@dataclass
class SpecCell:
    """One cell of the instructor's notebook."""

    kind: str  # "markdown", "code" (instructor code), "answer" or "test"
    source: str  # the instructor's version (test cells: with hidden tests)
    release: str  # what students were given
    grade_id: str | None = None
    points: float = 0.0
    cell_id: str | None = None


@dataclass
class LabSpec:
    """What grading needs to know about a lab, read from the scratch course."""

    lab: str
    cells: list[SpecCell]
    release_dir: Path
    preload: list[str]
    answer_names: list[str]

    @property
    def tests(self) -> list[SpecCell]:
        return [c for c in self.cells if c.kind == "test"]

    @classmethod
    def load(cls, course_root: Path, lab: str) -> LabSpec:
        source_nb = nbtools.read_ipynb(course_root / "solutions" / lab / f"{lab}.ipynb")
        release_dir = course_root / "labs" / lab
        release_nb = nbtools.read_ipynb(release_dir / f"{lab}.ipynb")
        if len(source_nb.cells) != len(release_nb.cells):
            raise ValueError(f"{lab}: the release has {len(release_nb.cells)} cells, the source "
                             f"{len(source_nb.cells)}: regenerate it (make labs)")
        cells = []
        for src, rel in zip(source_nb.cells, release_nb.cells):
            meta = src.metadata.get("nbgrader", {})
            gid = meta.get("grade_id")
            if rel.metadata.get("nbgrader", {}).get("grade_id") != gid:
                raise ValueError(f"{lab}: source and release cells differ at grade_id {gid}")
            if src.cell_type != "code":
                kind = "markdown"
            elif meta.get("grade") and meta.get("points", 0) > 0:
                kind = "test"
            elif meta.get("solution"):
                kind = "answer"
            else:
                kind = "code"
            cells.append(SpecCell(kind, src.source, rel.source, gid, float(meta.get("points", 0) or 0),
                                  rel.get("id")))
        code = [c.source for c in cells if c.kind in ("code", "test")]
        answers = [c.release for c in cells if c.kind == "answer"]
        answers += [_MARKER.sub("", c.source) for c in cells if c.kind == "answer"]
        return cls(lab, cells, release_dir, _imports(code), sorted(_defined_names(answers)))


# Notebooks are graded in threads, and CPython 3.11 keeps the AST constructor's recursion counter in
# per-interpreter state: a thread switch inside ast.parse or compile (a garbage collection running a
# finalizer is enough) can make another thread's parse raise "SystemError: AST constructor recursion
# depth mismatch" (python/cpython#106905). Every parse and compile of the grader goes through this lock.
_AST_LOCK = threading.Lock()


def _parse(source: str) -> ast.Module | None:
    """The module's tree, or None when the source is not valid Python."""
    with _AST_LOCK:
        try:
            return ast.parse(source)
        except SyntaxError:
            return None


def _compiles(source: str) -> bool:
    with _AST_LOCK:
        try:
            compile(source, "<segment>", "exec", dont_inherit=True)
        except SyntaxError:
            return False
    return True


def _imports(sources: list[str]) -> list[str]:
    """Modules the instructor's cells import (``from a import b`` also tries the submodule ``a.b``),
    plus the ``testing`` helpers of numpy and torch when those are used."""
    found: list[str] = []
    for source in sources:
        tree = _parse(source)
        for node in ast.walk(tree) if tree else ():
            if isinstance(node, ast.Import):
                found += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.append(node.module)
                found += [f"{node.module}.{alias.name}" for alias in node.names if alias.name != "*"]
    roots = {name.split(".")[0] for name in found}
    found += [f"{root}.testing" for root in ("numpy", "torch") if root in roots]
    return list(dict.fromkeys(found))


def _defined_names(sources: list[str]) -> set[str]:
    names: set[str] = set()
    for source in sources:
        tree = _parse(source)
        for node in tree.body if tree else ():
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


# ----------------------------------------------------------------------------- reading submissions
class SubmissionError(ValueError):
    """The file cannot be graded (the message is for the student)."""


@dataclass
class Cell:
    cell_type: str
    source: str
    nbgrader: dict
    cell_id: str | None


def read_notebook(path: Path) -> tuple[list[Cell], list[str]]:
    """The cells of a submitted notebook, read defensively; notes say what was cleaned up."""
    size = path.stat().st_size
    if size == 0:
        raise SubmissionError("the file is empty")
    if size > MAX_FILE_BYTES:
        raise SubmissionError(f"the file is {size / 2**20:.0f} MiB, more than a notebook can be ({MAX_FILE_BYTES >> 20} MiB)")
    data = path.read_bytes()
    kind = f" ({path.suffix} file)" if path.suffix != ".ipynb" else ""
    if not data.strip():
        raise SubmissionError("the file is empty (only whitespace)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SubmissionError(f"not a notebook{kind}: the file is not text (a binary or compressed file?)") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SubmissionError(f"not a notebook{kind}: invalid JSON at line {exc.lineno}, column {exc.colno} "
                              "(the file is corrupted or was cut short)") from None
    if isinstance(doc, dict) and "worksheets" in doc and "cells" not in doc:  # nbformat 3
        import nbformat

        doc = json.loads(nbformat.writes(nbformat.reads(text, as_version=4)))
    if not isinstance(doc, dict) or not isinstance(doc.get("cells"), list):
        raise SubmissionError(f"not a Jupyter notebook{kind}: the JSON has no list of cells")
    notes, cells, seen_ids, duplicates = [], [], set(), 0
    for raw in doc["cells"]:
        if not isinstance(raw, dict):
            notes.append("ignored a malformed cell")
            continue
        source = raw.get("source", "")
        source = "".join(str(s) for s in source) if isinstance(source, list) else str(source)
        metadata = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
        nbg = metadata.get("nbgrader") if isinstance(metadata.get("nbgrader"), dict) else {}
        cell_id = raw.get("id") if isinstance(raw.get("id"), str) else None
        if cell_id is not None and cell_id in seen_ids:
            duplicates += 1
            cell_id = None
        seen_ids.add(cell_id)
        cells.append(Cell(str(raw.get("cell_type", "code")), source, nbg, cell_id))
    if duplicates:
        notes.append(f"cleaned {duplicates} duplicate cell id(s)")
    return cells, notes


def _norm(source: str) -> str:
    return "\n".join(line.rstrip() for line in source.strip().splitlines())


@dataclass
class Step:
    """One unit of work for the worker: a student cell, an instructor cell, or a segment of a test."""

    label: str
    source: str
    trusted: bool
    test: str | None = None  # grade_id of the test cell this segment belongs to
    hidden: bool = False
    first_line: int = 1  # line of this segment in its cell


def plan(spec: LabSpec, cells: list[Cell]) -> tuple[list[Step], dict[str, str], list[str]]:
    """The steps that grade ``cells`` (see module doc, point 2): (steps, graded answers, notes)."""
    by_gid = {c.grade_id: i for i, c in enumerate(spec.cells) if c.grade_id}
    by_source: dict[str, list[int]] = {}
    by_id: dict[str, int] = {}
    for i, c in enumerate(spec.cells):
        if c.kind != "answer" and _norm(c.release):
            by_source.setdefault(_norm(c.release), []).append(i)
            if c.cell_id:
                by_id.setdefault(c.cell_id, i)
    answers: dict[int, list[str]] = {}
    extras: dict[int, list[str]] = {}
    notes: list[str] = []
    anchor, restored = -1, 0
    for cell in cells:
        gid = cell.nbgrader.get("grade_id")
        index = by_gid.get(gid) if isinstance(gid, str) else None
        if index is None and _norm(cell.source) in by_source:  # identical cells: the next one in order
            same = by_source[_norm(cell.source)]
            index = next((i for i in same if i > anchor), same[0])
        if index is None and cell.cell_id in by_id:  # same id and type: an instructor cell, edited
            same_type = (spec.cells[by_id[cell.cell_id]].kind == "markdown") == (cell.cell_type == "markdown")
            index = by_id[cell.cell_id] if same_type else None
        if index is not None:
            anchor = index
            if spec.cells[index].kind == "answer" and cell.cell_type == "code":
                answers.setdefault(index, []).append(cell.source)
            elif spec.cells[index].kind == "test" and _norm(cell.source) != _norm(spec.cells[index].release):
                restored += 1
        elif cell.cell_type == "code" and cell.source.strip():
            extras.setdefault(anchor, []).append(cell.source)
    present = {by_gid[c.nbgrader["grade_id"]] for c in cells if c.nbgrader.get("grade_id") in by_gid}
    present |= {i for c in cells for i in by_source.get(_norm(c.source), ())}
    missing = [c.grade_id for i, c in enumerate(spec.cells) if c.kind == "test" and i not in present]
    if restored:
        notes.append(f"{restored} edited test cell(s) were graded with the original tests")
    if missing:
        notes.append(f"restored deleted or unrecognised test cell(s): {', '.join(missing)}")
    steps: list[Step] = []
    graded: dict[str, str] = {}

    def add_extras(i: int) -> None:
        for n, source in enumerate(extras.get(i, [])):
            steps.append(Step(f"cell you added ({'after ' + (spec.cells[i].grade_id or f'cell {i}') if i >= 0 else 'at the top'}, #{n + 1})", source, False))

    add_extras(-1)
    for i, c in enumerate(spec.cells):
        if c.kind == "code":
            steps.append(Step(c.grade_id or f"cell {i}", c.source, True))
        elif c.kind == "answer" and i in answers:
            copies = answers[i]
            edited = [s for s in copies if _norm(s) != _norm(c.release)]
            source = edited[-1] if edited else copies[0]
            if len(copies) > 1:
                notes.append(f"answer cell {c.grade_id} appears {len(copies)} times: graded the last edited copy")
            graded[c.grade_id] = source
            steps.append(Step(c.grade_id, source, False))
        elif c.kind == "test":
            steps += _test_steps(c)
        add_extras(i)
    return steps, graded, notes


def _test_steps(cell: SpecCell) -> list[Step]:
    """A test cell cut into its visible and hidden segments (each compiled on its own, line numbers
    kept); a cell whose segments do not compile apart (a hidden block inside a loop) stays whole."""
    segments: list[tuple[bool, int, list[str]]] = []
    hidden = False
    for n, line in enumerate(cell.source.splitlines(), start=1):
        match = _HIDDEN.match(line)
        if match:
            hidden = match.group(1) == "BEGIN"
            continue
        if not segments or segments[-1][0] != hidden:
            segments.append((hidden, n, []))
        segments[-1][2].append(line)
    steps = [Step(cell.grade_id, "\n" * (first - 1) + "\n".join(lines), True, cell.grade_id, is_hidden, first)
             for is_hidden, first, lines in segments if any(s.strip() for s in lines)]
    if not all(_compiles(step.source) for step in steps):
        has_hidden = any(s.hidden for s in steps)
        steps = [Step(cell.grade_id, _MARKER.sub("", cell.source), True, cell.grade_id, has_hidden)]
    return steps or [Step(cell.grade_id, "pass", True, cell.grade_id)]


# ----------------------------------------------------------------------------- the worker process
class WorkerDied(Exception):
    """The worker process ended or had to be killed (the message says why)."""


_SIGNALS = {signal.SIGSEGV: "a segmentation fault (SIGSEGV)", signal.SIGKILL: "SIGKILL (out of memory?)",
            signal.SIGABRT: "an abort (SIGABRT)", signal.SIGBUS: "a bus error (SIGBUS)",
            signal.SIGFPE: "a floating-point exception (SIGFPE)", signal.SIGILL: "an illegal instruction (SIGILL)"}


class Worker:
    """One sandboxed ``coursekit.gradeworker`` process and its signed reply channel."""

    def __init__(self, spec: LabSpec, workdir: Path, options: Options, mode: str):
        self.key = secrets.token_bytes(32)
        self.log = workdir / ".worker.log"
        self.log.touch()
        self.workdir, self.mode = workdir, mode
        limits = options.limits
        # Without bwrap the home folder is the grading machine's disk: watched from here (see receive).
        # (what is there now, the lab's files, does not count).
        self.disk_limit = limits.disk_bytes + sandbox.tree_bytes(workdir) if mode == "none" else None
        self._disk_checked = 0.0
        self.cgroup = cgroups.create(limits.memory_bytes, limits.processes) if options.cgroup else cgroups.CGroup()
        try:
            self._start(spec, workdir, options, mode, limits)
        except BaseException:
            self.cgroup.remove()
            raise

    @property
    def isolation(self) -> str:
        """The isolation column: the cgroup, which only binds code that cannot write to /sys/fs/cgroup (bwrap
        hides it; without bwrap the notebook runs as the grading user and could raise its own limits)."""
        text = self.cgroup.description
        return text if self.mode == "bwrap" or not self.cgroup.dirs else f"{text}, not enforced without bwrap"

    def _start(self, spec: LabSpec, workdir: Path, options: Options, mode: str, limits: sandbox.Limits) -> None:
        flag = ["-I"] if sys.version_info < (3, 11) else ["-s", "-P"]
        inner = [sys.executable, *flag, "-m", "coursekit.gradeworker"]  # coursekit is torch-free
        argv, inside = sandbox.command(inner, workdir, mode, home_bytes=limits.disk_bytes)
        threads = str(max(1, (os.cpu_count() or 1) // options.workers))
        env = {
            "PATH": os.path.dirname(sys.executable) + os.pathsep + "/usr/local/bin:/usr/bin:/bin",
            "HOME": inside, "USER": "student", "LANG": "C.UTF-8", "MPLBACKEND": "Agg", "PYTHONHASHSEED": "0",
            "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "LLMCOURSE_NO_PROGRESS": "1", "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads, "LLMCOURSE_WORKER_LOG": os.path.join(inside, ".worker.log"),
            "MPLCONFIGDIR": "/tmp/matplotlib", "TMPDIR": "/tmp" if mode == "bwrap" else str(workdir),
            "LLMCOURSE_CACHE": str(os.environ.get("LLMCOURSE_CACHE") or Path.home() / ".cache" / "llmcourse"),
        }
        if os.environ.get("OMP_WAIT_POLICY"):  # PASSIVE on a machine busy with more (the test suite)
            env["OMP_WAIT_POLICY"] = os.environ["OMP_WAIT_POLICY"]
        self.proc = subprocess.Popen(
            argv, cwd=workdir, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=open(self.log, "ab"), preexec_fn=sandbox.limit_resources(limits, self.cgroup),
            start_new_session=True, close_fds=True)
        self.buffer = b""
        self._send({"op": "init", "key": self.key.hex(), "preload": spec.preload, "answer_names": spec.answer_names})

    def _send(self, message: dict) -> None:
        try:
            self.proc.stdin.write((json.dumps(message) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerDied(self._death()) from None

    def receive(self, timeout: float, rid: str | None = None) -> dict:
        """The next signed reply (for request ``rid``), or WorkerDied on timeout or death."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while True:
                while b"\n" in self.buffer:
                    line, self.buffer = self.buffer.split(b"\n", 1)
                    message = self._verify(line)
                    if message is not None and (rid is None or message.get("id") == rid):
                        return message
                left = deadline - time.monotonic()
                if left <= 0:
                    self.kill()
                    raise WorkerDied(f"timed out after {timeout:.0f} s (an infinite loop, or far too slow)")
                self._check_disk()
                if sel.select(min(left, 0.5) if self.disk_limit else left):
                    chunk = os.read(fd, 1 << 16)
                    if not chunk:
                        raise WorkerDied(self._death())
                    self.buffer += chunk

    def _check_disk(self) -> None:
        """Without bwrap: stop a notebook that has written more than its disk limit (checked twice a second)."""
        if self.disk_limit is None or time.monotonic() - self._disk_checked < 0.5:
            return
        self._disk_checked = time.monotonic()
        if sandbox.tree_bytes(self.workdir, stop_at=self.disk_limit) > self.disk_limit:
            self.kill()
            raise WorkerDied(f"wrote more than {self.disk_limit / sandbox.GIB:g} GiB to its folder (the limit is set "
                             "with --disk)")

    def _verify(self, line: bytes) -> dict | None:
        mac, _, body = line.partition(b" ")
        good = hmac.new(self.key, body, hashlib.sha256).hexdigest().encode()
        if not hmac.compare_digest(mac, good):
            return None  # not from the grader's side of the worker: ignored
        return json.loads(body)

    def run(self, step: Step, rid: str, timeout: float) -> dict:
        self._send({"op": "run", "id": rid, "source": step.source, "trusted": step.trusted})
        return self.receive(timeout, rid)

    def _death(self) -> str:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.returncode
        tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
        if code is not None and code < 0:
            sig = -code
        elif code is not None and code > 128 and mode_is_bwrap_exit(code):
            sig = code - 128
        else:
            sig = None
        if "MemoryError" in tail or "std::bad_alloc" in tail:
            return "the Python process ran out of memory (the limit is set with --memory)"
        if "Fatal Python error: Segmentation fault" in tail or sig == signal.SIGSEGV:
            return "the Python process crashed with a segmentation fault (SIGSEGV)"
        if sig:
            return f"the Python process was killed by {_SIGNALS.get(sig, f'signal {sig}')}"
        return f"the code ended the Python process (exit code {code}: sys.exit, os._exit or a crash)"

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
            self.proc.wait()
        self.cgroup.kill()  # what left the process group (setsid) or outlived the sandbox

    def close(self) -> None:
        try:
            self._send({"op": "exit"})
            self.proc.wait(timeout=5)
        except (WorkerDied, subprocess.TimeoutExpired):
            pass
        self.kill()
        self.cgroup.remove()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


def mode_is_bwrap_exit(code: int) -> bool:
    """bwrap exits with 128 + N when the sandboxed process died of signal N."""
    return 128 < code < 128 + 65


# ----------------------------------------------------------------------------- grading one notebook
def grade_notebook(spec: LabSpec, student: str, path: Path, options: Options, mode: str,
                   scratch: Path) -> LabResult:
    """Grade one submitted notebook (see module doc); never raises for a bad submission."""
    start = time.monotonic()
    result = LabResult(student, spec.lab, sandbox=mode)
    result.max_scores = {c.grade_id: c.points for c in spec.tests}
    result.scores = {gid: 0.0 for gid in result.max_scores}
    try:
        cells, notes = read_notebook(path)
    except (SubmissionError, OSError) as exc:
        result.error = str(exc)
        return result
    steps, result.answers, plan_notes = plan(spec, cells)
    result.notes += notes + plan_notes
    result.review = review(steps)
    workdir = Path(tempfile.mkdtemp(prefix="sub-", dir=scratch))
    for item in spec.release_dir.iterdir():  # the lab's data files, as students have them
        if item.name != f"{spec.lab}.ipynb" and not item.name.startswith("."):
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, workdir / item.name)
    try:
        outcomes = _execute(spec, steps, workdir, options, mode, start, result)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for gid in result.max_scores:
        segments = [(s, outcomes.get(i)) for i, s in enumerate(steps) if s.test == gid]
        failure = next(((s, o) for s, o in segments if o is None or o["status"] != "ok"), None)
        if failure is None:
            result.scores[gid] = result.max_scores[gid]
        else:
            result.reasons[gid] = _reason(*failure)
    result.seconds = round(time.monotonic() - start, 2)
    return result


def _execute(spec, steps, workdir, options, mode, start, result) -> dict[int, dict]:
    """Run the steps with restarts: {step index: outcome} (see module doc, point 3)."""
    outcomes: dict[int, dict] = {}
    deadline = start + options.notebook_timeout
    worker: Worker | None = None
    restarts, i = 0, 0
    skip_test: str | None = None
    try:
        while i < len(steps):
            step = steps[i]
            if step.test is not None and step.test == skip_test:
                i += 1  # an earlier segment of this test failed: its later (hidden) segments never run
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                for j in range(i, len(steps)):
                    outcomes.setdefault(j, {"status": "error", "cap": True, "error": {
                        "type": "Timeout", "message": f"not run: the notebook reached its time cap of "
                                                      f"{options.notebook_timeout:.0f} s"}})
                result.notes.append(f"the notebook reached its time cap of {options.notebook_timeout:.0f} s")
                break
            try:
                if worker is None:
                    worker = Worker(spec, workdir, options, mode)
                    result.isolation = worker.isolation
                    worker.receive(min(left, max(60.0, options.cell_timeout)))  # ready
                    for j in range(i):  # replay what ran before, so that the next cells find their state
                        if j in outcomes and not outcomes[j].get("died"):
                            worker.run(steps[j], f"r{j}", max(1.0, min(options.cell_timeout, deadline - time.monotonic())))
                outcome = worker.run(step, f"s{i}", max(1.0, min(options.cell_timeout, deadline - time.monotonic())))
            except WorkerDied as exc:
                if worker is not None:
                    worker.close()
                worker = None
                outcome = {"status": "error", "died": True, "error": {"type": "Crash", "message": str(exc)}}
                restarts += 1
                if restarts > options.max_restarts:
                    outcomes[i] = outcome
                    for j in range(i + 1, len(steps)):
                        outcomes[j] = {"status": "error", "died": True, "error": {
                            "type": "Crash", "message": f"not run: the notebook crashed or timed out {restarts} times"}}
                    result.notes.append(f"gave up after {restarts} crashes or timeouts")
                    break
            outcomes[i] = outcome
            if not step.trusted and outcome["status"] != "ok":
                err = outcome["error"]
                result.notes.append(f"{step.label}: {err['type']}: {err['message'][:300]}")
            for note in outcome.get("notes", []):
                if not step.trusted or "restored" in note:
                    result.review.append(f"{step.label}: {note}")
            skip_test = step.test if step.test and outcome["status"] != "ok" else None
            i += 1
    finally:
        if worker is not None:
            worker.close()
    return outcomes


def _reason(step: Step, outcome: dict | None) -> str:
    """Why a test cell failed, without revealing hidden tests."""
    if outcome is None:
        return "not run"
    err = outcome.get("error") or {}
    kind, message = err.get("type", "Error"), err.get("message", "")
    if outcome.get("died") or outcome.get("cap"):
        return message
    if step.hidden and kind not in ("TamperError", "GradingRefused"):
        return f"hidden tests failed ({kind})"
    where = f" (line {err['line']} of the test cell)" if err.get("line") else ""
    return f"{kind}{where}: {message}" if message else f"{kind}{where}"


# ----------------------------------------------------------------------------- review flags
_SUSPICIOUS_MODULES = {"ctypes", "gc", "inspect", "threading", "_thread", "multiprocessing", "signal", "subprocess",
                       "socket", "builtins", "importlib", "faulthandler", "resource", "sqlite3", "shutil", "glob"}
_SUSPICIOUS_NAMES = {"_getframe", "settrace", "setprofile", "f_back", "f_locals", "f_globals", "tb_frame", "__code__",
                     "__closure__", "__globals__", "__builtins__", "__subclasses__", "_exit", "kill", "system",
                     "get_ipython", "addaudithook", "__torch_function__", "__torch_dispatch__", "__array_ufunc__"}
_SUSPICIOUS_CALLS = {"exec", "eval", "compile", "__import__", "setattr", "delattr", "globals", "open", "vars"}


def _module_aliases(steps: list[Step]) -> set[str]:
    """Names that refer to modules anywhere in the notebook (``import numpy as np`` -> ``np``)."""
    names = {"torch", "np", "numpy", "F", "nn", "math", "builtins", "sys", "os", "llmcourse"}
    for step in steps:
        tree = _parse(step.source)
        for node in ast.walk(tree) if tree else ():
            if isinstance(node, ast.Import):
                names |= {(a.asname or a.name).split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                names |= {a.asname or a.name for a in node.names}  # may be a submodule (from torch import nn)
    return names


def _root(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def review(steps: list[Step]) -> list[str]:
    """Constructs in student code that a correct answer never needs and an attack on the grader does
    (patching libraries, frame inspection, processes, files): for a human to look at. Static only."""
    flags: list[str] = []
    modules = _module_aliases(steps)
    for step in steps:
        if step.trusted:
            continue
        tree = _parse(step.source)
        if tree is None:
            continue
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {f"imports {a.name}" for a in node.names if a.name.split(".")[0] in _SUSPICIOUS_MODULES}
            elif isinstance(node, ast.ImportFrom) and node.module:
                if node.module.split(".")[0] in _SUSPICIOUS_MODULES:
                    found.add(f"imports {node.module}")
            elif isinstance(node, ast.Attribute) and node.attr in _SUSPICIOUS_NAMES:
                found.add(f"uses .{node.attr}")
            elif isinstance(node, ast.Name) and node.id in _SUSPICIOUS_NAMES:
                found.add(f"uses {node.id}")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _SUSPICIOUS_CALLS:
                if node.func.id not in ("setattr", "delattr") or (node.args and _root(node.args[0]) in modules):
                    found.add(f"calls {node.func.id}()")
            elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
                targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
                for target in targets:  # np.allclose = ..., torch.Tensor.__eq__ = ... (not model.weight = ...)
                    if isinstance(target, ast.Attribute) and _root(target) in modules:
                        found.add(f"assigns {ast.unparse(target)}")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in {
                    "__eq__", "__ne__", "__bool__", "__torch_function__", "__array__", "__instancecheck__"}:
                found.add(f"defines {node.name}")
            elif isinstance(node, ast.ClassDef) and any(
                    isinstance(s, ast.Assign) and any(isinstance(x, ast.Name) and x.id == "__module__" for x in s.targets)
                    for s in node.body):
                found.add(f"class {node.name} sets __module__")
        flags += [f"{step.label}: {item}" for item in sorted(found)]
    return flags


# ----------------------------------------------------------------------------- many notebooks
def grade_many(spec: LabSpec, notebooks: dict[str, Path], options: Options | None = None,
               scratch: Path | None = None) -> dict[str, LabResult]:
    """Grade ``{student: notebook}`` in parallel (``options.workers`` at once)."""
    options = options or default_options()
    mode, _ = sandbox.resolve_mode(options.sandbox)  # raises when a sandbox was asked for and cannot run
    with tempfile.TemporaryDirectory(prefix="llmcourse-work-", dir=scratch) as tmp:
        os.chmod(tmp, 0o700)

        def one(item):
            student, path = item
            failures = []
            for _ in range(2):  # a grader bug that is not the student's doing gets a second run
                try:
                    return grade_notebook(spec, student, path, options, mode, Path(tmp))
                except Exception as exc:  # noqa: BLE001 - a grader bug must not stop the class
                    failures.append(f"{type(exc).__name__}: {exc}")
            result = LabResult(student, spec.lab, error="grader error: " + failures[-1], sandbox=mode)
            result.max_scores = {c.grade_id: c.points for c in spec.tests}
            result.scores = {gid: 0.0 for gid in result.max_scores}
            result.review.append("the grader failed twice on this notebook (" + "; ".join(failures)
                                 + "): grade it by hand or report the bug")
            return result

        with ThreadPoolExecutor(max_workers=options.workers) as pool:
            results = list(pool.map(one, sorted(notebooks.items())))
    return {r.student: r for r in results}


def autograde(course_root: Path, lab: str, options: Options | None = None) -> dict[str, LabResult]:
    """Grade every ``course_root/submitted/<student>/<lab>/<lab>.ipynb`` (nbgrader's layout); a
    student folder without that notebook gets a result with an error."""
    spec = LabSpec.load(course_root, lab)
    notebooks, results = {}, {}
    for student_dir in sorted((course_root / "submitted").iterdir()):
        path = student_dir / lab / f"{lab}.ipynb"
        if path.is_file():
            notebooks[student_dir.name] = path
        elif (student_dir / lab).is_dir():
            results[student_dir.name] = LabResult(student_dir.name, lab, error="no notebook named " + path.name,
                                                  max_scores={c.grade_id: c.points for c in spec.tests},
                                                  scores={c.grade_id: 0.0 for c in spec.tests})
    results.update(grade_many(spec, notebooks, options or default_options(course_root)))
    return results


# ----------------------------------------------------------------------------- collecting a class
def collect(submissions: Path, labs: list[str], workdir: Path, only: str | None = None
            ) -> tuple[dict[str, dict[str, Path]], list[str]]:
    """Find ``{lab: {student: file}}`` in a folder or zip, and problems to report.

    A student is the first folder under ``submissions`` (``alice/lab1_transformers.ipynb``, nbgrader's
    ``alice/lab1_transformers/lab1_transformers.ipynb``) or, for loose files, the file name without the
    lab (``alice__lab1_transformers.ipynb``, ``alice_lab1_transformers.ipynb``). A file belongs to a lab
    when its name or folder names the lab (every file does with ``only``); any such file is graded,
    whatever its extension, so a PDF or a broken notebook is reported for its student. Other files
    (``torch.py``, data) are ignored."""
    problems: list[str] = []
    if submissions.is_file() and zipfile.is_zipfile(submissions):
        unpacked = workdir / "unpacked"
        with zipfile.ZipFile(submissions) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir() and "__MACOSX" not in i.filename]
            if sum(i.file_size for i in infos) > MAX_ZIP_BYTES:
                raise ValueError(f"{submissions} unpacks to more than {MAX_ZIP_BYTES >> 30} GiB")
            for info in infos:
                zf.extract(info, unpacked)  # zipfile drops absolute paths and '..'
        submissions = unpacked
    if not submissions.is_dir():
        raise ValueError(f"SUBMISSIONS ({submissions}) must be a folder or a .zip of notebooks")
    found: dict[str, dict[str, list[Path]]] = {lab: {} for lab in labs}
    students_seen: set[str] = set()
    for path in sorted(p for p in submissions.rglob("*") if p.is_file()):
        rel = path.relative_to(submissions)
        if any(part.startswith(".") or part in ("__pycache__", "feedback") for part in rel.parts):
            continue
        if len(rel.parts) > 1:
            students_seen.add(rel.parts[0])
        names = [p.lower() for p in rel.parts]
        lab = only or next((lab for lab in labs if any(lab in n for n in names)), None)
        if lab is None or (only and path.suffix in (".py", ".csv", ".txt", ".json")):
            continue
        if len(rel.parts) > 1:
            student = rel.parts[0]
        else:
            student = re.sub(rf"[_\-. ]*{re.escape(lab)}.*$", "", path.stem, flags=re.I) or path.stem
            student = student.split("__")[0]
        student = re.sub(r"[^A-Za-z0-9_.@-]", "_", student)
        found[lab].setdefault(student, []).append(path)
    chosen: dict[str, dict[str, Path]] = {}
    for lab, by_student in found.items():
        for student, paths in by_student.items():
            best = sorted(paths, key=lambda p: (p.suffix != ".ipynb", p.name != f"{lab}.ipynb",
                                                "checkpoint" in p.name, -p.stat().st_mtime))[0]
            if len(paths) > 1:
                problems.append(f"{student}: {len(paths)} files for {lab}, graded {best.relative_to(submissions)}")
            chosen.setdefault(lab, {})[student] = best
    graded = {s for subs in chosen.values() for s in subs}
    for student in sorted(students_seen - graded):
        problems.append(f"{student}: no file for any lab ({', '.join(labs)}) was found in their folder")
    return chosen, problems


# ----------------------------------------------------------------------------- reports
def write_csv(results: list[LabResult], path: Path, specs: dict[str, LabSpec]) -> None:
    columns = [c.grade_id for spec in specs.values() for c in spec.tests]
    fields = ["student", "lab", "score", "max_score", *columns, "status", "reasons", "review", "sandbox", "isolation", "seconds"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for r in results:
            writer.writerow({"student": r.student, "lab": r.lab, "score": _num(r.total), "max_score": _num(r.max_total),
                             **{gid: _num(v) for gid, v in r.scores.items()},
                             "status": f"error: {r.error}" if r.error else "graded",
                             "reasons": "; ".join(f"{gid}: {why}" for gid, why in r.reasons.items()),
                             "review": "; ".join(r.review), "sandbox": r.sandbox, "isolation": r.isolation, "seconds": r.seconds})


def _num(x: float) -> str:
    return f"{x:g}"


_CSS = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;width:100%}td,th{border:1px solid #ccc;padding:.3rem .5rem;text-align:left;
vertical-align:top}.ok{color:#1a7f37}.fail{color:#cf222e}pre{background:#f6f8fa;padding:.6rem;overflow-x:auto}"""


def feedback_html(result: LabResult, spec: LabSpec) -> str:
    """The student's feedback: per-test results, their answers and the visible tests only."""
    e = html.escape
    rows = []
    for c in spec.tests:
        got = result.scores.get(c.grade_id, 0.0)
        ok = got == c.points
        why = result.reasons.get(c.grade_id, "")
        rows.append(f"<tr><td>{e(c.grade_id)}</td><td class={'ok' if ok else 'fail'}>{_num(got)} / {_num(c.points)}"
                    f"</td><td>{'passed' if ok else e(why)}</td></tr>")
    parts = []
    for c in spec.cells:
        if c.kind == "answer":
            code = result.answers.get(c.grade_id)
            parts.append(f"<h3>Your answer: {e(c.grade_id)}</h3><pre>{e(code) if code is not None else '(not found)'}</pre>")
        elif c.kind == "test":
            parts.append(f"<h3>Test {e(c.grade_id)} (visible part; the grader also ran hidden tests)</h3>"
                         f"<pre>{e(_MARKER.sub('', c.release))}</pre>")
    notes = "".join(f"<li>{e(n)}</li>" for n in result.notes)
    error = f"<p class=fail><b>Not graded:</b> {e(result.error)}</p>" if result.error else ""
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{e(result.lab)}: {e(result.student)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{e(result.lab)}: feedback for {e(result.student)}</h1>{error}"
            f"<p><b>Score: {_num(result.total)} / {_num(result.max_total)}</b></p>"
            f"<table><tr><th>test</th><th>points</th><th>result</th></tr>{''.join(rows)}</table>"
            + (f"<h2>Notes</h2><ul>{notes}</ul>" if notes else "") + "<h2>Your notebook, as graded</h2>"
            + "".join(parts) + "</body></html>")


def calibration(course: Path, spec: LabSpec, options: Options, scratch: Path) -> LabResult:
    """Grade the instructor's solution once, outside the sandbox (it is trusted code): it must get full
    marks on this machine, and whatever it caches (converted models) is then there, read-only, for
    the sandboxed students."""
    source = course / "solutions" / spec.lab / f"{spec.lab}.ipynb"
    notebook = make_submission(course / "labs" / spec.lab / f"{spec.lab}.ipynb", answers_from_solution(source),
                               scratch / "calibration" / f"{spec.lab}.ipynb")
    return grade_notebook(spec, "(solution)", notebook, options, "none", scratch)


def grade_class(repo: Path, submissions: Path, out: Path, options: Options | None = None,
                only: str | None = None, course: Path | None = None, calibrate: bool = True) -> list[LabResult]:
    """``make grade``: collect, grade every lab found, write the CSV and the feedback (see module doc).
    ``course``: a scratch course made by :func:`scratch_course` (default: a new one from ``repo``);
    ``calibrate``: grade the solution first (see :func:`calibration`)."""
    options = options or default_options(repo)
    out = out.resolve()
    with tempfile.TemporaryDirectory(prefix="llmcourse-grade-") as tmp:
        generate = course is None  # only the labs that were handed in are generated (nbgrader: seconds each)
        course = course or scratch_course(repo, Path(tmp) / "course", labs=[])
        labs = nbtools.lab_ids(course)
        if only and only not in labs:
            raise ValueError(f"--lab {only}: the course has {labs}")
        _, warning = sandbox.resolve_mode(options.sandbox)
        if warning:
            print(f"{'!' * 78}\n{warning}\n{'!' * 78}", flush=True)
        found, problems = collect(submissions.resolve(), labs, Path(tmp), only)
        for problem in problems:
            print(f"note: {problem}", flush=True)
        if generate and found:
            nbtools.generate_labs(course, db=course / "gradebook.db", labs=sorted(found))
        specs = {lab: LabSpec.load(course, lab) for lab in found}
        results = []
        for lab, notebooks in found.items():
            if calibrate:
                check = calibration(course, specs[lab], options, Path(tmp))
                print(f"calibration: the solution of {lab} scores {_num(check.total)} / {_num(check.max_total)} "
                      f"({check.seconds:.0f} s)", flush=True)
                if check.total != check.max_total:
                    print(f"{'!' * 78}\nWARNING: the solution of {lab} does not get full marks here: "
                          f"{check.reasons}\nfix the environment before trusting these grades\n{'!' * 78}", flush=True)
            print(f"grading {len(notebooks)} submission(s) of {lab} ({options.workers} at a time) ...", flush=True)
            results += grade_many(specs[lab], notebooks, options, Path(tmp)).values()
    results.sort(key=lambda r: (r.lab, r.student))
    write_csv(results, out / "grades.csv", specs)
    for r in results:
        page = out / "feedback" / r.student / f"{r.lab}.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(feedback_html(r, specs[r.lab]))
    for r in results:
        line = f"  {r.lab:<24} {r.student:<24} {_num(r.total):>6} / {_num(r.max_total):<6}"
        if r.error:
            line += f" NOT GRADED: {r.error}"
        elif r.review:
            line += f" review: {len(r.review)} flag(s)"
        print(line)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coursekit.grading", description="Grade a class of notebooks.")
    parser.add_argument("submissions", type=Path, help="a folder of student notebooks, or a .zip of one")
    parser.add_argument("--out", type=Path, default=Path("grades"), help="where grades.csv and feedback/ go")
    parser.add_argument("--lab", help="grade every notebook as this lab (when file names do not say)")
    parser.add_argument("--jobs", type=int, default=0, help="notebooks graded at once (default: one per CPU)")
    parser.add_argument("--sandbox", default="auto", choices=["auto", "bwrap", "none"])
    parser.add_argument("--cell-timeout", type=float, help="seconds per cell (default: nbgrader_config.py)")
    parser.add_argument("--notebook-timeout", type=float, default=600.0, help="seconds per notebook")
    parser.add_argument("--memory", type=float, default=4.0, help="GiB of memory per notebook")
    parser.add_argument("--disk", type=float, default=1.0, help="GiB a notebook may write")
    parser.add_argument("--processes", type=int, default=256, help="processes and threads per notebook")
    args = parser.parse_args(argv)
    repo = nbtools.root()
    overrides = dict(notebook_timeout=args.notebook_timeout, memory_gib=args.memory, disk_gib=args.disk, processes=args.processes, jobs=args.jobs,
                     sandbox=args.sandbox)
    if args.cell_timeout:
        overrides["cell_timeout"] = args.cell_timeout
    options = default_options(repo, **overrides)
    try:
        results = grade_class(repo, args.submissions, args.out, options, args.lab)
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not results:
        print(f"no lab submissions found in {args.submissions}", file=sys.stderr)
        return 2
    print(f"wrote {args.out / 'grades.csv'} ({len(results)} rows) and {args.out / 'feedback'}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
