# The README's two commands: `make demo` and `make test`.
.PHONY: setup demo test test-fast docs bench

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
