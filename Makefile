# The two commands a user needs: `make demo` (setup and run) and `make test`.
# Every target runs setup first; setup is idempotent and takes seconds when warm.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Fast DDS drops large images between processes with its default transports (docs/troubleshooting.md).
export FASTDDS_BUILTIN_TRANSPORTS ?= LARGE_DATA

.PHONY: setup test lint demo bench

setup:
	@bash scripts/setup.sh

test: setup
	$(PY) -m pytest -ra

lint: setup
	$(VENV)/bin/ruff check kp_perception training bench test launch
