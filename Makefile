# Two commands for a new user on a fresh machine (see README.md):
#   make demo   set up .venv if needed, then fit the pose of the bundled example photo
#   make test   set up .venv if needed, then run the test suite
# torch is installed first and pinned, so that pip uses the local CPU build and never
# resolves a newer CUDA build with several GB of packages.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) demos/fit_pose.py

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf outputs .pytest_cache
