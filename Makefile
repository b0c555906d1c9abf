# Two entry points for a fresh machine: `make run` (the default pipeline) and `make test`.
VENV      ?= .venv
BIN       := $(abspath $(VENV))/bin
PIP       := $(BIN)/pip install --constraint constraints.txt
CORES     ?= all
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup run test lint dvc-repro benchmark screenshot demo clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) --editable ".[workflow,demo,dev]"
	touch $@

run: setup
	snakemake --cores $(CORES)

test: setup
	python -m pytest

lint: setup
	snakemake --lint

dvc-repro: setup
	test -d .dvc || dvc init --quiet
	dvc repro

demo: setup
	busflow demo --results results

# The README's demo picture, taken by the end-to-end browser test.
screenshot: setup
	BUSFLOW_SCREENSHOT=docs/images/demo.png python -m pytest tests/test_demo.py -k uploaded_scan

benchmark: setup
	python benchmarks/pipeline_walltime.py

clean:
	rm -rf results .snakemake
