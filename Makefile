# The two commands a newcomer needs: `make demo` and `make test`.
# Both install what is missing first: PostgreSQL's server through apt (when
# run as root on Debian), and a virtual environment with piwtwist in it.

# Debian's own Python where there is one: the services run as an ordinary
# user in the tests and the demo, and must be able to execute the
# interpreter the virtual environment points at (a Python installed under
# /root, as pyenv does, is out of their reach).
PYTHON ?= $(firstword $(wildcard /usr/bin/python3) python3)
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

# What the tests need from Debian: required (PostgreSQL's server, Python's
# venv) and wanted (bubblewrap for the build sandbox, Chromium for the
# browser test, nginx and Apache for the example configurations, tmux for
# the monitor's terminal test; their tests skip without them; gcc and
# Python's headers, so builders can compile C extensions).  As root
# everything missing is installed at once; otherwise only the required
# ones stop us.
WANTED_TOOLS = bwrap:bubblewrap chromium:chromium nginx:nginx-light \
	apache2:apache2 gcc:gcc tmux:tmux
install-system:
	@required=""; wanted=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	    command -v initdb >/dev/null 2>&1 || required="postgresql"; \
	$(PYTHON) -c "import venv, ensurepip" >/dev/null 2>&1 || \
	    required="$$required python3-venv"; \
	$(PYTHON) -c "import os, sys, sysconfig; sys.exit(not os.path.exists(\
	    os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" \
	    >/dev/null 2>&1 || wanted="$$wanted python3-dev"; \
	for pair in $(WANTED_TOOLS); do \
	    command -v $${pair%%:*} >/dev/null 2>&1 || \
	    [ -x /usr/sbin/$${pair%%:*} ] || wanted="$$wanted $${pair#*:}"; \
	done; \
	if [ -n "$$required$$wanted" ] && [ "$$(id -u)" = 0 ] && \
	    command -v apt-get >/dev/null; then \
	    echo "Installing from Debian:$$required$$wanted"; \
	    apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	        $$required $$wanted fonts-dejavu-core >/dev/null; \
	elif [ -n "$$required" ]; then \
	    echo "Missing: $$required; please run: sudo apt-get install" \
	        "$$required"; exit 1; \
	fi
	@# the services refuse root, so as root the tests and the demo run them
	@# as this unprivileged system user
	@if [ "$$(id -u)" = 0 ] && ! id piwheels >/dev/null 2>&1; then \
	    useradd --system --user-group --home-dir /nonexistent \
	        --no-create-home --shell /usr/sbin/nologin piwheels; \
	fi

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)

# Reinstall whenever the packaging changes.
$(VENV)/.installed: setup.cfg pyproject.toml | $(VENV)/bin/activate
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -e '.[test]'
	@# write twistd's plugin cache now, while we may, so services run as
	@# another user do not complain that they cannot
	$(PY) -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $@

venv: install-system $(VENV)/.installed

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

# More options of the demo (--http-port, --packages, ...):
# make demo DEMO_ARGS='--http-port 8081'
demo: venv
	@$(PY) -m piwtwist.demo --dir $(DEMO_DIR) $(DEMO_ARGS)

bench: venv
	$(PY) bench/build_queue.py --scale 0.05

clean:
	rm -rf build dist *.egg-info .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
