# Entry points. The README's quick start uses `make demo` and `make test`.
SHELL := /bin/bash
VENV  := .venv
COS   := $(VENV)/bin/cos
DISK  ?= build/vanilla.raw
REGISTRY ?=
RECHUNK ?= 0
# images/distros/NAME: bookworm (Debian 12, the default) or trixie (Debian 13)
DISTRO ?= bookworm
VANILLA := vanilla$(if $(filter-out bookworm,$(DISTRO)),-$(DISTRO))

.PHONY: setup vanilla disk demo test test-unit test-integration test-e2e test-extended lint clean bench docs registry registry-stop

setup:
	bash scripts/setup-host.sh

vanilla: setup
	REGISTRY=$(REGISTRY) RECHUNK=$(RECHUNK) DISTRO=$(DISTRO) bash images/build.sh

$(DISK): vanilla
	$(COS) build-disk oci:build/oci:$(VANILLA) -o $(DISK)

disk: $(DISK)

# Build the vanilla image, a disk from it, boot it headless and show the result.
demo: setup vanilla
	$(COS) build-disk oci:build/oci:$(VANILLA) -o $(DISK)
	$(VENV)/bin/python scripts/demo-boot.py $(DISK)

lint: setup
	$(VENV)/bin/ruff check src tests scripts bench
	$(VENV)/bin/ruff format --check src tests scripts bench
	$(VENV)/bin/mypy

# The whole suite: lint, unit, integration (root, loop devices, registry), e2e (qemu).
test: setup lint
	$(VENV)/bin/pytest tests -m "not extended"

# The fast tier (what a bare `pytest` runs): no root, no Debian packages, only the venv.
test-unit: | $(VENV)/bin/pytest
	$(VENV)/bin/pytest tests/unit

$(VENV)/bin/pytest:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[dev]'

test-integration: setup
	$(VENV)/bin/pytest tests/integration

test-e2e: setup
	$(VENV)/bin/pytest tests/e2e -m "not extended"

# Scenarios too long for every CI run (a hanging trial boot, rechunking vanilla).
test-extended: setup
	$(VENV)/bin/pytest tests -m extended

# Generated reference pages and shell completions (tests/unit/test_docs.py checks them).
docs: setup
	$(VENV)/bin/python scripts/gen-docs.py

# Side-by-side benchmarks (ratios against the bare tools); root, after `make vanilla`.
bench: vanilla
	$(VENV)/bin/python -m bench.run

# A registry on 127.0.0.1:5000 (REGISTRY_PORT=...) for the README's lifecycle, plain HTTP.
registry: setup
	bash scripts/registry.sh start

registry-stop:
	bash scripts/registry.sh stop

clean:
	rm -rf build
