"""Isolation of one graded notebook from the others (coursekit.cgroups, coursekit.sandbox): control
groups found and made in a fake cgroup tree for v1 and v2, the fallbacks, the bwrap home folder, and the
rule that grading without a sandbox takes an explicit --sandbox none. The hostile notebooks themselves
(fork bomb, memory spread over children, disk filler) are graded in tests/test_grading_scenarios.py."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from coursekit import cgroups, grading, sandbox

V1 = "8:pids:/\n4:memory:/jobs/42\n1:cpu,cpuacct:/\n0::/\n"
V2 = "0::/user.slice/grader.scope\n"


def _mountinfo(root, entries) -> str:
    """A /proc/self/mountinfo with one line per (fstype, options, root inside the hierarchy, mount point)."""
    return "".join(f"{30 + i} 23 0:{40 + i} {inner} {root / point} rw,relatime - {kind} {kind} rw,{options}\n"
                   for i, (kind, options, inner, point) in enumerate(entries))


def _fake_v1(root):
    for name in ("pids", "memory/jobs/42", "cpu,cpuacct"):
        (root / name).mkdir(parents=True)
    info = _mountinfo(root, [("cgroup", "pids", "/", "pids"), ("cgroup", "memory", "/", "memory"),
                             ("cgroup", "cpu,cpuacct", "/", "cpu,cpuacct")])
    return root, info


def test_own_groups_reads_v1_and_v2_hierarchies(tmp_path):
    root, info = _fake_v1(tmp_path / "v1")
    assert cgroups.own_groups(V1, info) == {"pids": ("v1", root / "pids"),
                                            "memory": ("v1", root / "memory" / "jobs" / "42"),
                                            "cpu": ("v1", root / "cpu,cpuacct")}
    unified = tmp_path / "v2"
    base = unified / "user.slice" / "grader.scope"
    base.mkdir(parents=True)
    (base / "cgroup.controllers").write_text("memory pids\n")
    info = _mountinfo(tmp_path, [("cgroup2", "nsdelegate", "/", "v2")])
    assert cgroups.own_groups(V2, info) == {"memory": ("v2", base), "pids": ("v2", base)}


def test_own_groups_inside_a_container_strips_the_mount_root(tmp_path):
    """Docker without a cgroup namespace: /proc/self/cgroup says /docker/abc, and /sys/fs/cgroup/memory
    already is that group (the mount's root is /docker/abc)."""
    (tmp_path / "memory").mkdir()
    info = _mountinfo(tmp_path, [("cgroup", "memory", "/docker/abc", "memory")])
    assert cgroups.own_groups("4:memory:/docker/abc\n", info) == {"memory": ("v1", tmp_path / "memory")}
    assert cgroups.own_groups("4:memory:/elsewhere\n", info) == {}  # outside what is mounted: unusable


def test_create_sets_every_limit_and_says_what_is_missing(tmp_path):
    root, info = _fake_v1(tmp_path)
    group = cgroups.create(3 << 30, 99, name="nb", groups=cgroups.own_groups(V1, info))
    assert not group.missing and group.description == "cgroup v1: memory, pids, cpu"
    assert (root / "memory" / "jobs" / "42" / "nb" / "memory.limit_in_bytes").read_text() == str(3 << 30)
    assert not (root / "memory" / "jobs" / "42" / "nb" / "memory.memsw.limit_in_bytes").exists()  # no swap accounting
    assert (root / "pids" / "nb" / "pids.max").read_text() == "99"
    assert (root / "cpu,cpuacct" / "nb" / "cpu.shares").read_text() == str(cgroups.CPU_SHARES)
    partial = cgroups.create(1 << 30, 64, name="p", groups={"pids": ("v1", root / "pids")})
    assert set(partial.dirs) == {"pids"} and set(partial.missing) == {"memory", "cpu"}
    assert partial.description == "cgroup v1: pids (no memory, cpu)"
    assert cgroups.create(1 << 30, 64, groups={}).description == "no cgroup"
    with pytest.raises(ValueError, match="processes"):
        cgroups.create(1 << 30, 0)


def test_a_v2_parent_that_cannot_delegate_leaves_the_controller_out(tmp_path):
    base = tmp_path / "scope"
    base.mkdir()
    control = base / "cgroup.subtree_control"
    control.write_text("")
    control.chmod(0o444)
    group = cgroups.create(1 << 30, 64, name="nb", groups={"pids": ("v2", base)})
    if os.getuid() == 0:  # root writes through the mode bits: the fake parent accepts the delegation
        assert set(group.dirs) == {"pids"} and (base / "nb" / "pids.max").read_text() == "64"
    else:
        assert not group.dirs and "pids" in group.missing and not (base / "nb").exists()


def test_a_real_group_caps_processes_and_is_removed(tmp_path):
    group = cgroups.create(1 << 30, 20)
    if "pids" in group.missing:
        group.remove()
        pytest.skip(f"no writable pids controller here: {group.missing['pids']}")
    try:
        code = ("import os, time\nn = 0\nwhile n < 200:\n    try:\n        pid = os.fork()\n    except OSError:\n"
                "        break\n    if pid == 0:\n        os.closerange(0, 3)\n        time.sleep(5)\n        os._exit(0)\n    n += 1\nprint(n)\n")
        proc = subprocess.run([sys.executable, "-c", code], preexec_fn=group.enter, capture_output=True, text=True,
                              timeout=60)
        assert int(proc.stdout) < 20, proc.stdout  # the children hold their slots: the 20th fork fails
        assert group.pids(), "the sleeping children are still in the group"
    finally:
        folders = [folder for _, folder in group.dirs.values()]
        group.remove()
    assert not group.pids() and not any(f.exists() for f in folders)


def test_without_a_pids_controller_an_unprivileged_user_gets_rlimit_nproc(monkeypatch):
    limits = sandbox.Limits(processes=32)
    applied = {}
    monkeypatch.setattr(resource, "setrlimit", lambda which, value: applied.__setitem__(which, value))
    monkeypatch.setattr(sandbox, "user_processes", lambda uid=None: 100)
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    sandbox.limit_resources(limits, cgroups.CGroup())()
    assert applied[resource.RLIMIT_NPROC][0] in (132, resource.getrlimit(resource.RLIMIT_NPROC)[1])
    applied.clear()
    with_pids = cgroups.CGroup(dirs={"pids": ("v1", Path("/nowhere"))})
    monkeypatch.setattr(with_pids, "enter", lambda: None)
    sandbox.limit_resources(limits, with_pids)()  # the pids controller does it: no RLIMIT_NPROC
    assert resource.RLIMIT_NPROC not in applied and resource.RLIMIT_AS in applied
    applied.clear()
    monkeypatch.setattr(os, "getuid", lambda: 0)
    sandbox.limit_resources(limits, None)()
    assert resource.RLIMIT_NPROC not in applied and applied[resource.RLIMIT_AS][0] <= limits.memory_bytes


def test_auto_without_a_sandbox_stops_and_names_the_way_out(monkeypatch):
    monkeypatch.setattr(sandbox, "bwrap_problem", lambda: "bubblewrap (bwrap) is not installed")
    with pytest.raises(RuntimeError, match="--sandbox none"):
        sandbox.resolve_mode("auto")
    with pytest.raises(RuntimeError, match="not installed"):
        sandbox.resolve_mode("bwrap")
    mode, warning = sandbox.resolve_mode("none")
    assert mode == "none" and "sandbox is off" in warning


def test_bwrap_home_is_a_capped_tmpfs_with_the_lab_files_read_only(tmp_path):
    (tmp_path / "data.txt").write_text("x")
    (tmp_path / ".worker.log").touch()
    argv, inside = sandbox.command(["python"], tmp_path, "bwrap", home_bytes=5 << 20)
    home = argv.index(inside)
    assert argv[home - 3:home + 1] == ["--size", str(5 << 20), "--tmpfs", inside]
    assert ["--ro-bind", str(tmp_path / "data.txt"), f"{inside}/data.txt"] == argv[argv.index(str(tmp_path / "data.txt")) - 1:][:3]
    assert ["--bind", str(tmp_path / ".worker.log"), f"{inside}/.worker.log"] == argv[argv.index(str(tmp_path / ".worker.log")) - 1:][:3]


def test_without_bwrap_a_notebook_that_fills_its_folder_is_stopped(tmp_path):
    spec = grading.LabSpec("lab", [], tmp_path, [], [])
    options = grading.Options(cell_timeout=30, notebook_timeout=60, memory_gib=1.0, disk_gib=8 / 1024, sandbox="none")
    worker = grading.Worker(spec, tmp_path, options, "none")
    try:
        worker.receive(30)  # ready
        fill = ("import time\nwith open('big.bin', 'wb') as f:\n    for _ in range(64):\n"
                "        f.write(bytes(1 << 20)); f.flush(); time.sleep(0.05)\n")
        with pytest.raises(grading.WorkerDied, match="wrote more than"):
            worker.run(grading.Step("answer", fill, False), "s0", 20)
    finally:
        worker.close()
    assert sandbox.tree_bytes(tmp_path) > 8 << 20


@pytest.mark.skipif(bool(sandbox.bwrap_problem()), reason="bubblewrap cannot run here")
def test_inside_bwrap_the_lab_files_are_read_only_and_the_cgroup_tree_is_hidden(tmp_path):
    (tmp_path / "data.txt").write_text("lab data")
    (tmp_path / ".worker.log").touch()
    code = ("import os\n"
            "print(open('data.txt').read())\n"
            "try:\n    open('data.txt', 'w')\nexcept OSError as e:\n    print('read-only', e.errno)\n"
            "open('new.txt', 'w').write('x')\n"
            "open('.worker.log', 'a').write('logged')\n"
            "print(os.path.exists('/sys/fs/cgroup'), os.path.exists('/sys/fs/cgroup/memory'))\n")
    argv, inside = sandbox.command([sys.executable, "-c", code], tmp_path, "bwrap", home_bytes=8 << 20)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["lab data", "read-only 30", "False False"], proc.stdout
    assert (tmp_path / ".worker.log").read_text() == "logged"  # the one file written through
    assert not (tmp_path / "new.txt").exists() and (tmp_path / "data.txt").read_text() == "lab data"
