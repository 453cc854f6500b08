"""The lint rule ruff cannot check: every ``noqa`` comment names its rules and says why (CONTRIBUTING.md, "Lint").

ruff itself reports a bare ``noqa`` (PGH004) and one that silences nothing (RUF100); `make lint` runs it."""

from __future__ import annotations

import io
import os
import re
import tokenize
from pathlib import Path

from conftest import REPO

SKIP = {".venv", "labs", "build", "__pycache__"}  # what ruff does not lint (pyproject.toml, .gitignore)
NOQA = re.compile(r"#\s*noqa\b", re.I)
WELL_FORMED = re.compile(r"#\s*noqa: [A-Z]+[0-9]+(?:, [A-Z]+[0-9]+)* - \S")


def _sources():
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = sorted(d for d in dirs if d not in SKIP and not d.startswith("."))
        yield from (Path(folder) / f for f in sorted(files) if f.endswith(".py"))


def test_every_noqa_names_its_rules_and_a_reason():
    bad = []
    for path in _sources():
        tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
        for tok in tokens:
            if tok.type == tokenize.COMMENT and NOQA.search(tok.string) and not WELL_FORMED.search(tok.string):
                bad.append(f"{path.relative_to(REPO)}:{tok.start[0]}: {tok.string}")
    assert not bad, "write `# noqa: CODE - why` (CONTRIBUTING.md, Lint):\n" + "\n".join(bad)
