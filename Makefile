# make demo  - set up, then the whole loop on Fashion-MNIST with EfficientNet-Lite0
# make test  - set up, then lint, the test suite and the installed-wheel check (what CI runs)
# make dist  - the sdist and wheel in dist/
# make bench - set up, then the benchmarks in benchmarks/
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
# Debian tools the device kit's tests use: shellcheck, systemd-analyze (systemd), fakeroot
KIT_TOOLS := /usr/bin/shellcheck /usr/bin/systemd-analyze /usr/bin/fakeroot
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_DIR ?= build/demo
BENCH_DIR ?= build/bench

.PHONY: install data tools lint test wheel-smoke dist demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

data: $(FASHION_MNIST)

$(FASHION_MNIST):
	@echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
	$(APT_INSTALL) dataset-fashion-mnist || ($(SUDO) apt-get update -q && $(APT_INSTALL) dataset-fashion-mnist)

tools: $(KIT_TOOLS)

$(KIT_TOOLS):
	@echo "installing the device kit's check tools (Debian packages shellcheck, systemd, fakeroot)"
	$(APT_INSTALL) shellcheck systemd fakeroot || ($(SUDO) apt-get update -q && $(APT_INSTALL) shellcheck systemd fakeroot)

lint: install
	$(VENV)/bin/ruff check edgecl tests benchmarks .ci

test: install data tools lint
	$(PY) -m pytest
	.ci/wheel-smoke

wheel-smoke: install data
	.ci/wheel-smoke

dist: install
	rm -rf dist && $(PY) -m build --sdist --wheel --no-isolation --outdir dist .

demo: install data
	$(VENV)/bin/edgecl demo --workdir $(DEMO_DIR)

bench: install data
	$(PY) -m benchmarks --out $(BENCH_DIR)

clean:
	rm -rf build dist .pytest_cache
