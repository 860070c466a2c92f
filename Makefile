# cni-yogurt tasks.  `make test` is what CI runs; `make demo` is the main job.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# Kernel tests need netkit: natively where the running kernel has it, else in a VM.
HAVE_NETKIT = $(shell $(PY) -c 'from cni_yogurt.health import probe_netkit; print(int(probe_netkit().ok))' 2>/dev/null)
KERNEL_RUN = $(if $(filter 1,$(HAVE_NETKIT)),,bash tests/vm/run.sh)

.PHONY: deps venv lint unit kernel test demo binary bench clean

deps:  ## system packages (Debian/Ubuntu); the VM's kernel comes in tests/vm/fetch-kernel.sh
	@bash packaging/install-deps.sh

venv: deps
	@test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	@$(PY) -m pip install -q -e '.[dev]'

lint: venv
	$(VENV)/bin/ruff check cni_yogurt tests
	$(VENV)/bin/ruff format --check cni_yogurt tests

unit: venv
	$(VENV)/bin/pytest -q tests/unit

kernel: venv
	YOGURT_REQUIRE_KERNEL=1 $(KERNEL_RUN) $(VENV)/bin/pytest -q tests/kernel

test: lint unit kernel

demo: venv
	$(KERNEL_RUN) $(VENV)/bin/yogurt demo

clean:
	rm -rf $(VENV) .cache build dist *.egg-info
