# Everything a newcomer needs; each target installs what it uses (scripts/setup.sh).
VENV    ?= .venv
PY      := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup test-setup demo scaler-demo demo-job test bench clean

setup:
	./scripts/setup.sh $(VENV)
	./scripts/install-proxy.sh
	./scripts/install-browser.sh

## What only the tests need, once per machine, cached in ~/.cache/jhub-spark-scaler:
## kube-apiserver, kubelet, kube-scheduler, kube-controller-manager and kube-proxy built
## from Debian's sources in one pass, and etcd (estimated 10 minutes on 2 idle cores; the four
## node ones alone took 12.5 minutes under nice on a busy machine); containerd, runc,
## the CNI plugins and the real node's two test images from Debian packages (about 15 s);
## promtool unpacked from Debian's prometheus package (about 1 s); the Spark image of the
## Kubernetes tests from Debian packages and the suite's pyspark (once per pyspark/Python
## version: 1-3 minutes; scripts/build_spark_image.py); the production notebook+Spark image
## of helm-values/spark-image/Dockerfile, built with buildah from Debian and PyPI (once per
## change of the Dockerfile or the three modules it copies: 2.5 minutes under nice on 2 busy
## cores, an 843 MB archive; scripts/build_notebook_image.py).
test-setup: setup
	./scripts/install-kube-apiserver.sh
	./scripts/install-kube-node.sh
	./scripts/install-promtool.sh
	$(PY) scripts/build_spark_image.py
	$(PY) scripts/build_notebook_image.py

## A real JupyterHub on 127.0.0.1 with the scaler as a managed service on local Spark.
demo: setup
	$(VENV)/bin/pip install -q -e ".[demo]"
	@# class data archives for the notebooks' Spark JVMs: about a minute once, then kept
	@# until Spark or java changes; the demo runs without them if this fails
	$(PY) -m jhub_spark_scaler.jvm_archives build --out .cache/jvm-archives || \
		echo "make demo: no class data archives; notebook Spark JVMs start slower" >&2
	VENV=$(VENV) ./scripts/demo.sh

## The scaler alone on the embedded default: a local Spark master and worker processes.
scaler-demo: setup
	$(VENV)/bin/jhub-spark-scaler --max-workers=4 --idle-workers=1 --scale-down-delay=10 --poll-interval=1

## In a second terminal while a demo runs: a Spark job that makes the pool grow, then shrink.
demo-job:
	$(PY) examples/spark_job.py

## The whole test suite: real Spark, real hub, real browser, real kube-apiserver.
test: test-setup
	$(PY) -m pytest $(PYTEST_ARGS)

## Cycle-cost benchmark; writes benchmarks/RESULTS.md.
bench: setup
	$(PY) benchmarks/cycle_cost.py

clean:
	rm -rf $(VENV) .pytest_cache
