# Two commands for a fresh machine: `make demo` and `make test`.
# Both create .venv when it is missing and install avseg into it; when already installed this takes seconds.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.avseg-installed
export HF_HUB_OFFLINE := 1

.PHONY: install test test-fast demo bench clean

install: $(STAMP)

$(STAMP): setup.py avseg/evaluation/_class_confusion.c
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	@# optional extras for the export and browser-demo tests; those tests skip with a reason when absent
	-$(PY) -m pip install -q -e '.[dev,web,export]' selenium || echo "warning: web/export extras not installed; their tests will be skipped"
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" tests

demo: $(STAMP)
	$(PY) tools/quickstart.py

clean:
	rm -rf runs/quickstart build *.egg-info
