# pycni: the two commands a fresh machine needs are `make demo` and `make test`.
PYTHON ?= python3
export PYTHONPATH :=

.PHONY: deps zipapps test test-fast demo bench clean

deps:
	@tools/install-deps.sh

zipapps: deps
	$(PYTHON) zipapp/build.py --out dist/bin

test: deps zipapps
	$(PYTHON) -m pytest -n 2 -q -p no:cacheprovider tests

demo: deps zipapps
	$(PYTHON) tools/demo.py

bench: deps zipapps
	$(PYTHON) bench/run.py

clean:
	rm -rf dist build *.egg-info
