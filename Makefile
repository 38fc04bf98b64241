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

venv: $(BIN)/stubdom

demo: venv
	$(BIN)/stubdom demo --out demo-output

test: venv
	$(BIN)/ruff check src tests --extend-exclude tests/oracle
	$(BIN)/mypy
	$(BIN)/vulture
	$(BIN)/lint-imports --no-cache
	$(BIN)/pytest -q

lint: venv
	$(BIN)/ruff check src tests --extend-exclude tests/oracle
	$(BIN)/mypy
	$(BIN)/vulture
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
