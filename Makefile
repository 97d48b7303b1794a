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

# The first five minutes (docs/getting_started.md): simulate a clip, run the real node with the
# shipped model over ROS 2, write out/demo_<kind>/ (GIF, MP4, PNG, node output bag, summary.json).
.PHONY: demo-tusk models
demo: setup
	$(VENV)/bin/kp-perception demo pyramids

demo-tusk: setup
	$(VENV)/bin/kp-perception demo tusk

# Retrain the shipped models/*.onnx on simulated data (KP_MODEL_MINUTES per model, default 12).
models: setup
	bash scripts/train_models.sh
