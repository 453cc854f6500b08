"""One control group per graded notebook: the memory of all its processes, their number and a CPU share.

Per-process limits (``setrlimit``) do not hold against a hostile notebook: a fork bomb multiplies the
processes (and a pid namespace does not cap their number), each with its own memory limit, and a hundred
spinning processes take the CPU from every other notebook graded beside them. A control group caps what
the notebook's whole process tree uses, children included.

The group is made under the grader's own group, in whichever hierarchy this machine mounts: cgroup v1
(one folder per controller, ``/sys/fs/cgroup/memory`` ...) or v2 (one unified tree), controller by
controller. It needs write access there (root, or a delegated v2 subtree); where a controller cannot be
used, :func:`create` leaves it out and says which in :attr:`CGroup.missing`, and the caller falls back to
per-process limits (``coursekit.sandbox.limit_resources``: address space per process, ``RLIMIT_NPROC``
for an unprivileged user).

    python -m coursekit.cgroups        # report what this machine allows
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

CONTROLLERS = ("memory", "pids", "cpu")
ROOT = Path("/sys/fs/cgroup")
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
        self.dirs.clear()


def own_groups(proc_cgroup: str | None = None, root: Path = ROOT) -> dict[str, tuple[str, Path]]:
    """controller -> (version, folder of this process's own group), for the controllers this machine
    mounts (``/proc/self/cgroup``; v1 folders win over the v2 tree, a controller is only in one)."""
    text = proc_cgroup if proc_cgroup is not None else Path("/proc/self/cgroup").read_text()
    found: dict[str, tuple[str, Path]] = {}
    for line in text.splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if hierarchy == "0" and not controllers:
            for mount in (root, root / "unified"):
                if (mount / "cgroup.controllers").exists():
                    base = mount / rel
                    try:
                        available = (base / "cgroup.controllers").read_text().split()
                    except OSError:
                        available = []
                    for name in CONTROLLERS:
                        if name in available:
                            found.setdefault(name, ("v2", base))
                    break
        else:
            for name in controllers.split(","):
                if name in CONTROLLERS:
                    for mount in (root / name, root / controllers):
                        if mount.is_dir():
                            found[name] = ("v1", mount / rel)
                            break
    return found


def _limits(version: str, controller: str, memory_bytes: int, processes: int) -> dict[str, str]:
    if controller == "memory":
        return {"memory.limit_in_bytes": str(memory_bytes)} if version == "v1" else \
            {"memory.max": str(memory_bytes), "memory.swap.max": "0"}
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
    except OSError as exc:
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
                if target.exists() or key != "memory.swap.max":
                    target.write_text(value)
        except OSError as exc:
            group.missing[controller] = f"{folder}: {exc.strerror or exc}"
            if folder.exists() and not any(f == folder for _, f in group.dirs.values()):
                try:
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
