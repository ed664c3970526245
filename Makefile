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

test: $(DEV)
	$(BIN)/python -m pytest -q

demo: $(RUNTIME)
	@echo "chronos is installed in $(VENV): 'source $(BIN)/activate' puts it on PATH in your shell"
	$(BIN)/chronos dev

wheel: $(DEV)
	$(BIN)/python -m pip wheel --quiet --no-deps -w dist .

clean:
	rm -rf $(VENV) .chronos-dev build dist
