# The two set-up commands of the README. Both install first (idempotent), then run; `test` lints (ruff) first.
PY := .venv/bin/python

.PHONY: install run test
install:
	bash scripts/install.sh

run: install
	$(PY) -m experiments.run --config synthetic

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest -n 2 --dist loadgroup tests
