# The two things anyone runs here: `make demo` and `make test`. Both set up .venv first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint setup services deb deb-check

$(STAMP): pyproject.toml
	@command -v gammu >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gammu >/dev/null; }
	@# tmux drives hanjulloctl status --watch in a real terminal; promtool (Debian ships it in prometheus) checks the alert rules;
	@# nginx terminates the control plane's mutual TLS in tests/integration/test_api_nginx.py.
	@command -v tmux >/dev/null && command -v promtool >/dev/null && test -x /usr/sbin/nginx || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends tmux prometheus nginx >/dev/null; }
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
	@$(PY) -m pip install -q -e '.[test]' 2>&1 | grep -v '^WARNING: Location' || true
	@$(PY) -c 'import gammu, serial_asyncio_fast, asyncpg, aiomysql, h11, rich, prometheus_client, cryptography'
	@touch $(STAMP)

setup: $(STAMP)

services:
	@bash tests/ensure-services.sh

demo: setup services
	@$(PY) -m simulators.demo

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: setup services lint
	$(VENV)/bin/pytest -p no:cacheprovider

# The Debian package of this tree (systemd/debian/build-deb.sh says how it is assembled).
DEB_VERSION ?= $(shell bash systemd/debian/version.sh HEAD)
DEB_OUT ?= build/deb

deb:
	@bash systemd/debian/build-deb.sh . $(DEB_OUT) $(DEB_VERSION)

# Builds this tree's package and the previous commit's, installs them into fresh Debian roots
# and checks install, upgrade, remove and purge (a few minutes; not part of `make test`).
deb-check: setup
	@bash tests/packaging/deb-check.sh
