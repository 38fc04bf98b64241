# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: all demo test lint venv clean

all: test

$(BIN)/stubdom: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

# The real xenstored daemons' shim (stubdom.realxs) is built into the per-user cache
# when gcc is there; without gcc the venv is still complete, only cx/ox cannot run.
# So is the mypyc build of our sans-IO cores (stubdom.compiled: xenstored's, and the
# control channel's synchronous modules), when gcc and mypyc are there; without them,
# or if it fails, our xenstored, agent and toolstack run pure Python.
venv: $(BIN)/stubdom
	@if command -v gcc >/dev/null 2>&1; then \
		$(BIN)/python -m stubdom.realxs.build >/dev/null; \
	else \
		echo "no gcc: the real xenstored daemons will not run (install the Debian package gcc)"; \
	fi
	@if command -v gcc >/dev/null 2>&1 && $(BIN)/python -c "import mypyc" 2>/dev/null; then \
		$(BIN)/python -m stubdom.compiled build >/dev/null \
			|| echo "xenstored, the agent and the toolstack run pure Python (see the line above)"; \
	else \
		echo "no gcc or no mypyc: xenstored, the agent and the toolstack run pure Python"; \
	fi

demo: venv
	$(BIN)/stubdom demo --out demo-output

test: venv
	$(BIN)/ruff check src tests
	$(BIN)/mypy
	$(BIN)/vulture
	$(BIN)/lint-imports --no-cache
	$(BIN)/pytest -q -n 2

lint: venv
	$(BIN)/ruff check src tests
	$(BIN)/mypy
	$(BIN)/vulture
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
