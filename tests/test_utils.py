"""Tests for llmcourse.utils."""
from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

from llmcourse import utils


def test_configure_offline_sets_defaults(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("LLMCOURSE_ALLOW_HUB", raising=False)
    utils.configure_offline()
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_configure_offline_respects_opt_in_and_user_values(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setenv("LLMCOURSE_ALLOW_HUB", "1")
    utils.configure_offline()
    assert "HF_HUB_OFFLINE" not in os.environ
    monkeypatch.delenv("LLMCOURSE_ALLOW_HUB")
    utils.configure_offline()
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["TRANSFORMERS_OFFLINE"] == "0"  # setdefault: the user's choice wins


MODULES = ["utils", "attention", "positional", "transformer", "params", "data", "train", "models", "plots"]


def test_import_sets_offline_is_light_and_silent():
    code = (
        "import os, sys, importlib, llmcourse\n"
        "print(os.environ['HF_HUB_OFFLINE'], 'transformers' in sys.modules, 'matplotlib' in sys.modules)\n"
        f"for name in {MODULES!r}: importlib.import_module('llmcourse.' + name)\n"
        "print(llmcourse.attention.causal_mask(2).sum().item())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "LLMCOURSE_ALLOW_HUB")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.split() == ["1", "False", "False", "3"]  # offline; heavy libraries not imported
    assert result.stderr == ""


def test_get_device(monkeypatch):
    monkeypatch.delenv("LLMCOURSE_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert utils.get_device().type == expected
    assert utils.get_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("LLMCOURSE_DEVICE", "cpu")
    assert utils.get_device() == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_get_device_rejects_missing_cuda():
    with pytest.raises(ValueError, match="CUDA is not available"):
        utils.get_device("cuda")


def test_seed_everything_reproduces_all_generators():
    def draw():
        return (np.random.rand(), torch.rand(3), __import__("random").random())

    utils.seed_everything(123)
    first = draw()
    utils.seed_everything(123)
    second = draw()
    utils.seed_everything(124)
    third = draw()
    assert first[0] == second[0] and first[2] == second[2]
    torch.testing.assert_close(first[1], second[1], rtol=0, atol=0)
    assert first[0] != third[0]
    with pytest.raises(ValueError, match="-1"):
        utils.seed_everything(-1)


def test_quiet_is_idempotent_and_silences_transformers():
    import transformers.utils.logging as hf_logging

    utils.quiet()
    n_filters = len(__import__("warnings").filters)
    utils.quiet()
    assert len(__import__("warnings").filters) == n_filters
    assert hf_logging.get_verbosity() == hf_logging.ERROR
    assert not hf_logging.is_progress_bar_enabled()


def test_count_parameters_trainable_and_tied():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    assert utils.count_parameters(model) == 80
    model[1].weight = model[0].weight  # tie: (10, 4) shared
    assert utils.count_parameters(model) == 40
    model[0].weight.requires_grad_(False)
    assert utils.count_parameters(model, trainable_only=True) == 0


def test_cache_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMCOURSE_CACHE", str(tmp_path / "c"))
    path = utils.cache_dir("a", "b")
    assert path == tmp_path / "c" / "a" / "b" and path.is_dir()


def test_progress_writes_to_stdout_and_can_be_disabled(capsys, monkeypatch):
    monkeypatch.delenv("LLMCOURSE_NO_PROGRESS", raising=False)
    assert list(utils.progress(range(3), desc="x")) == [0, 1, 2]
    captured = capsys.readouterr()
    assert "x" in captured.out and captured.err == ""
    monkeypatch.setenv("LLMCOURSE_NO_PROGRESS", "1")
    assert list(utils.progress(range(3), desc="y")) == [0, 1, 2]
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_benchmark_measures_median():
    with utils.num_threads(2):
        assert utils.timer() is time.perf_counter
        seconds = utils.benchmark(time.sleep, 0.01, warmup=0, repeat=3)
    assert 0.009 < seconds < 0.5


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine may have initialised CUDA")
def test_one_thread_benchmarks_count_cpu_time_not_waiting():
    """Inside num_threads(1) the clock is the thread's CPU time: sleeping (or waiting for a core that
    another process holds) costs nothing, computing does."""
    with utils.num_threads(1):
        assert utils.timer() is time.thread_time
        assert utils.benchmark(time.sleep, 0.05, warmup=0, repeat=3) < 0.01
        x = torch.randn(256, 256)
        assert utils.benchmark(lambda: [x @ x for _ in range(20)], repeat=3) > 1e-4
    with pytest.raises(ValueError, match="repeat=0"):
        utils.benchmark(time.sleep, 0.0, repeat=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error")
def test_peak_memory_requires_cuda():
    with pytest.raises(ValueError, match="cpu"):
        utils.peak_memory(lambda: None, device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_peak_memory_cuda():
    used = utils.peak_memory(lambda: torch.empty(1024, 1024, device="cuda"), device="cuda")
    assert used >= 4 * 1024 * 1024


def test_atomic_write_dir_success_and_failure(tmp_path):
    final = tmp_path / "entry"
    with pytest.raises(RuntimeError):
        with utils.atomic_write_dir(final) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("boom")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary folder was removed
    with utils.atomic_write_dir(final) as tmp:
        (tmp / "a.txt").write_text("done")
        assert not final.exists()  # nothing visible before the end
    assert (final / "a.txt").read_text() == "done"
    with utils.atomic_write_dir(final) as tmp:  # someone else already finished: keep theirs
        (tmp / "a.txt").write_text("second")
    assert (final / "a.txt").read_text() == "done"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]


def _hold_lock(path, queue):
    with utils.file_lock(path):
        queue.put("locked")
        time.sleep(1.0)


def test_num_threads_sets_and_restores():
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    with utils.num_threads(target):
        assert torch.get_num_threads() == target
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), utils.num_threads(target):
        raise RuntimeError("restored even on error")
    assert torch.get_num_threads() == before
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="positive integer"), utils.num_threads(bad):
            pass


def test_thread_count_changes_float_sums():
    """Why num_threads and REPRODUCIBLE_ENV exist: one and several threads add partial sums in another
    order, so a large reduction differs in its last bits (skipped on a one-core machine)."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core")
    x = torch.randn(4_000_000, generator=torch.Generator().manual_seed(0))
    with utils.num_threads(1):
        one = x.sum()
    with utils.num_threads(2):
        two = x.sum()
    assert one.item() != two.item() and torch.allclose(one, two, rtol=1e-5)


def test_file_lock_excludes_other_processes(tmp_path):
    lock = tmp_path / "x.lock"
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_hold_lock, args=(lock, queue))
    proc.start()
    try:
        assert queue.get(timeout=60) == "locked"
        with pytest.raises(TimeoutError):
            with utils.file_lock(lock, timeout=0.2):
                pass
        start = time.monotonic()
        with utils.file_lock(lock, timeout=30):
            waited = time.monotonic() - start
        assert waited > 0.05  # had to wait for the other process
    finally:
        proc.join(timeout=30)
