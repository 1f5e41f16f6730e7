# pycni: the two commands a fresh machine needs are `make demo` and `make test`.
# Everything runs in the project's virtualenv (tools/install-deps.sh makes it from the system's
# python3): nothing is pip-installed into the system interpreter.
VENV ?= .venv
PYTHON = $(VENV)/bin/python
PYTEST = $(PYTHON) -m pytest -n 2 -q -p no:cacheprovider -p no:benchmark
export PYTHONPATH :=

.PHONY: deps zipapps lint test test-standalone test-server demo bench manifest clean

deps:
	@VENV=$(VENV) tools/install-deps.sh

zipapps: deps
	$(PYTHON) zipapp/build.py --out dist/bin

# Import layers (.importlinter; plugins/README.md says them in words) and types (pyproject's [tool.mypy]).
# mypy checks the code under its import names: build/typecheck/pycni/ links the folders in.
TYPECHECK = build/typecheck
lint: deps
	$(VENV)/bin/lint-imports --no-cache
	@mkdir -p $(TYPECHECK)/pycni
	@for d in plugins installer agent; do ln -sfn ../../../$$d $(TYPECHECK)/pycni/$$d; done
	@ln -sfn ../../plugins/server/wire.py $(TYPECHECK)/_pycni_wire.py
	$(PYTHON) -m mypy

# Every tier runs twice: plugins exec'd standalone, then through a pycni-server node server.
test: deps zipapps lint test-standalone test-server

test-standalone:
	$(PYTEST) tests

test-server:
	PYCNI_TEST_WITH_SERVER=1 $(PYTEST) -m "not standalone_only" tests

demo: deps zipapps
	$(PYTHON) tools/demo.py

bench: deps zipapps
	$(PYTHON) bench/run.py

# Regenerate the kubectl manifest charts/pycni.yaml from the chart (a test fails when it is stale).
manifest: deps
	$(PYTHON) tools/render-manifest.py

clean:
	rm -rf dist build *.egg-info
