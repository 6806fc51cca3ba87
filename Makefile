# khofs: `make demo` and `make test` set up whatever is missing first (idempotent).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.khofs-installed
# Debian's python3 runs the venv so that python3-libfdt (the FDT test oracle) imports in it.
SYSPY := /usr/bin/python3
# libfuse3-3 is only the library, for the fuse3 backend (KHOFS_FUSE=3): Debian's `fuse3` package
# (fusermount3) Breaks `fuse`, and root needs no fusermount3 to mount.
# gcc and libc6-dev: the tests build small static C programs (an init for `khofs run`).
APT_PKGS := fuse libfuse2 libfuse3-3 device-tree-compiler python3 python3-venv python3-libfdt \
            gcc libc6-dev
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system kexec-tools fuse3-dev test lint unit unit-fuse3 demo bench stress clean

setup: system $(STAMP)

# Install the system packages only when something they provide is missing.
system:
	@missing=0; \
	for f in /usr/bin/fusermount /usr/bin/dtc /usr/bin/fdtdump /usr/bin/fdtget $(SYSPY) \
	         /usr/lib/python3/dist-packages/libfdt.py /usr/bin/cc; do \
	  [ -e $$f ] || missing=1; done; \
	[ -e /usr/lib/x86_64-linux-gnu/libfuse.so.2 ] || ls /usr/lib/*/libfuse.so.2 >/dev/null 2>&1 || missing=1; \
	ls /usr/lib/*/libfuse3.so.3 /usr/lib/libfuse3.so.3 2>/dev/null | grep -q . || missing=1; \
	ls /usr/lib/*/libc.a 2>/dev/null | grep -q . || missing=1; \
	$(SYSPY) -c 'import ensurepip' 2>/dev/null || missing=1; \
	if [ $$missing = 1 ]; then \
	  echo "make: installing system packages: $(APT_PKGS)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PKGS) >/dev/null; \
	fi
	@$(MAKE) --no-print-directory kexec-tools

# `khofs run` serves the system's own kexec (kexec-tools) and builds its seccomp filter with
# python3-seccomp. Installed non-interactively, kexec-tools answers its debconf question
# load_kexec with true (/etc/default/kexec: LOAD_KEXEC=true), and every later reboot of this
# machine would become a kexec: answer false first, unless the machine already has an answer
# (a configuration file, or the question in debconf's database), which stays as it is.
KEXEC_PKGS := kexec-tools python3-seccomp
kexec-tools:
	@missing=0; \
	[ -x /usr/sbin/kexec ] || missing=1; \
	$(SYSPY) -c 'import seccomp' 2>/dev/null || missing=1; \
	if [ $$missing = 1 ]; then \
	  echo "make: installing system packages: $(KEXEC_PKGS)"; \
	  if [ ! -e /etc/default/kexec ] && \
	     ! echo 'GET kexec-tools/load_kexec' | $(SUDO) debconf-communicate >/dev/null 2>&1; then \
	    echo 'kexec-tools kexec-tools/load_kexec boolean false' | $(SUDO) debconf-set-selections; \
	  fi; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(KEXEC_PKGS) >/dev/null; \
	fi

# The benchmark's C filesystem (scripts/bench/cfs.c) builds against libfuse3. Only its library
# and headers: Debian's `fuse3` package Breaks the `fuse` package that khofs runs on. As root,
# libfuse3 mounts through /dev/fuse itself; fusermount (from `fuse`) or umount unmounts it.
FUSE3_PKGS := libfuse3-3 libfuse3-dev pkg-config
fuse3-dev:
	@if ! pkg-config --exists fuse3 2>/dev/null; then \
	  echo "make: installing system packages: $(FUSE3_PKGS)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    $(FUSE3_PKGS) >/dev/null; \
	fi

# The editable install puts the checkout on sys.path with a plain .pth line (compat mode):
# setuptools' default finder for this flat layout costs every khofs command ~7 ms at start-up.
$(STAMP): pyproject.toml Makefile
	[ -x $(PY) ] || $(SYSPY) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,fuse3]' \
	  --config-settings editable_mode=compat
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check khofs tests scripts
	$(VENV)/bin/mypy

unit: setup
	$(VENV)/bin/pytest -q

# The mount tests (pytest marker `mount`) again on the other backend: mfusepy over libfuse3.
unit-fuse3: setup
	KHOFS_FUSE=3 $(VENV)/bin/pytest -q -m mount

test: lint unit unit-fuse3

demo: setup
	@PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

# Both FUSE backends in one run; `$(PY) scripts/bench.py --cpu 1 ...` pins everything to CPU 1.
bench: setup fuse3-dev
	$(PY) scripts/bench.py --backend 2 --backend 3

# 8 processes for 60 s against one mount; every invariant checked after every step.
stress: setup fuse3-dev
	$(PY) scripts/stress.py --procs 8 --seconds 60

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
