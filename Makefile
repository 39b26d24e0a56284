# Quick start (README): `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test release export clean-outputs

$(VENV)/.runtime-installed: requirements.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version.split()[0]'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	# Put the repository root on the venv's path, so kernels started anywhere import helpers/ and minirlhf/.
	$(PY) -c 'import site, pathlib; pathlib.Path(site.getsitepackages()[0], "rlhf_course.pth").write_text("$(CURDIR)\n")'
	touch $@

$(VENV)/.test-installed: $(VENV)/.runtime-installed requirements-test.txt
	$(PY) -m pip install --quiet -r requirements-test.txt
	touch $@

demo: $(VENV)/.runtime-installed
	$(PY) -m autograder demo

test: $(VENV)/.test-installed
	$(PY) -m pytest tests -n 2 -q

release: $(VENV)/.runtime-installed
	$(PY) -m autograder release --all

export: $(VENV)/.runtime-installed
	$(PY) -m autograder export
