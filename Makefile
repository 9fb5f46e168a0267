# make demo  - set up, then the whole loop on Fashion-MNIST with EfficientNet-Lite0
# make test  - set up, then the test suite (what CI runs)
# make bench - set up, then the benchmarks in benchmarks/
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_DIR ?= build/demo
BENCH_DIR ?= build/bench

.PHONY: install data test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

data: $(FASHION_MNIST)

$(FASHION_MNIST):
	@echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist \
	  || ($(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist)

test: install data
	$(PY) -m pytest

demo: install data
	$(VENV)/bin/edgecl demo --workdir $(DEMO_DIR)

bench: install data
	$(PY) -m benchmarks --out $(BENCH_DIR)

clean:
	rm -rf build .pytest_cache
