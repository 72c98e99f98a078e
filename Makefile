# The two commands of the README: `make demo` and `make test`.
# Both install what they need: Debian packages with apt-get (only those that
# are missing) and Python packages in a virtual environment in .venv.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TOOLS := .tools
export PATH := $(CURDIR)/$(TOOLS)/systemd-boot/usr/bin:$(PATH)

# Real parts atoll works with and tests against.
APT_PACKAGES := python3 python3-venv ca-certificates docker-registry skopeo podman runc \
	uidmap apache2-utils openssl zstd tar busybox-static \
	ostree debootstrap systemd-container attr tzdata bsdiff \
	qemu-system-x86 qemu-utils grub-pc-bin grub2-common fdisk e2fsprogs curl apt-utils gcc libc6-dev \
	postgresql keepalived iproute2 chromium chromium-driver \
	dosfstools mtools ovmf grub-efi-amd64-bin shim-signed grub-efi-amd64-signed xorriso xfsprogs

# pytest runs the tests in PYTEST_WORKERS processes (pytest-xdist); each module
# stays on one worker, the VM module starts first (tests/conftest.py).
# PYTEST_WORKERS=0 runs them one after another in one process (docs/development.md).
PYTEST_WORKERS ?= 2
XDIST = -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

.PHONY: demo test lint typecheck unit integration slow fuzz bench deps system-deps venv tools clean

demo: deps
	$(BIN)/atoll demo

test: deps
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy --strict src
	$(BIN)/pytest -q $(XDIST) $(PYTEST_ARGS)

lint: deps
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: deps
	$(BIN)/mypy --strict src

unit: deps
	$(BIN)/pytest -q $(XDIST) -m "not integration and not slow and not vm" $(PYTEST_ARGS)

integration: deps
	$(BIN)/pytest -q $(XDIST) -m integration $(PYTEST_ARGS)

slow: deps
	$(BIN)/pytest -q $(XDIST) -m slow $(PYTEST_ARGS)

# Every fuzz target for FUZZ_SECONDS each (tests/fuzz/run.py); new corpus
# entries and crashes go to .fuzz/ (docs/development.md).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= $(shell $(BIN)/python tests/fuzz/run.py --list 2>/dev/null)

fuzz: deps
	@mkdir -p .fuzz/logs; status=0; for t in $(FUZZ_TARGETS); do \
		$(BIN)/python tests/fuzz/run.py $$t --seconds $(FUZZ_SECONDS) > .fuzz/logs/$$t.log 2>&1 || status=1; \
		tail -n 1 .fuzz/logs/$$t.log; \
	done; exit $$status

bench: deps
	bench/copy
	bench/deploy
	bench/autoupdate

deps: system-deps venv tools

# bootctl (systemd-boot) is an oracle for boot entries. Installing the package
# would run its hook that installs systemd-boot on a machine with an EFI
# partition, so its files are unpacked into .tools instead.
tools: $(TOOLS)/.systemd-boot $(TOOLS)/.dracut

$(TOOLS)/.systemd-boot:
	mkdir -p $(TOOLS)
	cd $(TOOLS) && apt-get download systemd-boot && \
		dpkg-deb -x systemd-boot_*.deb systemd-boot && rm -f systemd-boot_*.deb
	touch $@

# dracut (the Fedora/RHEL family's initramfs generator) makes an initramfs with
# atoll's dracut module for the VM test. It conflicts with initramfs-tools, so
# only its package file is fetched; the test unpacks it into a copy of the VM tree.
$(TOOLS)/.dracut:
	mkdir -p $(TOOLS)/dracut
	cd $(TOOLS)/dracut && rm -f dracut-core_*.deb && apt-get download dracut-core
	touch $@

system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "Installing system packages:" $$missing; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

clean:
	rm -rf $(VENV) $(TOOLS) .mypy_cache .ruff_cache .pytest_cache src/*.egg-info
