# Hearth: `make run` and `make test` set everything up on a fresh Debian machine (apt packages, a venv, the
# native build) and then run. Everything else here is a step of those two.

PYTHON      ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
PIP         := $(VENV)/bin/pip
HEARTH      := $(VENV)/bin/hearth
# Debian packages: the C toolchain and headers for native/, OpenSSL's headers for batch SHA2-256, ffmpeg (the
# reference the ladder is measured against, and ffprobe, which checks every rendition), chromium (the browser
# the player is tested in), and the
# aarch64 cross compiler with qemu-user so the NEON kernels are tested on x86; python3-seccomp and systemd
# (systemd-analyze) run the agent under its unit's system-call filter in a test; mosquitto is the MQTT 5 broker
# the fleet plane's tests meet on; nftables, miniupnpd-nftables (UPnP-IGD and NAT-PMP) and coturn make the NAT
# lab's home routers and public STUN/TURN server (tests/agent/test_nat_lab.py).
# what `hearth image build` and the QEMU boot tests need (defined first: := expands at once); arm64 images
# cross-compile the agent's native modules against the target's own Python headers and OpenSSL (multiarch
# :arm64 packages, so `dpkg --add-architecture arm64` comes first) and boot in qemu-system-aarch64
IMAGE_PACKAGES := mmdebstrap dosfstools mtools e2fsprogs fdisk zstd qemu-system-x86 ovmf qemu-system-arm \
                  qemu-efi-aarch64 libpython3.11-dev:arm64 libssl-dev:arm64
APT_PACKAGES := build-essential python3-dev python3-venv libssl-dev gcc-aarch64-linux-gnu libc6-dev-arm64-cross ffmpeg chromium \
                qemu-user-static python3-seccomp systemd mosquitto nftables miniupnpd-nftables coturn $(IMAGE_PACKAGES)
BUILD_PINS  := setuptools==80.9.0 Cython==3.1.8
NATIVE_SRC  := $(wildcard native/*.pyx native/*.pxi native/*.c native/*.h) setup.py pyproject.toml
ARM_CC      := aarch64-linux-gnu-gcc
QEMU_ARM    := qemu-aarch64-static
SELFTEST_SRC := native/selftest.c native/gf256.c native/rs_kernels.c

.PHONY: all setup build run test test-unit pytest selftest selftest-arm bench bench-compare image clean

all: test

# apt only when something is missing, so a prepared machine (or CI re-run) does no network work; .ci/apt-missing
# checks each package with its architecture (libssl-dev and libssl-dev:arm64 are two packages).
$(VENV)/.apt-stamp:
	@missing="$$(.ci/apt-missing $(APT_PACKAGES))" || exit 1; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  if [ "$$(id -u)" != 0 ]; then SUDO=sudo; fi; \
	  dpkg --print-foreign-architectures | grep -qx arm64 || $$SUDO dpkg --add-architecture arm64; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi
	@mkdir -p $(VENV) && touch $@

$(VENV)/.venv-stamp: $(VENV)/.apt-stamp pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(BUILD_PINS)
	touch $@

setup: $(VENV)/.venv-stamp

# The editable install compiles the extensions next to their Python package (edge/kernels/*.so).
# REQUIRE_NATIVE=1: a broken native build stops here instead of leaving the slow reference in place.
$(VENV)/.build-stamp: $(VENV)/.venv-stamp $(NATIVE_SRC)
	REQUIRE_NATIVE=1 $(PIP) install -q --no-build-isolation -e '.[test,bench]'
	touch $@

# The player's hls.js comes from the npm registry (Apache-2.0) and is served by the node itself. Any npm on PATH
# will do (NodeSource's nodejs carries its own, and Debian's npm package would conflict with it): apt only without.
HLSJS_VERSION := 1.7.4
WEB_VENDOR    := edge/web/vendor
$(VENV)/.web-stamp: $(VENV)/.apt-stamp
	@command -v npm >/dev/null || { echo "installing Debian's npm"; if [ "$$(id -u)" != 0 ]; then SUDO=sudo; fi; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q nodejs npm; }
	rm -rf $(VENV)/web && mkdir -p $(VENV)/web $(WEB_VENDOR)
	cd $(VENV)/web && npm install --no-audit --no-fund --silent hls.js@$(HLSJS_VERSION)
	cp $(VENV)/web/node_modules/hls.js/dist/hls.min.js $(WEB_VENDOR)/hls.min.js
	cp $(VENV)/web/node_modules/hls.js/LICENSE $(WEB_VENDOR)/hls.js.LICENSE
	touch $@

build: $(VENV)/.build-stamp $(VENV)/.web-stamp

# The main job on embedded defaults: a node whose data lives in .hearth-data/ here, serving until Ctrl-C.
RUN_DATA ?= $(CURDIR)/.hearth-data
run: build
	$(HEARTH) doctor
	@echo
	$(HEARTH) --data-dir $(RUN_DATA) init
	@echo "adding README.md so the node has something to serve:"
	$(HEARTH) --data-dir $(RUN_DATA) add README.md
	@$(HEARTH) --data-dir $(RUN_DATA) media ls | grep -q '^demo ' || { \
	  echo "recording 8 s of a test pattern as the stream 'demo' (the agent prints its status page's and player's addresses once it serves):"; \
	  $(HEARTH) --data-dir $(RUN_DATA) live publish testsrc --name demo --duration 8 --ladder 720p,360p; }
	$(HEARTH) --data-dir $(RUN_DATA) run

selftest: build
	$(CC) -O2 -std=gnu11 -Wall -Wno-unused-function -Inative $(SELFTEST_SRC) -o $(VENV)/rs-selftest
	$(VENV)/rs-selftest 300

# The NEON path, cross-compiled and run under qemu-user.
selftest-arm: $(VENV)/.apt-stamp
	$(ARM_CC) -O2 -std=gnu11 -Wall -Wno-unused-function -static -Inative $(SELFTEST_SRC) -o $(VENV)/rs-selftest-arm64
	$(QEMU_ARM) $(VENV)/rs-selftest-arm64 150

pytest: build
	REQUIRE_NATIVE=1 $(PY) -m pytest -q --durations=30

test: selftest selftest-arm pytest

# everyday work: everything but image builds and boots, the browser, agents as processes, the attack suite and
# the tests marked slow (large buffers: the same checks run on smaller ones here)
test-unit: build
	REQUIRE_NATIVE=1 $(PY) -m pytest -q -m "not image and not browser and not integration and not attack and not slow"

bench: build
	REQUIRE_NATIVE=1 $(PY) benchmarks/erasure.py
	REQUIRE_NATIVE=1 $(PY) benchmarks/hashing.py
	REQUIRE_NATIVE=1 $(PY) benchmarks/store.py
	REQUIRE_NATIVE=1 $(PY) benchmarks/transport.py
	$(PY) benchmarks/media.py
	$(PY) benchmarks/fleet_scale.py
	REQUIRE_NATIVE=1 $(PY) benchmarks/protect.py
	$(PY) benchmarks/offload.py

# Every `make bench` ratio here (median of 3 runs) against a saved run of another checkout, written by
# `benchmarks/compare.py run OTHER_CHECKOUT=FILE.json`: make bench-compare BEFORE=FILE.json
BEFORE ?= build/bench-before.json
bench-compare: build
	$(PY) benchmarks/compare.py run .=build/bench-after.json
	$(PY) benchmarks/compare.py diff $(BEFORE) build/bench-after.json

# A flashable image: make image BOARD=x86-64 [KEY=signing.key] [SEED=hearth-seed.toml]
BOARD ?= x86-64
KEY   ?= build/image-signing.key
image: build
	@test -f $(KEY) || { mkdir -p $(dir $(KEY)); $(HEARTH) fleet init -o $(KEY); }
	$(HEARTH) image build $(BOARD) -o build/images --key $(KEY) $(if $(SEED),--seed $(SEED))

clean:
	rm -rf build *.egg-info edge/kernels/*.so native/_*.c $(VENV)
