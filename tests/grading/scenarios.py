"""What students actually hand in: the grading scenarios of the issue "Grading that survives a real
class", as fixture submissions of the fixture lab (``fixture_course/solutions/fixture_lab``), each with
the score it must get on every test cell and the words its reasons must contain.

A scenario builds the files of one student's folder from the generated release notebook (JSON) and the
solution's answers; ``tests/test_grading_scenarios.py`` grades them all in one batch through
``coursekit.grading.grade_class`` (the code behind ``make grade``) and checks every expectation.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field

LAB = "fixture_lab"
FULL = {"softmax_test": 2.0, "softmax_axis_test": 1.0, "count_test": 1.0, "mask_test": 2.0, "total_test": 1.0}
ZERO = {gid: 0.0 for gid in FULL}


def scores(**lost: float) -> dict[str, float]:
    """Full marks except the named test cells, which get the given score (usually 0)."""
    return {**FULL, **lost}


@dataclass
class Context:
    """What a scenario builds from: the release notebook, the solution's answers, and paths that an
    attacking submission tries to reach (scenario 8)."""

    release: dict
    solution: dict[str, str]
    targets: dict[str, str] = field(default_factory=dict)

    def notebook(self, answers: dict[str, str] | None = None) -> dict:
        """The release with the solution's answers, overridden by ``answers`` (a copy)."""
        nb = copy.deepcopy(self.release)
        chosen = {**self.solution, **(answers or {})}
        for cell in nb["cells"]:
            cell["source"] = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            gid = cell["metadata"].get("nbgrader", {}).get("grade_id")
            if gid in chosen and cell["metadata"]["nbgrader"].get("solution"):
                cell["source"] = chosen[gid]
        return nb


def cell(nb: dict, grade_id: str) -> dict:
    return next(c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == grade_id)


def dumps(nb: dict) -> bytes:
    return json.dumps(nb, indent=1).encode()


@dataclass
class Scenario:
    """One student's folder (``files``: name -> bytes) and what grading must make of it."""

    number: int  # the scenario of the issue it covers
    build: Callable[[Context], dict[str, bytes]]
    expected: dict[str, float] | None  # per test cell; None: the file is reported, not graded
    reasons: dict[str, str] = field(default_factory=dict)  # test cell -> words its reason contains
    error: str = ""  # words the "not graded" error contains
    note: str = ""  # words one of the notes contains
    review: str = ""  # words one of the review flags contains
    needs_bwrap: bool = False
    needs_cgroup: str = ""  # a cgroup controller the scenario is only safe with (a fork bomb needs pids)


def notebook_only(answers: dict[str, str] | None = None, edit: Callable[[dict], None] | None = None):
    def build(ctx: Context) -> dict[str, bytes]:
        nb = ctx.notebook(answers)
        if edit:
            edit(nb)
        return {f"{LAB}.ipynb": dumps(nb)}

    return build


# ----------------------------------------------------------------------------- wrong answers
WRONG = {
    "softmax_answer": "def softmax(x, axis=-1):\n    return np.exp(x) / np.exp(x).sum()  # wrong axis, overflows\n",
    "count_answer": "def count_params(d_in, d_out, bias=True):\n    return d_in * d_out  # forgot the bias\n",
    "mask_answer": "def causal_mask(T):\n    return np.ones((T, T), dtype=bool)  # sees the future\n",
    "total_answer": "def running_total(xs):\n    return list(xs)\n",
}


# 1. Locked test cells edited, emptied, or turned into markdown: graded on the original tests.
def _edit_tests(nb: dict) -> None:
    cell(nb, "softmax_test")["source"] = "pass  # the student replaced the test"
    cell(nb, "softmax_axis_test")["source"] = ""
    count = cell(nb, "count_test")
    count["cell_type"] = "markdown"
    count.pop("outputs", None)
    count.pop("execution_count", None)
    cell(nb, "mask_test")["source"] = "assert True"


# 2. A test cell deleted, or its nbgrader metadata stripped: restored and graded.
def _delete_tests(nb: dict) -> None:
    nb["cells"].remove(cell(nb, "softmax_test"))
    cell(nb, "count_test")["metadata"] = {}
    mask = cell(nb, "mask_test")
    mask["metadata"] = {}
    mask["source"] = "# I removed the assertions\n"


# 3. Duplicated answer and test cells (duplicate cell ids).
def _duplicate(nb: dict) -> None:
    cells = nb["cells"]
    answer = cell(nb, "count_answer")
    stub = copy.deepcopy(answer)
    stub["source"] = "def count_params(d_in, d_out, bias=True):\n    # YOUR CODE HERE\n    raise NotImplementedError()"
    cells.insert(cells.index(answer), stub)  # the stub first, the real answer second: same id twice
    test = cell(nb, "mask_test")
    cells.insert(cells.index(test) + 1, copy.deepcopy(test))


# 4. Infinite loops: one inside a graded function, one at the top level of an answer cell.
LOOPS = {
    "count_answer": "def count_params(d_in, d_out, bias=True):\n    n = 0\n    while True:\n        n += 1\n",
    "mask_answer": "while True:  # a loop at the top level of the cell\n    pass\n\ndef causal_mask(T):\n    return np.tril(np.ones((T, T), dtype=bool))\n",
}
CAP = {gid: "while True:\n    pass\n" for gid in ("softmax_answer", "count_answer", "mask_answer", "total_answer")}

# 5. Memory exhaustion, os._exit and a segmentation fault, each in one part.
MEMORY = {"softmax_answer": "def softmax(x, axis=-1):\n    blocks = []\n    while True:\n"
                            "        blocks.append(np.empty(1 << 24))  # 128 MiB more each time\n"}
EXIT = {"count_answer": "import os\n\ndef count_params(d_in, d_out, bias=True):\n    os._exit(3)\n"}
SEGFAULT = {"total_answer": "import faulthandler\n\ndef running_total(xs):\n    faulthandler._sigsegv()\n"}

# 5b. Hostile neighbours: a fork bomb, memory spread over child processes (each under the per-process
# limit), and a disk filler. Each answer still works, and fails its test only if the limit it runs into
# was missing; the honest submissions graded beside them keep full marks.
FORK_BOMB = {"count_answer": (
    "import os, time\n"
    "_forks = 0\n"
    "while _forks < 600:\n"
    "    try:\n"
    "        _pid = os.fork()\n"
    "    except OSError:  # the notebook's process limit\n"
    "        break\n"
    "    if _pid == 0:\n"
    "        time.sleep(3)\n"
    "        os._exit(0)\n"
    "    _forks += 1\n\n"
    "def count_params(d_in, d_out, bias=True):\n"
    "    if _forks >= 600:\n"
    "        raise RuntimeError('no process limit: 600 processes started')\n"
    "    return d_in * d_out + (d_out if bias else 0)\n")}
MEMORY_CHILDREN = {"softmax_answer": (
    "import os, signal, time\n"
    "_children = []\n"
    "for _ in range(3):  # 3 x 1 GiB at once, each child under the 2 GiB per-process limit\n"
    "    _pid = os.fork()\n"
    "    if _pid == 0:\n"
    "        try:\n"
    "            _blocks = [np.ones(16 << 20) for _ in range(8)]  # 8 x 128 MiB, touched\n"
    "        except MemoryError:\n"
    "            os._exit(3)\n"
    "        os._exit(0)\n"
    "    _children.append(_pid)\n"
    "# Unlimited, the three finish in about a second. At the group's limit the kernel first evicts pages (a\n"
    "# busy machine can take many seconds) and then kills one: either shows the limit.\n"
    "_deadline, _status = time.monotonic() + 6, {}\n"
    "while len(_status) < len(_children) and time.monotonic() < _deadline:\n"
    "    for _pid in _children:\n"
    "        if _pid not in _status:\n"
    "            _done, _st = os.waitpid(_pid, os.WNOHANG)\n"
    "            if _done:\n"
    "                _status[_pid] = _st\n"
    "    time.sleep(0.05)\n"
    "_held = [_pid for _pid in _children if _pid not in _status]\n"
    "for _pid in _held:\n"
    "    os.kill(_pid, signal.SIGKILL)\n"
    "    os.waitpid(_pid, 0)\n"
    "_killed = [_pid for _pid, _st in _status.items() if os.WIFSIGNALED(_st) and os.WTERMSIG(_st) == signal.SIGKILL]\n"
    "_limited = bool(_held or _killed)\n\n"
    "def softmax(x, axis=-1):\n"
    "    if not _limited:\n"
    "        raise RuntimeError('no memory limit across processes: 3 GiB in 3 children')\n"
    "    e = np.exp(x - x.max(axis=axis, keepdims=True))\n"
    "    return e / e.sum(axis=axis, keepdims=True)\n")}
DISK_FILLER = {"total_answer": (
    "_written = 0\n"
    "try:\n"
    "    for _i in range(40):  # 2.5 GiB in 64 MiB files\n"
    "        with open(f'filler_{_i}.bin', 'wb') as _f:\n"
    "            for _ in range(64):\n"
    "                _f.write(bytes(1 << 20))\n"
    "                _written += 1 << 20\n"
    "except OSError:  # no space left: the notebook's disk limit\n"
    "    pass\n\n"
    "def running_total(xs):\n"
    "    if _written >= 40 * 64 << 20:\n"
    "        raise RuntimeError('no disk limit: 2.5 GiB written')\n"
    "    out, total = [], 0\n"
    "    for x in xs:\n"
    "        total += x\n"
    "        out.append(total)\n"
    "    return out\n")}

# 6. Library noise on stderr inside graded calls: a progress bar, warnings, logging, raw fd 2.
NOISE = {
    "softmax_answer": (
        "import sys, warnings, logging, os\n"
        "from tqdm.auto import tqdm\n\n"
        "def softmax(x, axis=-1):\n"
        "    for _ in tqdm(range(3), desc='softmax'):\n"
        "        pass\n"
        "    warnings.warn('a UserWarning from a library', UserWarning)\n"
        "    logging.getLogger('lib').warning('a logged warning')\n"
        "    print('progress 50%', file=sys.stderr)\n"
        "    os.write(2, b'noise written by C code\\n')\n"
        "    z = np.exp(x - x.max(axis=axis, keepdims=True))\n"
        "    return z / z.sum(axis=axis, keepdims=True)\n"),
    "count_answer": (
        "import warnings\n\ndef count_params(d_in, d_out, bias=True):\n"
        "    warnings.warn('deprecated', DeprecationWarning)\n"
        "    warnings.warn('something looks off', RuntimeWarning)\n"
        "    return d_in * d_out + (d_out if bias else 0)\n"),
}

# 7. Objects that lie to comparisons; monkeypatched numpy helpers; an overridden assertion helper.
LIARS = {
    "softmax_answer": (
        "class Fine(np.ndarray):\n"
        "    def __array_ufunc__(self, *args, **kwargs):\n"
        "        return True\n"
        "    def __eq__(self, other):\n"
        "        return True\n\n"
        "def softmax(x, axis=-1):\n"
        "    return np.zeros_like(np.asarray(x, dtype=float)).view(Fine)\n"),
    "count_answer": (
        "class AlwaysEqual:\n"
        "    def __eq__(self, other):\n"
        "        return True\n\n"
        "def count_params(d_in, d_out, bias=True):\n"
        "    return AlwaysEqual()\n"),
    "mask_answer": (
        "class Mask(list):\n"
        "    dtype = bool\n"
        "    shape = (3, 3)\n"
        "    def __eq__(self, other):\n"
        "        return True\n\n"
        "def causal_mask(T):\n"
        "    return Mask([[False] * T] * T)\n"),
    "total_answer": (
        "class Total(int):\n"
        "    def __eq__(self, other):\n"
        "        return True\n\n"
        "def running_total(xs):\n"
        "    return Total(0)\n"),
}
PATCHES = {
    **WRONG,
    "softmax_answer": (
        "import builtins\nimport numpy\n"
        "numpy.testing.assert_allclose = lambda *args, **kwargs: None\n"
        "np.allclose = lambda *args, **kwargs: True\n"
        "np.array_equal = lambda *args, **kwargs: True\n"
        "builtins.isinstance = lambda obj, cls: True\n"
        "def check_close(*args, **kwargs):  # the tests' helper, overridden\n"
        "    return None\n"
        "get_ipython().set_custom_exc((BaseException,), lambda *args, **kwargs: None)\n"
        "get_ipython().input_transformers_cleanup.append(lambda lines: ['pass\\n'])\n"
        "def softmax(x, axis=-1):\n"
        "    return x\n"),
}
RUNTIME = {
    **WRONG,
    "softmax_answer": (  # patches the helpers while the test runs, then puts them back when used
        "import numpy\n"
        "def softmax(x, axis=-1):\n"
        "    real = numpy.testing.assert_allclose\n"
        "    def fake(*args, **kwargs):\n"
        "        numpy.testing.assert_allclose = real\n"
        "    numpy.testing.assert_allclose = fake\n"
        "    np.allclose = lambda *args, **kwargs: True\n"
        "    return x\n"),
    "mask_answer": (  # a thread that keeps the patch in place
        "import threading, time\n"
        "def _keep_patching():\n"
        "    while True:\n"
        "        np.array_equal = lambda *args, **kwargs: True\n"
        "        time.sleep(0.001)\n"
        "threading.Thread(target=_keep_patching, daemon=True).start()\n"
        "def causal_mask(T):\n"
        "    return np.ones((T, T), dtype=bool)\n"),
    "count_answer": (  # edits the helper's code object in place
        "def count_params(d_in, d_out, bias=True):\n"
        "    check_close.__code__ = (lambda *args, **kwargs: None).__code__\n"
        "    return 0\n"),
}


# 8. Reading solutions, hidden tests, other submissions or the gradebook; writing grades.
ESCAPE = '''import glob, json, re

TARGETS = {targets!r}

def _texts():
    """Every file that could hold the instructor's notebook: the known paths, then a search."""
    paths = [TARGETS["solution"], TARGETS["source_ipynb"], TARGETS["other"]]
    for pattern in ("/tmp/**/fixture_lab*", "/work/*/solutions/*/*.py", "/work/*/tests/grading/*/solutions/*/*.py"):
        paths += glob.glob(pattern, recursive=True)[:100]
    for path in paths:
        try:
            text = open(path).read()
        except OSError:
            continue
        if path.endswith(".ipynb"):
            text = "\\n".join("".join(c["source"]) for c in json.loads(text)["cells"])
        yield text

def softmax(x, axis=-1):
    for text in _texts():
        match = re.search(r"def softmax.*?### END SOLUTION", text, re.S)
        if match and "BEGIN SOLUTION" in match.group(0):
            space = {{"np": np}}
            exec(match.group(0).replace("### BEGIN SOLUTION", "").replace("### END SOLUTION", ""), space)
            return space["softmax"](x, axis)
    raise NotImplementedError("the solution was nowhere to be found")
'''
VANDAL = '''import glob, os

def _vandalise():
    for path in [*{targets!r}.values(), *glob.glob("/tmp/**/gradebook.db", recursive=True),
                 *glob.glob("/tmp/**/grades.csv", recursive=True)]:
        for name in (path, os.path.join(os.path.dirname(path), "PWNED")):
            try:
                with open(name, "a") as fh:
                    fh.write("student,lab,score\\nmallory,fixture_lab,100\\n")
            except OSError:
                pass

def count_params(d_in, d_out, bias=True):
    _vandalise()
    return 0
'''


def _escape(ctx: Context) -> dict[str, bytes]:
    answers = {"softmax_answer": ESCAPE.format(targets=ctx.targets),
               "count_answer": VANDAL.format(targets=ctx.targets)}
    return {f"{LAB}.ipynb": dumps(ctx.notebook({**WRONG, **answers}))}


# 9. Extra files that shadow real modules.
SHADOW = b'raise SystemExit("a shadowing module was imported")\n'


def _extra_files(ctx: Context) -> dict[str, bytes]:
    return {f"{LAB}.ipynb": dumps(ctx.notebook()), "numpy.py": SHADOW, "torch.py": SHADOW,
            "llmcourse.py": SHADOW, "sitecustomize.py": SHADOW, "notes.txt": b"my notes"}


# 10. Notebooks saved by Colab (no cell ids, nbgrader metadata dropped) and VS Code (other metadata).
def _colab(nb: dict) -> None:
    nb["nbformat_minor"] = 0
    nb["metadata"] = {"colab": {"provenance": [], "name": f"{LAB}.ipynb"}, "kernelspec": {"name": "python3",
                      "display_name": "Python 3"}, "language_info": {"name": "python"}, "accelerator": "GPU"}
    for n, c in enumerate(nb["cells"]):
        c.pop("id", None)
        c["metadata"] = {"id": f"colab{n:04x}"}
        if c["cell_type"] == "code":
            c["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["ran on colab\n"],
                             "metadata": {"outputId": f"out{n}"}}] if n % 3 == 0 else []
            c["execution_count"] = None
        c["source"] = c["source"].splitlines(keepends=True)


def _vscode(nb: dict) -> None:
    nb["metadata"] = {"kernelspec": {"name": "python3", "display_name": ".venv (Python 3.11.7)", "language": "python"},
                      "language_info": {"name": "python", "version": "3.11.7", "mimetype": "text/x-python"},
                      "vscode": {"interpreter": {"hash": "0" * 64}}}
    for c in nb["cells"]:
        c["metadata"]["vscode"] = {"languageId": "python"}
        c["metadata"].get("nbgrader", {}).pop("checksum", None)


# 11. Files that are not notebooks.
CORRUPT = b'{\n "cells": [\n  {\n   "cell_type": "code",\n   "source": ["def softmax(x'


SCENARIOS: dict[str, Scenario] = {
    "honest": Scenario(0, notebook_only(), FULL),
    "untouched": Scenario(0, lambda ctx: {f"{LAB}.ipynb": dumps(ctx.release)}, ZERO,
                          reasons={gid: "NotImplementedError" for gid in FULL}),
    "honest_wrong": Scenario(0, notebook_only({"count_answer": WRONG["count_answer"]}), scores(count_test=0.0)),
    "edited_tests": Scenario(1, notebook_only({k: v for k, v in WRONG.items() if k != "total_answer"}, _edit_tests),
                             scores(softmax_test=0.0, softmax_axis_test=0.0, count_test=0.0, mask_test=0.0),
                             note="graded with the original tests"),
    "deleted_tests": Scenario(2, notebook_only({"mask_answer": WRONG["mask_answer"]}, _delete_tests),
                              scores(mask_test=0.0), note="restored deleted"),
    "duplicated_cells": Scenario(3, notebook_only(edit=_duplicate), FULL, note="appears 2 times"),
    "infinite_loops": Scenario(4, notebook_only(LOOPS), scores(count_test=0.0, mask_test=0.0),
                               reasons={"count_test": "timed out", "mask_test": "NameError"}),
    "memory_hog": Scenario(5, notebook_only(MEMORY), scores(softmax_test=0.0, softmax_axis_test=0.0),
                           reasons={"softmax_test": "memory"}),
    "fork_bomb": Scenario(5, notebook_only(FORK_BOMB), FULL, needs_cgroup="pids"),
    "memory_in_children": Scenario(5, notebook_only(MEMORY_CHILDREN), FULL, needs_cgroup="memory"),
    "disk_filler": Scenario(5, notebook_only(DISK_FILLER), FULL, needs_bwrap=True),
    "os_exit": Scenario(5, notebook_only(EXIT), scores(count_test=0.0), reasons={"count_test": "exit code 3"}),
    "segfault": Scenario(5, notebook_only(SEGFAULT), scores(total_test=0.0),
                         reasons={"total_test": "segmentation fault"}),
    "stderr_noise": Scenario(6, notebook_only(NOISE), FULL),
    "lying_objects": Scenario(7, notebook_only(LIARS), ZERO, reasons={"count_test": "__eq__"}, review="defines __eq__"),
    "patched_helpers": Scenario(7, notebook_only(PATCHES), ZERO, review="assigns np.allclose"),
    "patching_at_runtime": Scenario(7, notebook_only(RUNTIME), ZERO,
                                    reasons={"softmax_test": "changed the test environment", "mask_test": "thread"}),
    "sandbox_escape": Scenario(8, _escape, ZERO, needs_bwrap=True),
    "extra_files": Scenario(9, _extra_files, FULL),
    "colab": Scenario(10, notebook_only(edit=_colab), FULL),
    "colab_wrong": Scenario(10, notebook_only({"count_answer": WRONG["count_answer"]}, _colab), scores(count_test=0.0)),
    "vscode": Scenario(10, notebook_only({"mask_answer": WRONG["mask_answer"]}, _vscode), scores(mask_test=0.0)),
    "empty_file": Scenario(11, lambda ctx: {f"{LAB}.ipynb": b""}, None, error="empty"),
    "corrupted_json": Scenario(11, lambda ctx: {f"{LAB}.ipynb": CORRUPT}, None, error="invalid JSON"),
    "not_a_notebook": Scenario(11, lambda ctx: {f"{LAB}.pdf": b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n"}, None,
                               error="not a notebook"),
    "json_not_notebook": Scenario(11, lambda ctx: {f"{LAB}.ipynb": b'["a list", "not a notebook"]'}, None,
                                  error="not a Jupyter notebook"),
}

# The whole-notebook wall-clock cap (scenario 4) is graded on its own with a short cap.
CAP_SCENARIO = Scenario(4, notebook_only(CAP), ZERO, reasons={"total_test": "time cap"}, note="time cap")
