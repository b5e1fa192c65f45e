# One command sets up a fresh machine, one runs the tests (.ci/run runs exactly these two).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup test bench

setup:
	@free_kb=$$(df -Pk . | awk 'NR==2 {print $$4}'); if [ "$$free_kb" -lt 8000000 ]; then \
	  echo "setup: warning: $$((free_kb / 1024)) MB free on this disk; .venv takes about 7 GB (torch's CUDA build alone is 5.5 GB)"; fi
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,formats]'
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null && ! command -v chromium >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "setup: could not install Debian's chromium; the report browser test will be skipped"; fi

test:
	WANDB_MODE=offline DVC_NO_ANALYTICS=1 $(BIN)/python -m pytest -q

bench:
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done
