# Two entry points for a fresh machine: `make run` (the default pipeline) and `make test`.
VENV      ?= .venv
BIN       := $(abspath $(VENV))/bin
PIP       := $(BIN)/pip install --constraint constraints.txt
CORES     ?= all
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup run test lint dvc-repro benchmark screenshot report-screenshot demo clean

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

# The README's report picture: the first screen of the default run's report (run `make run` first).
report-screenshot: setup
	python benchmarks/report_screenshot.py --report results/synthetic/report --out docs/images/report.png

benchmark: setup
	python benchmarks/pipeline_walltime.py

clean:
	rm -rf results .snakemake
