"""Facts about the course itself: where it lives and what it contains.

The repository URL lives here and only here. The "Open in Colab" badge and the setup cell at the top of
every notebook are generated from it by ``python -m coursekit.nbtools stamp`` (a test checks that every
notebook carries the current version), so a fork changes this one line and re-runs the stamp.
"""

from __future__ import annotations

from pathlib import Path

REPO_URL = "https://github.com/llm-course/llm-course"
BRANCH = "main"


def repo_root() -> Path:
    """The checkout this package was installed from (editable installs), else the current directory."""
    here = Path(__file__).resolve().parents[3]  # shared/coursekit/coursekit/course.py
    return here if (here / "nbgrader_config.py").exists() else Path.cwd()


def colab_url(notebook_path: str) -> str:
    """Colab's address of a notebook given its path relative to the repository root."""
    owner_repo = REPO_URL.removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{owner_repo}/blob/{BRANCH}/{notebook_path}"


def pip_spec() -> str:
    """What pip installs in Colab when llmcourse is missing: the package from this repository."""
    return f"llmcourse @ git+{REPO_URL}@{BRANCH}#subdirectory=shared"
