# The README's two commands: `make demo` and `make test`.
.PHONY: setup demo test test-fast docs bench bench-cli

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/microvm run examples/hello/vm.toml

test: setup
	.venv/bin/python -m pytest -n 2 --dist loadgroup -q

test-fast: setup
	.venv/bin/python -m pytest -q -m "not boot"

docs: setup
	.venv/bin/microvm options --format md > docs/options.md
	.venv/bin/python -m microvm.hypervisors.table > docs/hypervisors.md

bench:
	./scripts/setup.sh --bench
	.venv/bin/python bench/run.py

# Command start-up alone (bench/cli.py), next to `virsh list` of an unprivileged user's session libvirtd:
# libvirt's client, daemon and qemu driver without libvirt-daemon-system, whose scripts would set up the
# system daemon and its default network (a bridge in the machine's own namespace).
bench-cli: setup
	.venv/bin/pip install -q -e '.[bench]'
	apt-get install -y --no-install-recommends libvirt-clients libvirt-daemon libvirt-daemon-driver-qemu
	.venv/bin/python bench/cli.py
