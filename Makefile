# The two set-up commands of the README. Both install first (idempotent), then run.
PY := .venv/bin/python

.PHONY: install run test
install:
	bash scripts/install.sh

run: install
	$(PY) -m experiments.run --config synthetic

test: install
	$(PY) -m pytest -n 2 --dist loadgroup tests
