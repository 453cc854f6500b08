"""scripts/gpu_check.py (``make gpu-check``): the CPU smoke mode runs end to end on tiny shapes, and its
report has every section of the GPU table. (The GPU figures themselves need a CUDA machine.)"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO

SCRIPT = REPO / "scripts" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_markdown_table():
    table = load_script().markdown_table(["a", "b"], [[1, "x"], [2, "y"]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | x |", "| 2 | y |"]


def test_attention_section_smoke_compares_triton_with_sdpa():
    pytest.importorskip("triton")
    section = load_script().attention_section(torch.device("cpu"), smoke=True)
    rows = [line for line in section.splitlines() if line.startswith("| float16")]
    assert len(rows) == 4  # full and causal, two lengths
    for row in rows:
        max_diff = float(row.strip("| ").split("|")[-1])
        assert max_diff < 5e-3, row  # the interpreted kernel agrees with SDPA in fp16


def test_smoke_mode_runs_end_to_end(tmp_path):
    """`python scripts/gpu_check.py --smoke`: every section present, exit status 0, report written."""
    pytest.importorskip("triton")
    out = tmp_path / "report.md"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg", LLMCOURSE_NO_PROGRESS="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "No CUDA device" in proc.stdout
    report = out.read_text()
    for title in ("Triton attention vs SDPA", "Tiled PyTorch attention vs naive attention", "LoRA training step",
                  "MoE layer vs dense FFN", "KV-cache decoding"):
        assert f"### {title}" in report, f"section '{title}' missing from the report"
    assert "FAILED" not in report
