"""`make bench` helpers: a demo script's wall and CPU time, and its error tail when it fails."""

from __future__ import annotations

from coursekit import bench


def test_time_script_reports_wall_and_cpu_time(tmp_path):
    script = tmp_path / "busy.py"
    script.write_text("total = sum(i * i for i in range(3_000_000))\nprint(total)\n")
    seconds, cpu, error = bench.time_script(script)
    assert error == ""
    assert seconds > 0 and 0 < cpu < seconds * 4  # the child's CPU time is counted, not ours


def test_time_script_returns_the_error_tail(tmp_path):
    script = tmp_path / "broken.py"
    script.write_text("raise ValueError('demo broke here')\n")
    _, _, error = bench.time_script(script)
    assert "ValueError: demo broke here" in error


def test_row_marks_over_budget_and_failures():
    assert bench._row("a.py", 61.0, 60.0, "", cpu=90.0).endswith("OVER BUDGET")
    assert "(cpu   90.0 s)" in bench._row("a.py", 61.0, 60.0, "", cpu=90.0)
    assert bench._row("a.py", 1.0, 60.0, "boom").endswith("FAILED")
    assert bench._row("a.py", 1.0, 60.0, "").endswith("ok")
