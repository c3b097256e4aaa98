# Top-level entry points. The two that matter most:
#   make run    build the QEMU board's image offline and boot it, servers on localhost
#   make test   every test: unit, static checks of the Buildroot tree, image boot and OTA end to end

# The system's Python where there is one: protocol code runs as an unprivileged sandbox
# user, which must be able to run the venv's interpreter (a Python under /root is not).
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
VENV := .venv
PY := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest
OT2_CACHE ?= $(HOME)/.cache/ot2
export OT2_CACHE

.PHONY: help deps venv lint qemu-image pi-image run run-pi test test-unit test-compat test-e2e \
	test-e2e-pi bench bench-e2e bench-boot clean

help:
	@echo "make deps        install the Debian packages the build and tests need (root)"
	@echo "make run         build the QEMU image and boot it (servers forwarded to localhost)"
	@echo "make run-pi      build the Raspberry Pi 3 image and boot it in QEMU raspi3b through U-Boot"
	@echo "make test        unit tests, Buildroot tree checks, image boot and OTA end-to-end tests"
	@echo "make test-unit   the linters, then the tests that need no QEMU"
	@echo "make lint        ruff (rules in ruff.toml) and shellcheck on the shell scripts"
	@echo "make test-compat the OT-2's own driver and simulator against ours"
	@echo "make test-e2e    only the image boot and OTA end-to-end tests"
	@echo "make test-e2e-pi the same on the Raspberry Pi 3 image (QEMU raspi3b), and its GPIO"
	@echo "make qemu-image  build the QEMU board's image and signed bundle from Debian packages"
	@echo "make pi-image    build the Raspberry Pi 3 image (arm64), U-Boot and signed bundle from Debian packages"
	@echo "make bench       update-server install and robot-server API benchmarks"
	@echo "make bench-e2e   boot, OTA throughput and reboot figures from a QEMU run"
	@echo "make ot2         Buildroot build for the Raspberry Pi 3 (needs internet)"
	@echo "make qemu-ot2    Buildroot build for the emulated board (needs internet)"

deps:
	ci/install-deps.sh

$(VENV)/.done: update_server/pyproject.toml robot_server/pyproject.toml client/pyproject.toml ci/requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r ci/requirements-dev.txt \
		--config-settings editable_mode=compat \
		-e 'update_server[test]' -e 'robot_server[test]' -e 'client[test]'
	touch $@

# A tool's own venv (DIR/.done) from its requirements file (the first prerequisite).
define tool-venv
	$(PYTHON) -m venv $(@D)
	$(@D)/bin/pip install --quiet --upgrade pip
	$(@D)/bin/pip install --quiet -r $<
	$(@D)/bin/pip check
	touch $@
endef

# labmcp-opentrons (an OT-2 HTTP API client, robot_server/tests/labmcp_flow.py) in its own
# venv: its fastmcp needs jsonschema>=4.20, the opentrons package pins jsonschema<4.18.
LABMCP_VENV := .venv-labmcp
$(LABMCP_VENV)/.done: ci/requirements-labmcp.txt
	$(tool-venv)

# gooseBit (a rollout server speaking hawkBit's DDI API, update_server/tests/test_ddi.py) in
# its own venv too.
GOOSEBIT_VENV := .venv-goosebit
$(GOOSEBIT_VENV)/.done: ci/requirements-goosebit.txt
	$(tool-venv)

venv: $(VENV)/.done $(LABMCP_VENV)/.done $(GOOSEBIT_VENV)/.done

qemu-image: venv
	ci/build-qemu-image.sh --out build/qemu

pi-image: venv
	ci/build-pi-image.sh --out build/pi-image

# Host ports the guest's servers are forwarded to (make run UPDATE_PORT=... ...).
UPDATE_PORT ?= 34000
ROBOT_PORT ?= 31950
BRIDGE_PORT ?= 7887
SSH_PORT ?= 2222
JUPYTER_PORT ?= 48888

run: venv
	$(PY) ci/run-qemu.py --update-port $(UPDATE_PORT) --robot-port $(ROBOT_PORT) \
		--bridge-port $(BRIDGE_PORT) --ssh-port $(SSH_PORT) --jupyter-port $(JUPYTER_PORT)

run-pi: venv
	$(PY) ci/run-qemu.py --board ot2 --update-port $(UPDATE_PORT) --robot-port $(ROBOT_PORT) \
		--bridge-port $(BRIDGE_PORT) --ssh-port $(SSH_PORT)

# What CI runs. test-e2e-pi is not in it: after these, or beside them on CI's two cores, it
# does not fit CI's 90 minutes (README, "Why test-e2e-pi is not in CI").
test: test-unit test-compat test-e2e

# The comparisons with the OT-2's own software (opentrons, in .venv) run in test-compat.
COMPAT_TESTS := robot_server/tests/test_ot2_compat.py robot_server/tests/test_protocol_corpus.py \
	robot_server/tests/test_corpus_channel.py

# Shell scripts: the board's, CI's and the overlay's (every file there that starts with #!/bin/sh).
SHELL_SCRIPTS = board/common/*.sh ci/*.sh .ci/run \
	$(shell grep -rlE '^#!/bin/(ba)?sh' overlay)

lint: venv
	$(VENV)/bin/ruff check --quiet .
	shellcheck $(SHELL_SCRIPTS)

# The update server's, the client's and the system's unit suites, which wait on sockets and
# subprocesses much of the time, run side by side, each printed whole when it ends; then
# the robot server's, the longest and CPU-bound, alone: its timing-bound tests (a run
# process killed mid-command, the engine's first import) get the machine to themselves.
LIGHT_UNIT_SUITES := unit-update-server unit-client unit-system
.PHONY: $(LIGHT_UNIT_SUITES) unit-robot-server
test-unit: venv lint
	@$(call timed,$(MAKE) --no-print-directory -j3 --output-sync=target $(LIGHT_UNIT_SUITES) && \
		$(MAKE) --no-print-directory unit-robot-server)

unit-robot-server:
	@$(call timed,$(PYTEST) -q robot_server/tests $(addprefix --ignore=,$(COMPAT_TESTS)))
unit-update-server:
	@$(call timed,$(PYTEST) -q update_server/tests)
unit-client:
	@$(call timed,$(PYTEST) -q client/tests)
unit-system:
	@$(call timed,$(PYTEST) -q tests --ignore=tests/e2e)

# The OT-2's SmoothieDriver against our emulator; our protocol corpus through robot-simulate
# and the OT-2's opentrons_simulate, line for line; corpus protocols executed through the
# G-code channel send the board what opentrons sends it directly.
test-compat: venv
	@$(call timed,$(PYTEST) -q $(COMPAT_TESTS))

# Runs a test suite and prints its wall time (CI's log shows each suite's).
timed = start=$$(date +%s); $(1); status=$$?; echo "== $@: $$(( $$(date +%s) - start )) s"; exit $$status

# test_boot_size (a second image, without Jupyter, and its boot) and test_boot_bench (each
# board's boot chain next to a direct kernel boot) are figures: bench-boot.
test-e2e: venv
	@$(call timed,$(PYTEST) -q tests/e2e --ignore=tests/e2e/test_boot_size.py --ignore=tests/e2e/test_boot_bench.py \
		--ignore=tests/e2e/test_gpio_pi.py)

# The Pi's scenarios that hang on the board (boot chain, U-Boot's environment, slots, UART,
# GPIO); those that do not (rejected bundles, the engine's runs, API clients, access rules,
# the session after power cuts) are left to test-e2e, three times faster under emulation.
PI_SCENARIOS := cold_boot or ssh_key or name_is_hostname or homes_emulated or update_lands or power_cut_mid \
	or corrupted or unhealthy or gpio
test-e2e-pi: venv
	@$(call timed,OT2_BOARD=ot2 $(PYTEST) -q tests/e2e/test_system.py tests/e2e/test_gpio_pi.py -k "$(PI_SCENARIOS)")

bench: venv
	$(PY) update_server/bench/bench_install.py
	$(PY) update_server/bench/bench_access.py
	$(PY) update_server/bench/bench_rollout.py
	$(PY) robot_server/bench/bench_access.py
	$(PY) robot_server/bench/bench_api.py
	$(PY) robot_server/bench/bench_protocols.py
	$(PY) robot_server/bench/bench_channel.py
	$(PY) robot_server/bench/bench_analysis.py
	$(PY) client/bench/bench_push.py
	$(PY) client/bench/bench_flash.py

# Figures from a shortened QEMU run (boot, SSH, name, homing, one update).
bench-e2e: venv
	$(PYTEST) -q tests/e2e -k "not rejected and not power_cut and not after_power_cuts and not corrupted and not rolls_back"

# Cold boot to both servers healthy on each board, next to a direct kernel boot of the same
# root; the QEMU board's image without Jupyter.
bench-boot: venv
	$(PYTEST) -q tests/e2e/test_boot_bench.py tests/e2e/test_boot_size.py

clean:
	rm -rf build $(VENV) $(LABMCP_VENV) $(GOOSEBIT_VENV)

include mk/buildroot.mk
