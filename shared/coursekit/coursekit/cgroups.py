"""One control group per graded notebook: the memory of all its processes, their number and a CPU share.

Per-process limits (``setrlimit``) do not hold against a hostile notebook: a fork bomb multiplies the
processes (and a pid namespace does not cap their number), each with its own memory limit, and a hundred
spinning processes take the CPU from every other notebook graded beside them. A control group caps what
the notebook's whole process tree uses, children included.

The group is made under the grader's own group, in whichever hierarchy this machine mounts: cgroup v1
(one folder per controller, ``/sys/fs/cgroup/memory`` ...) or v2 (one unified tree), controller by
controller. It needs write access there (root, or a delegated v2 subtree; v2 hands its memory controller
down only from a group without processes, so a grader inside such a group gets pids and cpu only); where
a controller cannot be used, :func:`create` leaves it out and says which in :attr:`CGroup.missing`, and the caller falls back to
per-process limits (``coursekit.sandbox.limit_resources``: address space per process, ``RLIMIT_NPROC``
for an unprivileged user).

    python -m coursekit.cgroups        # report what this machine allows
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

CONTROLLERS = ("memory", "pids", "cpu")
_OPTIONAL = {"memory.swap.max", "memory.memsw.limit_in_bytes"}  # only where the kernel accounts swap
CPU_SHARES = 1024  # v1 cpu.shares (v2 cpu.weight 100): every notebook the same share of the CPU


@dataclass
class CGroup:
    """The groups made for one notebook: controller -> (cgroup version, folder)."""

    dirs: dict[str, tuple[str, Path]] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # controller -> why it is not used

    @property
    def description(self) -> str:
        """For the grades' isolation column: 'cgroup v1: memory, pids, cpu' or what is missing."""
        if not self.dirs:
            return "no cgroup"
        versions = sorted({v for v, _ in self.dirs.values()})
        text = f"cgroup {'+'.join(versions)}: {', '.join(self.dirs)}"
        return text + (f" (no {', '.join(self.missing)})" if self.missing else "")

    def enter(self) -> None:
        """Move the calling process into the group (a ``preexec_fn``: its children follow it)."""
        pid = str(os.getpid())
        for folder in {folder for _, folder in self.dirs.values()}:
            (folder / "cgroup.procs").write_text(pid)

    def pids(self) -> set[int]:
        out: set[int] = set()
        for folder in {folder for _, folder in self.dirs.values()}:
            try:
                out |= {int(p) for p in (folder / "cgroup.procs").read_text().split()}
            except OSError:
                pass
        return out

    def kill(self) -> None:
        """SIGKILL every process left in the group (a process that left its session or pid namespace
        included)."""
        for version, folder in set(self.dirs.values()):
            if version == "v2" and (folder / "cgroup.kill").exists():
                try:
                    (folder / "cgroup.kill").write_text("1")
                except OSError:
                    pass
        for _ in range(50):
            left = self.pids()
            if not left:
                return
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.02)

    def remove(self) -> None:
        """Kill what is left and delete the group's folders."""
        self.kill()
        for _, folder in set(self.dirs.values()):
            for _ in range(50):
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # busy while the kernel reaps the last processes
                    time.sleep(0.02)
            else:
                print(f"coursekit: could not remove the cgroup {folder} (processes left in it)", file=sys.stderr)
        self.dirs.clear()


def _mounts(mountinfo: str) -> list[tuple[str, set[str], str, Path]]:
    """The cgroup mounts of /proc/self/mountinfo: (version, controllers, root inside the hierarchy, mount point)."""
    out = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        after = line.split(" - ", 1)[1].split()
        if len(after) < 3 or after[0] not in ("cgroup", "cgroup2"):
            continue
        root, point = fields[3], Path(fields[4].replace("\\040", " "))
        controllers = set(after[2].split(",")) & set(CONTROLLERS) if after[0] == "cgroup" else set()
        out.append(("v1" if after[0] == "cgroup" else "v2", controllers, root, point))
    return out


def own_groups(proc_cgroup: str | None = None, mountinfo: str | None = None) -> dict[str, tuple[str, Path]]:
    """controller -> (version, folder of this process's own group), for the controllers this machine
    mounts: each line of ``/proc/self/cgroup`` is a path inside a hierarchy, and ``/proc/self/mountinfo``
    says where that hierarchy is mounted and from which of its folders (a container sees its own group as
    the mount's root). v1 folders win over the v2 tree; a controller is only ever in one."""
    text = proc_cgroup if proc_cgroup is not None else Path("/proc/self/cgroup").read_text()
    mounts = _mounts(mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text())
    found: dict[str, tuple[str, Path]] = {}

    def folder(root: str, point: Path, path: str) -> Path | None:
        rel = os.path.relpath(path, root) if root != "/" else path.lstrip("/")
        return None if rel.startswith("..") else point / ("" if rel == "." else rel)

    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and not controllers:
            for version, _, root, point in mounts:
                base = folder(root, point, path) if version == "v2" else None
                if base is None:
                    continue
                try:
                    available = (base / "cgroup.controllers").read_text().split()
                except OSError:
                    available = []
                for name in CONTROLLERS:
                    if name in available:
                        found.setdefault(name, ("v2", base))
                break
        else:
            wanted = set(controllers.split(",")) & set(CONTROLLERS)
            for version, names, root, point in mounts:
                if version == "v1" and wanted and wanted <= names:
                    base = folder(root, point, path)
                    if base is not None:
                        for name in wanted:
                            found[name] = ("v1", base)
                    break
    return found


def _limits(version: str, controller: str, memory_bytes: int, processes: int) -> dict[str, str]:
    if controller == "memory":  # swap counted too (v1 memsw, v2 swap.max), where the kernel accounts it
        return {"memory.limit_in_bytes": str(memory_bytes), "memory.memsw.limit_in_bytes": str(memory_bytes)} \
            if version == "v1" else {"memory.max": str(memory_bytes), "memory.swap.max": "0"}
    if controller == "pids":
        return {"pids.max": str(processes)}
    return {"cpu.shares": str(CPU_SHARES)} if version == "v1" else {"cpu.weight": "100"}


def create(memory_bytes: int, processes: int, name: str | None = None,
           groups: dict[str, tuple[str, Path]] | None = None) -> CGroup:
    """A new group under this process's own, with ``memory_bytes`` for all its processes together and at
    most ``processes`` tasks (threads count). Never raises for a machine that does not allow it: what
    could not be set up is in ``missing``."""
    if memory_bytes <= 0 or processes <= 0:
        raise ValueError(f"memory_bytes ({memory_bytes}) and processes ({processes}) must be positive")
    name = name or f"coursekit-{os.getpid()}-{secrets.token_hex(4)}"
    group = CGroup()
    try:
        groups = own_groups() if groups is None else groups
    except (OSError, ValueError) as exc:
        groups = {}
        group.missing = {c: f"cannot read /proc/self/cgroup ({exc})" for c in CONTROLLERS}
    for controller in CONTROLLERS:
        if controller not in groups:
            group.missing.setdefault(controller, "not mounted")
            continue
        version, base = groups[controller]
        folder = base / name
        try:
            if version == "v2":  # the parent must hand the controller down to its children
                control = (base / "cgroup.subtree_control")
                if controller not in control.read_text().split():
                    control.write_text(f"+{controller}")
            folder.mkdir(exist_ok=True)
            for key, value in _limits(version, controller, memory_bytes, processes).items():
                target = folder / key
                if target.exists() or key not in _OPTIONAL:
                    target.write_text(value)
        except OSError as exc:
            why = exc.strerror or str(exc)
            if version == "v2" and exc.errno == errno.EBUSY:  # "no internal processes": the grader sits in base
                why += (" (cgroup v2 hands the memory controller down only from a group without processes, "
                        "and the grader runs in this one)")
            group.missing[controller] = f"{folder}: {why}"
            try:
                if folder.exists() and not any(f == folder for _, f in group.dirs.values()):
                    folder.rmdir()
            except OSError:
                pass
            continue
        group.dirs[controller] = (version, folder)
    return group


def main() -> int:
    group = create(1 << 30, 256)
    try:
        print(group.description)
        for controller, why in group.missing.items():
            print(f"  {controller}: {why}")
    finally:
        group.remove()
    return 0 if not group.missing else 1


if __name__ == "__main__":
    sys.exit(main())
