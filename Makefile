# Everything a newcomer needs; each target installs what it uses (scripts/setup.sh).
VENV    ?= .venv
PY      := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo demo-job test bench clean

setup:
	./scripts/setup.sh $(VENV)

## Run the scaler on the embedded default: a local Spark master and worker processes.
demo: setup
	$(VENV)/bin/jhub-spark-scaler --max-workers=4 --idle-workers=1 --scale-down-delay=10 --poll-interval=1

## In a second terminal while `make demo` runs: a Spark job that makes the pool grow, then shrink.
demo-job:
	$(PY) examples/spark_job.py

## The whole test suite: real Spark master and workers, real drivers.
test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

## Cycle-cost benchmark; writes benchmarks/RESULTS.md.
bench: setup
	$(PY) benchmarks/cycle_cost.py

clean:
	rm -rf $(VENV) .pytest_cache
