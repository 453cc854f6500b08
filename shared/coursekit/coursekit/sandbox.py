"""Confinement for code the course did not write: one process per student notebook.

With bubblewrap (``bwrap``, Debian package ``bubblewrap``) the process gets new namespaces (no network,
its own process tree, no capabilities) and a filesystem that holds only what it needs, read-only: the
operating system's libraries, the Python installation and virtual environment, the course's
packages, and the model cache. Its home folder is a tmpfs of ``--disk`` GiB (the lab's files in it
read-only, its log the one file bound from the grading machine's disk), plus an empty ``/tmp``; ``/sys/fs/cgroup``
is not there, so the notebook cannot change its own cgroup (``coursekit.cgroups``). The instructor's
solutions, the hidden tests, the gradebook, the grades and the other students' submissions are simply not
there. Resource limits cap memory (address space), file sizes and core dumps; the grader adds a
wall-clock limit and kills the whole process tree.

Without bubblewrap (only with an explicit ``mode="none"``: ``"auto"`` stops when bwrap cannot run) the
process still runs on its own with the same resource limits, but sees the whole filesystem, and as the
grading user it could rewrite its own cgroup limits: the grader says so loudly.

    python -m coursekit.sandbox            # report whether the sandbox works here
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

    memory_bytes: int = 4 * GIB  # address space (RLIMIT_AS) and, in the cgroup, all processes together
    file_bytes: int = 1 * GIB  # largest file it may write (RLIMIT_FSIZE)
    open_files: int = 1024
    processes: int = 256  # tasks (processes and threads) of the whole notebook: cgroup pids.max, RLIMIT_NPROC
    disk_bytes: int = 1 * GIB  # what it may write to its home folder (a tmpfs in bwrap, watched without)

    def __post_init__(self):
        if self.memory_bytes < GIB // 2:
            raise ValueError(f"memory_bytes ({self.memory_bytes}) must be at least 512 MiB: Python and torch need it")
        if self.processes < 16 or self.disk_bytes < 1 << 20:
            raise ValueError(f"processes ({self.processes}) must be at least 16 (torch starts threads) and "
                             f"disk_bytes ({self.disk_bytes}) at least 1 MiB")


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
    """``auto`` | ``bwrap`` | ``none`` -> (the mode used, a warning or ''). ``auto`` is bwrap when it works
    and a RuntimeError saying why when it does not: grading without a sandbox takes an explicit ``none``."""
    if mode not in ("auto", "bwrap", "none"):
        raise ValueError(f"sandbox mode ({mode!r}) must be 'auto', 'bwrap' or 'none'")
    if mode == "none":
        return "none", "the sandbox is off (--sandbox none): student code can read and write every file this user can"
    problem = bwrap_problem()
    if not problem:
        return "bwrap", ""
    if mode == "bwrap":
        raise RuntimeError(problem)
    raise RuntimeError(f"no sandbox: {problem}. Without it student code can read the hidden tests and the "
                       "other submissions; to grade anyway, say so: --sandbox none (make grade GRADE_ARGS=\"--sandbox none\")")


def readonly_paths() -> list[Path]:
    """What a worker needs to see: the Python installation, the virtual environment, the course's two
    packages (the student library ``llmcourse`` and this one, where the worker lives), and the course's
    model cache (when it exists)."""
    paths = {Path(sys.base_prefix), Path(sys.prefix), Path(os.path.realpath(sys.executable)).parent.parent}
    paths |= {package_dir(name) for name in ("llmcourse", "coursekit")} - {None}
    paths |= {Path(sysconfig.get_paths()[k]) for k in ("stdlib", "purelib", "platlib")}
    cache = os.environ.get("LLMCOURSE_CACHE") or Path.home() / ".cache" / "llmcourse"
    if Path(cache).is_dir():
        paths.add(Path(cache))
    keep = sorted({p.resolve() for p in paths if p.exists()})
    # Drop paths inside another one, and /usr (bound on its own).
    return [p for p in keep if not any(q != p and q in p.parents for q in keep) and p != Path("/usr")
            and Path("/usr") not in p.parents]


def package_dir(name: str) -> Path | None:
    """The folder of an installed top-level package, found without importing it (importing ``llmcourse``
    would load torch); None when it is not installed."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]).resolve() if locations else None


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


WRITABLE = (".worker.log",)  # the files of the scratch folder the process may write (bound read-write)


def command(inner: list[str], workdir: Path, mode: str, home_bytes: int = 1 * GIB) -> tuple[list[str], str]:
    """The argv that runs ``inner`` confined (``mode`` from :func:`resolve_mode`) and its working folder
    as the process sees it. In bwrap that folder is a tmpfs of ``home_bytes`` (what the notebook writes
    never reaches the grading machine's disk) holding, read-only, what ``workdir`` holds now (the lab's
    data files), and the files named in WRITABLE read-write."""
    if mode == "none":
        return inner, str(workdir)
    args = ["bwrap", "--die-with-parent", "--new-session", "--unshare-all", "--cap-drop", "ALL",
            *_system_binds(), "--proc", "/proc", "--dev", "/dev", "--size", str(TMP_BYTES), "--tmpfs", "/tmp"]
    # Only the CPU description of /sys: torch reads it to size its thread pools.
    args += ["--ro-bind-try", "/sys/devices/system/cpu", "/sys/devices/system/cpu"]
    for path in readonly_paths():
        args += ["--ro-bind", str(path), str(path)]
    args += ["--size", str(home_bytes), "--tmpfs", HOME]
    for item in sorted(workdir.iterdir()):
        args += ["--bind" if item.name in WRITABLE else "--ro-bind", str(item), f"{HOME}/{item.name}"]
    args += ["--chdir", HOME, "--"]
    return args + inner, HOME


def tree_bytes(path: Path, stop_at: int | None = None) -> int:
    """Bytes of the files under ``path`` (allocated blocks, so sparse files count what they use); stops
    counting once past ``stop_at``."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
            except OSError:
                continue
            if stop_at is not None and total > stop_at:
                return total
    return total


def user_processes(uid: int | None = None) -> int:
    """How many processes (threads included) the user ``uid`` runs now: what RLIMIT_NPROC counts."""
    uid = os.getuid() if uid is None else uid
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry.name}/task"))
            except OSError:
                continue
    return count


def limit_resources(limits: Limits, group=None):
    """A ``preexec_fn`` that moves the child into ``group`` (a :class:`coursekit.cgroups.CGroup`, or None)
    and applies ``limits`` before it execs. Without a pids controller the process count is capped by
    RLIMIT_NPROC instead, which counts all of the user's processes (so it is set to those running now plus
    ``limits.processes``) and does not bind root."""
    rules = [(resource.RLIMIT_AS, limits.memory_bytes), (resource.RLIMIT_FSIZE, limits.file_bytes),
             (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NOFILE, limits.open_files)]
    if (group is None or "pids" not in group.dirs) and os.getuid() != 0:
        rules.append((resource.RLIMIT_NPROC, user_processes() + limits.processes))

    def apply() -> None:
        if group is not None:
            try:
                group.enter()
            except OSError:  # the group vanished: the rlimits below still apply
                pass
        for which, value in rules:
            soft, hard = resource.getrlimit(which)
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(which, (value, value))

    return apply


def main() -> int:
    try:
        mode, warning = resolve_mode("auto")
    except RuntimeError as exc:
        print(f"sandbox: none\n{exc}")
        return 1
    print(f"sandbox: {mode}" + (f"\n{warning}" if warning else ""))
    if mode == "bwrap":
        print("read-only inside the sandbox:\n  " + "\n  ".join(str(p) for p in readonly_paths()))
    return 0 if mode == "bwrap" else 1


if __name__ == "__main__":
    sys.exit(main())
