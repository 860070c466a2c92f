# cni-yogurt tasks.  `make test` is what CI runs; `make demo` is the main job.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# netkit natively where the running kernel has it, else in a VM (the demo, the
# netkit half of the kernel tests); the veth backend runs natively everywhere.
HAVE_NETKIT = $(shell $(PY) -c 'from cni_yogurt.health import probe_netkit; print(int(probe_netkit().ok))' 2>/dev/null)
KERNEL_RUN = $(if $(filter 1,$(HAVE_NETKIT)),,bash tests/vm/run.sh)
# What only netkit shows, in the VM: the wire, the verbs, lines, one real runtime, a live
# line moving to the next release's programs (netkit's own BPF_LINK_UPDATE), this code's
# under the next ABI and a real 0.4.0 line, and link state (carrier follows the primary).  (The emulated guest's int3 oopses at static-key sites,
# the emulator's race: tests/vm/guest.sh holds the packet path's keys on, run.sh boots once more.)
# Across nodes in the VM: netkit ends over the kernel's WireGuard (checked first), the wire,
# underlay injection, a third node, cut wiring, two lines apart, the hosts locked out.
WIRE_ACROSS_VM = wireguard_kind or ping_and_tcp or in_clear or third_node or cut_remote or two_lines or host_cannot
# The agent's devices on the guest kernel's own WireGuard (tests/cluster/test_devices.py).
DEVICES_VM = made_then_adopted or another_kind or hand_made_wireguard
VM_TESTS = tests/kernel/test_wire.py tests/kernel/test_counters.py tests/kernel/test_verbs.py tests/kernel/test_lines.py \
	tests/kernel/test_cnitool.py \
	'tests/kernel/test_upgrade.py::test_live_line_moves_to_the_next_release_without_losing_a_packet[netkit-ADD]' \
	'tests/kernel/test_upgrade_from_release.py::test_a_line_of_a_real_release_moves_in_place[abi4-f9b534a-netkit]' \
	'tests/kernel/test_link_state.py::test_a_line_set_down_loses_carrier_and_passes_nothing_until_up[netkit]' \
	'tests/kernel/test_link_state.py::test_one_end_down_passes_nothing_either_way_and_only_it_loses_carrier[netkit]' \
	'tests/kernel/test_capture.py::test_a_capture_holds_exactly_what_the_two_ends_sent_each_way' \
	'tests/kernel/test_capture.py::test_visible_while_it_runs_and_nothing_left_after_sigkill' \
	'tests/kernel/test_capture.py::test_drops_are_what_the_guard_dropped_with_why' \
	'tests/kernel/test_impair.py::test_loss_drops_the_asked_share_one_way_and_reset_ends_it' \
	'tests/kernel/test_impair.py::test_duplication_sends_the_asked_share_twice' \
	'tests/kernel/test_impair.py::test_corrupted_packets_fail_the_receivers_checksum' \
	'tests/kernel/test_impair.py::test_a_rate_holds_the_wire_within_ten_percent' \
	'tests/kernel/test_impair.py::test_a_delay_by_netem_inside_the_container_keeps_the_line'

# The veth backend on Debian 12's 6.1 (no netkit, no tcx) in a second VM, in auto mode: every ADD must
# pick veth + clsact by itself. The wire, the verbs, counters, a live line moving to the next release.
VM_TC_TESTS = tests/kernel/test_wire.py tests/kernel/test_verbs.py tests/kernel/test_counters.py \
	'tests/kernel/test_upgrade.py::test_live_line_moves_to_the_next_release_without_losing_a_packet[auto-upgrade-command]'

.PHONY: deps venv front lint unit cluster cluster-net cluster-net-vm demo-nodes kernel kernel-native kernel-vm kernel-vm-tc test demo binary image cnitool cri-stubs bench bench-deps bench-vm clean

deps:  ## system packages (Debian/Ubuntu); the VM's kernel comes in tests/vm/fetch-kernel.sh
	@bash packaging/install-deps.sh

venv: deps
	@test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	@# compat mode: a plain path in a .pth; the default editable finder costs
	@# ~25 ms (pathlib, urllib) at every start of every plugin exec.
	@$(PY) -m pip install -q -e '.[dev]' --config-settings editable_mode=compat

lint: venv
	$(VENV)/bin/ruff check cni_yogurt tests
	$(VENV)/bin/ruff format --check cni_yogurt tests
	$(VENV)/bin/mypy cni_yogurt

unit: venv
	$(VENV)/bin/pytest -q tests/unit

# The cluster store against a real three-member etcd on 127.0.0.1 (Debian's etcd-server, free
# ports, temp dirs; tests/cluster/etcdlab.py); no root.  etcd is not installed: its .deb is unpacked
# into .cache/etcd, once (packaging/fetch-etcd.sh), unless YOGURT_ETCD names the user's own.
cluster: venv
	@test -n "$$YOGURT_ETCD" || bash packaging/fetch-etcd.sh >/dev/null
	$(VENV)/bin/pytest -q tests/cluster --ignore=tests/cluster/test_nodelab.py --ignore=tests/cluster/test_wire_across.py \
		--ignore=tests/cluster/test_cluster_lines.py --ignore=tests/cluster/test_demo_nodes.py \
		--ignore=tests/cluster/test_cnitool_across.py --ignore=tests/cluster/test_agent_owned.py \
		--ignore=tests/cluster/test_devices.py --ignore=tests/cluster/test_release_across.py

# A cluster on one machine: nodes as netns on an underlay, WireGuard between them (the kernel's where
# it has one, else wireguard-go: here, on a kernel without it), a VXLAN device in external mode over it
# (cni_yogurt/lab/nodes.py), and lines across it through the tunnel programs, per backend the kernel offers.  Root; about 5 s, then about 40 s per backend.  test_cnitool_across.py
# drives dist/yogurt with cnitool on two nodes: both built here first.  test_agent_owned.py: nodes with
# an underlay only, a TLS etcd, agents that make their own devices, their outages and restarts.
# test_release_across.py: the real 0.5.0's and 0.5.2's agents replaced by this release's under live lines, mixed.
cluster-net: venv binary cnitool
	@test -n "$$YOGURT_ETCD" || bash packaging/fetch-etcd.sh >/dev/null
	YOGURT_REQUIRE_KERNEL=1 $(VENV)/bin/pytest -q tests/cluster/test_nodelab.py tests/cluster/test_wire_across.py \
		tests/cluster/test_cluster_lines.py tests/cluster/test_agent_owned.py tests/cluster/test_devices.py \
		tests/cluster/test_release_across.py tests/cluster/test_demo_nodes.py \
		tests/cluster/test_cnitool_across.py

# Lines across nodes with netkit ends, in the VM where the running kernel has no netkit: the smallest
# part of the wire test (WIRE_ACROSS_VM), over the guest kernel's own WireGuard (YOGURT_LAB_WIREGUARD=kernel:
# a lab without it fails; emulated: about 8 minutes).  In `make test` after the other VM targets:
# two emulated VMs at once are too slow here.
cluster-net-vm: venv
	@if [ "$(HAVE_NETKIT)" = 1 ]; then echo "netkit is native here: cluster-net tested it"; else \
		set -x; YOGURT_REQUIRE_KERNEL=1 YOGURT_TEST_BACKENDS=netkit YOGURT_LAB_WIREGUARD=kernel bash tests/vm/run.sh \
		$(VENV)/bin/pytest -q tests/cluster/test_wire_across.py tests/cluster/test_devices.py \
		-k "$(WIRE_ACROSS_VM) or $(DEVICES_VM)"; fi

# One line across two nodes on this machine (`yogurt demo --nodes 2`): the node lab, etcd on its
# underlay, an agent per node; root.
demo-nodes: venv
	@test -n "$$YOGURT_ETCD" || bash packaging/fetch-etcd.sh >/dev/null
	$(VENV)/bin/yogurt demo --nodes 2

# The runtime tests (cnitool, podman, containerd) drive dist/yogurt; cnitool and
# the CRI client are built here, on the host, before the VM boots.
# Two workers, one test file each: each test mostly waits on plugin execs.
kernel: kernel-native kernel-vm kernel-vm-tc

kernel-native: venv binary front cnitool cri-stubs  ## every backend this kernel offers, every runtime
	@test -n "$$YOGURT_ETCD" || bash packaging/fetch-etcd.sh >/dev/null  # the binary's TLS, the image across nodes
	YOGURT_REQUIRE_KERNEL=1 $(VENV)/bin/pytest -q -n 2 --dist loadfile tests/kernel

kernel-vm: venv binary cnitool  ## netkit in the VM, where the running kernel has none
	@if [ "$(HAVE_NETKIT)" = 1 ]; then echo "netkit is native here: kernel-native tested it"; else \
		set -x; YOGURT_REQUIRE_KERNEL=1 YOGURT_TEST_BACKENDS=netkit bash tests/vm/run.sh \
		$(VENV)/bin/pytest -q -n 2 --dist loadfile $(VM_TESTS); fi

kernel-vm-tc: venv  ## veth + clsact on Debian 12's 6.1 kernel in the VM, picked by the plugin
	YOGURT_VM_SUITE=bookworm YOGURT_REQUIRE_KERNEL=1 YOGURT_TEST_BACKENDS=auto YOGURT_TEST_AUTO_PICKS=veth-tc \
		bash tests/vm/run.sh $(VENV)/bin/pytest -q -n 2 --dist loadfile $(VM_TC_TESTS)

# cluster-net-vm last, by a sub-make: after kernel-vm-tc even under -j (one VM at a time).
test: lint unit cluster cluster-net kernel
	$(MAKE) cluster-net-vm

demo: venv
	$(KERNEL_RUN) $(VENV)/bin/yogurt demo

binary: venv  ## dist/yogurt, one file (PyInstaller, packaging/yogurt.spec); the node needs libbpfcc + headers
	@test -x $(VENV)/bin/pyinstaller || $(PY) -m pip install -q -e '.[binary]'
	$(VENV)/bin/pyinstaller --noconfirm --clean --log-level WARN --distpath dist --workpath build/pyinstaller packaging/yogurt.spec
	@ls -l dist/yogurt

# The compiled front end (cni_yogurt/agent/frontend.c): installed as the `yogurt` the runtime execs,
# with the full plugin beside it as `yogurt-full`; it relays a call to the node agent without a
# Python start, and execs yogurt-full for everything else. Static: it runs on any node as is.
front: dist/yogurt-front
dist/yogurt-front: cni_yogurt/agent/frontend.c
	@mkdir -p dist
	$(CC) -O2 -Wall -Wextra -Werror -static -o $@ $<

IMAGE ?= localhost/cni-yogurt:latest
image: binary front  ## the OCI image of packaging/kubernetes/ (plugin + agent), from local files: no registry
	bash packaging/kubernetes/build-image.sh $(IMAGE) dist/cni-yogurt-image.tar

cnitool:  ## .cache/cnitool/bin/cnitool, built offline from Debian's golang-github-appc-cni source
	@bash packaging/build-cnitool.sh >/dev/null

cri-stubs: venv  ## .cache/cri/api_pb2*.py: CRI client from Debian trixie's cri-api proto (test_containerd.py)
	@bash packaging/build-cri-stubs.sh >/dev/null

# The bench installs its own tools (not install-deps.sh: the tests need none of them).
BENCH_APT = iperf3 sockperf
bench-deps: venv
	@command -v iperf3 >/dev/null && command -v sockperf >/dev/null || { export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q $(BENCH_APT) >/dev/null || { apt-get update -q && apt-get install -y -q $(BENCH_APT); }; }
	@$(PY) -c 'import matplotlib' 2>/dev/null || \
		$(PY) -m pip install -q -e '.[bench]' --config-settings editable_mode=compat

# Across nodes needs an etcd: fetched as for `make cluster` (the section is left out if it cannot run).
bench: bench-deps binary front  ## natively, yogurt vs ptp + host-local: verbs, 500 lines, 200 parallel ADDs, the wire, across nodes -> docs/bench/
	@# Byte-compiled first: with PYTHONDONTWRITEBYTECODE in the caller's environment every exec
	@# of the entry point would compile the package again (≈ 2× the imports' time).
	@$(PY) -m compileall -q cni_yogurt >/dev/null
	@test -n "$$YOGURT_ETCD" || bash packaging/fetch-etcd.sh >/dev/null || echo "no etcd: the bench leaves out across nodes"
	$(PY) bench/bench.py $(BENCH_ARGS)

# In the VM every exec takes seconds: the wire only, fewer and shorter rounds.
BENCH_VM_ARGS ?= --only wire --wire-rounds 5 --wire-seconds 5 --rr-seconds 2
# The guest sees the checkout read-only: it writes into the VM's result dir, copied out after.
bench-vm: bench-deps binary  ## the wire on netkit, in the emulated VM -> docs/bench/vm/
	YOGURT_VM_RESULT_DIR=$(CURDIR)/.cache/bench-vm bash tests/vm/run.sh \
		$(PY) bench/bench.py --out $(CURDIR)/.cache/bench-vm/out $(BENCH_VM_ARGS)
	mkdir -p docs/bench/vm && cp .cache/bench-vm/out/bench.json docs/bench/vm/
	$(PY) bench/bench.py --render-only --out docs/bench/vm

clean:
	rm -rf $(VENV) .cache build dist *.egg-info
