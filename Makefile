# The two commands a newcomer needs: `make demo` and `make test`.
# Both install what is missing first: PostgreSQL's server through apt (when
# run as root on Debian), and a virtual environment with piwtwist in it.

PYTHON ?= python3
VENV ?= .venv
PIP = $(VENV)/bin/pip
PY = $(VENV)/bin/python
PYTEST_ARGS ?=
DEMO_DIR ?= $(CURDIR)/demo

.PHONY: all demo test bench install-system venv clean help

all: help

help:
	@echo "make demo    run piwtwist on a private PostgreSQL (demo/)"
	@echo "make test    install what is missing and run the tests"
	@echo "make bench   run the benchmarks in bench/ (see bench/README.md)"

# PostgreSQL's server programs and Python's venv module.
install-system:
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && \
	    ! command -v initdb >/dev/null 2>&1; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	        echo "Installing PostgreSQL (apt-get install postgresql)..."; \
	        apt-get update -qq && \
	        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	            postgresql >/dev/null; \
	    else \
	        echo "PostgreSQL's server is not installed; please run:"; \
	        echo "  sudo apt-get install postgresql"; exit 1; \
	    fi; \
	fi
	@if ! $(PYTHON) -c "import venv, ensurepip" >/dev/null 2>&1; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	        apt-get update -qq && \
	        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	            python3-venv >/dev/null; \
	    else \
	        echo "Python's venv module is missing; please run:"; \
	        echo "  sudo apt-get install python3-venv"; exit 1; \
	    fi; \
	fi

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)

# Reinstall whenever the packaging changes.
$(VENV)/.installed: setup.cfg pyproject.toml | $(VENV)/bin/activate
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -e '.[test]'
	touch $@

venv: install-system $(VENV)/.installed

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

demo: venv
	$(PY) -m piwtwist.demo --dir $(DEMO_DIR)

bench: venv
	$(PY) bench/build_queue.py --scale 0.05

clean:
	rm -rf build dist *.egg-info .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
