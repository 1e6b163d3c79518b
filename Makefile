# Two commands do all set-up on a fresh Debian machine (Python 3.11, root):
#   make demo   installs everything and runs the main job against the built-in pipeline
#   make test   installs everything and runs lint, type checks and the whole test suite
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
SUDO    = $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system demo test lint typecheck unit clean

# tshark: packet capture and dissection; chromium: the report's headless-browser check
system:
	@command -v tshark >/dev/null 2>&1 && command -v chromium >/dev/null 2>&1 || { \
	  echo "installing tshark and chromium (Debian packages) ..."; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq tshark chromium >/dev/null; }

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,reference,webrtc,load]'
	touch $(STAMP)

setup: system $(STAMP)

demo: setup
	$(BIN)/voiceaudit run

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest -q -n 2 --dist loadgroup -m 'not udp_capture'
	$(BIN)/pytest -q -m udp_capture

test: lint typecheck unit

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache voiceaudit-runs
