"""Confinement for code the course did not write: one process per student notebook.

With bubblewrap (``bwrap``, Debian package ``bubblewrap``) the process gets new namespaces (no network,
its own process tree, no capabilities) and a filesystem that holds only what it needs, read-only: the
operating system's libraries, the Python installation and virtual environment, the ``llmcourse``
package, and the course's model cache. Its one writable folder is its own scratch folder (plus an empty
``/tmp``). The instructor's solutions, the hidden tests, the gradebook, the grades and the other students'
submissions are simply not there. Resource limits cap memory (address space), file sizes and core dumps;
the grader adds a wall-clock limit and kills the whole process tree.

Without bubblewrap (``mode="none"``, or ``"auto"`` when it is missing) the process still runs on its own
with the same resource limits, but sees the whole filesystem: the grader then says so loudly.

    python -m llmcourse.sandbox            # report whether the sandbox works here
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

HOME = "/home/student"  # where the scratch folder appears inside the sandbox
GIB = 1 << 30
TMP_BYTES = 1 * GIB  # the sandbox's /tmp lives in memory: cap it


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed process."""

    memory_bytes: int = 4 * GIB  # address space (RLIMIT_AS): torch alone reserves about 0.7 GiB
    file_bytes: int = 1 * GIB  # largest file it may write (RLIMIT_FSIZE)
    open_files: int = 1024

    def __post_init__(self):
        if self.memory_bytes < GIB // 2:
            raise ValueError(f"memory_bytes ({self.memory_bytes}) must be at least 512 MiB: Python and torch need it")


def bwrap_problem() -> str:
    """Why bubblewrap cannot be used here ('' when it works)."""
    exe = shutil.which("bwrap")
    if exe is None:
        return "bubblewrap (bwrap) is not installed: `apt-get install -y bubblewrap`"
    probe = subprocess.run([exe, "--die-with-parent", "--unshare-all", "--cap-drop", "ALL", *_system_binds(),
                            "--proc", "/proc", "--dev", "/dev", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"bwrap is installed but cannot create a sandbox here: {probe.stderr.strip()[:300]}"
    return ""


def resolve_mode(mode: str) -> tuple[str, str]:
    """``auto`` | ``bwrap`` | ``none`` -> (the mode used, a warning or '')."""
    if mode not in ("auto", "bwrap", "none"):
        raise ValueError(f"sandbox mode ({mode!r}) must be 'auto', 'bwrap' or 'none'")
    if mode == "none":
        return "none", "the sandbox is off (--sandbox none): student code can read and write every file this user can"
    problem = bwrap_problem()
    if not problem:
        return "bwrap", ""
    if mode == "bwrap":
        raise RuntimeError(problem)
    return "none", (f"NO SANDBOX: {problem}. Each notebook still runs in its own process with memory and time "
                    "limits, but student code can read the hidden tests and other submissions.")


def readonly_paths() -> list[Path]:
    """What a worker needs to see: the Python installation, the virtual environment, this package,
    and the course's model cache (when it exists)."""
    import llmcourse

    paths = {Path(sys.base_prefix), Path(sys.prefix), Path(llmcourse.__file__).resolve().parent,
             Path(os.path.realpath(sys.executable)).parent.parent}
    paths |= {Path(sysconfig.get_paths()[k]) for k in ("stdlib", "purelib", "platlib")}
    cache = os.environ.get("LLMCOURSE_CACHE") or Path.home() / ".cache" / "llmcourse"
    if Path(cache).is_dir():
        paths.add(Path(cache))
    keep = sorted({p.resolve() for p in paths if p.exists()})
    # Drop paths inside another one, and /usr (bound on its own).
    return [p for p in keep if not any(q != p and q in p.parents for q in keep) and p != Path("/usr")
            and Path("/usr") not in p.parents]


def _system_binds() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/") / top
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    for etc in ("/etc/ld.so.cache", "/etc/localtime", "/etc/alternatives", "/etc/passwd", "/etc/group",
                "/etc/nsswitch.conf"):
        args += ["--ro-bind-try", etc, etc]
    return args


def command(inner: list[str], workdir: Path, mode: str) -> tuple[list[str], str]:
    """The argv that runs ``inner`` confined (``mode`` from :func:`resolve_mode`) and its working folder
    as the process sees it."""
    if mode == "none":
        return inner, str(workdir)
    args = ["bwrap", "--die-with-parent", "--new-session", "--unshare-all", "--cap-drop", "ALL",
            *_system_binds(), "--proc", "/proc", "--dev", "/dev", "--size", str(TMP_BYTES), "--tmpfs", "/tmp"]
    # Only the CPU description of /sys: torch reads it to size its thread pools.
    args += ["--ro-bind-try", "/sys/devices/system/cpu", "/sys/devices/system/cpu"]
    for path in readonly_paths():
        args += ["--ro-bind", str(path), str(path)]
    args += ["--bind", str(workdir), HOME, "--chdir", HOME, "--"]
    return args + inner, HOME


def limit_resources(limits: Limits):
    """A ``preexec_fn`` that applies ``limits`` in the child before it execs."""

    def apply() -> None:
        for which, value in ((resource.RLIMIT_AS, limits.memory_bytes), (resource.RLIMIT_FSIZE, limits.file_bytes),
                             (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NOFILE, limits.open_files)):
            soft, hard = resource.getrlimit(which)
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(which, (value, value))

    return apply


def main() -> int:
    mode, warning = resolve_mode("auto")
    print(f"sandbox: {mode}" + (f"\n{warning}" if warning else ""))
    if mode == "bwrap":
        print("read-only inside the sandbox:\n  " + "\n  ".join(str(p) for p in readonly_paths()))
    return 0 if mode == "bwrap" else 1


if __name__ == "__main__":
    sys.exit(main())
