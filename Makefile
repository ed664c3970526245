# The two commands a fresh machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.installed-runtime
DEV := $(VENV)/.installed-dev

.PHONY: demo test venv wheel clean

# `make demo` installs the runtime dependencies only; `make test` adds the dev extra.
$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(RUNTIME)

$(DEV): $(RUNTIME)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(DEV)

venv: $(DEV)

# Two pytest workers (pytest-xdist), each with its own nats-server: most tests wait on a real
# server, so on CI's 2 cores the suite takes about half the wall time of one process.
test: $(DEV)
	$(BIN)/python -m pytest -q -n 2 --durations=20

demo: $(RUNTIME)
	@echo "chronos is installed in $(VENV): 'source $(BIN)/activate' puts it on PATH in your shell"
	$(BIN)/chronos dev

wheel: $(DEV)
	$(BIN)/python -m pip wheel --quiet --no-deps -w dist .

clean:
	rm -rf $(VENV) .chronos-dev build dist
