"""Every module README's claims table quotes what its notebooks print.

A notebook prints each measured claim with :func:`llmcourse.utils.claim` as one line
``claim <id>: <text>``. A README row names its notebook and that id in the "Notebook" column; every
number in its "Measured" column must appear in the stored line. So a README cannot keep a number that
the stored notebook no longer prints (the way "1.33×" outlived a re-run that printed 1.20×).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from llmcourse.utils import claim

from conftest import REPO

MODULES = sorted(p for p in (REPO / "modules").iterdir() if p.is_dir())
CLAIM_LINE = re.compile(r"^claim (m[1-4]-[a-z0-9-]+): (.*)$")
CLAIM_ID = re.compile(r"^m[1-4]-[a-z0-9]+(-[a-z0-9]+)*$")
# A number as a reader sees it: 644,480 / 1.20 / 95.3 / 1e-3 / 0.71 in "0.71-0.82". Not the digits
# inside a word (SmolLM2, q_proj1) or after a dot (h.1.attn).
NUMBER = re.compile(r"(?<![\w.])\d+(?:,\d{3})*(?:\.\d+)?(?:e[-+]?\d+)?")
UNMEASURED = "**still to be measured"  # a GPU row this machine cannot fill (the text says so)


def numbers(text: str) -> list[str]:
    text = re.sub(r"\]\([^)]*\)", "]", text)  # link targets
    text = re.sub(r"`[^`]*`", "", text)  # code: names, not measurements
    return NUMBER.findall(text)


def claims_rows(readme: Path) -> list[dict]:
    """The rows of the README's claims table: claim, notebook cell, measured cell, line number."""
    rows, in_table = [], False
    for lineno, line in enumerate(readme.read_text().splitlines(), 1):
        if line.startswith("| Claim"):
            in_table = True
            continue
        if in_table and not line.startswith("|"):
            in_table = False
        if in_table and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            assert len(cells) == 3, f"{readme}:{lineno}: a claims row has 3 columns, found {len(cells)}"
            rows.append({"claim": cells[0], "where": cells[1], "measured": cells[2], "line": lineno})
    return rows


def printed_claims(ipynb: Path) -> Counter:
    """``claim <id>: <text>`` lines in the stored stdout of a notebook, counted by (id, text)."""
    found: Counter = Counter()
    for cell in json.loads(ipynb.read_text())["cells"]:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stdout":
                for line in "".join(out.get("text", "")).splitlines():
                    match = CLAIM_LINE.match(line)
                    if match:
                        found[match.groups()] += 1
    return found


def module_claims(module: Path) -> dict[str, tuple[str, str]]:
    """claim id -> (notebook stem, printed text) over the module's stored notebooks; ids printed twice fail."""
    seen: dict[str, tuple[str, str]] = {}
    for ipynb in sorted(module.glob("[0-9]*.ipynb")):
        for (cid, text), count in printed_claims(ipynb).items():
            assert count == 1 and cid not in seen, f"{ipynb.name} prints claim {cid} more than once"
            seen[cid] = (ipynb.stem, text)
    return seen


def check_module(module: Path) -> list[str]:
    """What in the module's README claims table disagrees with its stored notebooks (empty: nothing)."""
    readme = module / "README.md"
    rows = claims_rows(readme)
    if not rows:
        return [f"{readme} has no claims table"]
    printed = module_claims(module)
    demos = {p.stem for p in module.glob("[0-9]*.py")}
    problems, named = [], set()
    for row in rows:
        where = f"{module.name}/README.md:{row['line']}"
        ticks = re.findall(r"`([^`]+)`", row["where"])
        ids = [t for t in ticks if CLAIM_ID.match(t)]
        stems = [t.removesuffix(".py") for t in ticks if t.removesuffix(".py") in demos]
        if not stems:
            problems.append(f"{where}: names no notebook of {module.name}: {row['where']!r}")
            continue
        if not ids:
            if not row["measured"].startswith(UNMEASURED):
                problems.append(f"{where}: names no claim id (`m{module.name[1]}-...`) in {row['where']!r}")
            continue
        text = ""
        for cid in ids:
            named.add(cid)
            if cid not in printed:
                problems.append(f"{where}: claim {cid} is not printed by any stored notebook of {module.name}")
            elif printed[cid][0] not in stems:
                problems.append(f"{where}: claim {cid} is printed by {printed[cid][0]}, the row names {stems}")
            else:
                text += " " + printed[cid][1]
        if not any(p.startswith(where) for p in problems):
            missing = [n for n in numbers(row["measured"]) if n not in numbers(text)]
            if missing:
                problems.append(f"{where}: {missing} in the README row are not in the printed line(s): {text.strip()!r}")
    orphans = sorted(set(printed) - named)
    if orphans:
        problems.append(f"{module.name}/README.md: printed claims that no row names: {orphans}")
    return problems


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_readme_claims_match_stored_outputs(module):
    problems = check_module(module)
    assert not problems, "README claims disagree with the stored outputs:\n" + "\n".join(problems)


def test_numbers_are_read_as_a_reader_reads_them():
    assert numbers("1.20× / 0.96×, 644,480 (99.66% fewer), 1e-3, r=8, 0.71-0.82") == [
        "1.20", "0.96", "644,480", "99.66", "1e-3", "8", "0.71", "0.82"]
    assert numbers("SmolLM2 h.1.attn q_proj `GPTConfig(n_head=4)` [x](04_lora.ipynb)") == []


def test_a_stale_row_is_caught(tmp_path):
    """The check has teeth: a README number the notebook no longer prints fails it."""
    module = tmp_path / "02_demo"
    module.mkdir()
    (module / "01_x.py").write_text("")
    nb = {"cells": [{"cell_type": "code", "outputs": [
        {"output_type": "stream", "name": "stdout", "text": ["claim m2-merge: unmerged 1.20×, merged 0.96×\n"]}]}]}
    (module / "01_x.ipynb").write_text(json.dumps(nb))
    row = "| Merging is free | `01_x` `m2-merge` | unmerged {} , merged 0.96× |"
    (module / "README.md").write_text(f"| Claim | Notebook | Measured |\n|---|---|---|\n{row.format('1.20×')}\n")
    assert check_module(module) == []
    (module / "README.md").write_text(f"| Claim | Notebook | Measured |\n|---|---|---|\n{row.format('1.33×')}\n")
    (problem,) = check_module(module)
    assert "['1.33']" in problem
    (module / "README.md").write_text(f"| Claim | Notebook | Measured |\n|---|---|---|\n{row.format('1.20×')}\n"
                                      "| Orphan | `01_x` | no id |\n")
    (problem,) = check_module(module)
    assert "names no claim id" in problem


def test_claim_prints_one_line(capsys):
    assert claim("m2-lora-merge", "1.20×") is None  # a cell ending with it shows the line once
    assert capsys.readouterr().out == "claim m2-lora-merge: 1.20×\n"
    for bad_id in ("lora", "m5-x", "m2-Bad", "m2-"):
        with pytest.raises(ValueError, match="claim id"):
            claim(bad_id, "1")
    for bad_text in ("a\nb", "a\rb", "a\u2028b", "  ", 3):
        with pytest.raises(ValueError, match="one non-empty line"):
            claim("m2-x", bad_text)
