# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SAMPLE_MB ?= 10

.PHONY: demo test install sample clean

$(BIN)/tokenmill: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,sample]'
	@touch $@

install: $(BIN)/tokenmill

sample: install
	$(BIN)/tokenmill sample --out data/sample --size-mb $(SAMPLE_MB)

demo: install
	@start=$$(date +%s); \
	$(BIN)/tokenmill sample --out data/sample --size-mb $(SAMPLE_MB) && \
	$(BIN)/tokenmill build sample --out runs/demo && \
	$(BIN)/tokenmill verify runs/demo/manifest.json && \
	$(BIN)/tokenmill inspect runs/demo/manifest.json --split train --doc 0 | head -12 && \
	echo "demo finished in $$(( $$(date +%s) - start ))s"

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -ra --durations=15

clean:
	rm -rf runs data/sample
