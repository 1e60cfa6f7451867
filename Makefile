# The two commands of the README: `make test` and `make demo`. Both install what they need first.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: bootstrap test lint unit demo bench schemas

bootstrap:
	./scripts/bootstrap

lint: bootstrap
	$(BIN)/ruff check operator tests bench
	$(BIN)/ruff format --check operator tests bench
	$(BIN)/mypy
	$(BIN)/mypy bench
	$(BIN)/lint-imports

unit: bootstrap
	$(BIN)/python -m pytest -q -p no:cacheprovider

test: lint unit

schemas: bootstrap
	$(BIN)/fleetop schema --write

demo: bootstrap
	$(BIN)/fleetop up --demo

bench: bootstrap
	$(BIN)/python -m bench
