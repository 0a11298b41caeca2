#!/usr/bin/env bash
# The README's first command: a real JupyterHub on 127.0.0.1 with the scaler as a
# managed service on local Spark. Everything is installed by `make setup` and
# scripts/install-proxy.sh; state lives in .cache/demo. Ctrl-C stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
export PATH="$PWD/.cache/node/node_modules/.bin:$PATH"
export DEMO_STATE_DIR="$PWD/.cache/demo"
mkdir -p "$DEMO_STATE_DIR"
DEMO_PASSWORD=$("$venv/bin/python" -c 'import secrets; print(secrets.token_urlsafe(12))')
export DEMO_PASSWORD
cat <<TXT

  JupyterHub:  http://127.0.0.1:${DEMO_PORT:-8000}/   user: demo   password: $DEMO_PASSWORD
  Spark UI:    http://127.0.0.1:8080/
  Start your server, then in a notebook:
      from pyspark.sql import SparkSession
      spark = SparkSession.builder.getOrCreate()   # a worker is already waiting
      spark.range(10**7).selectExpr("sum(id)").show()

TXT
exec "$venv/bin/jupyterhub" -f demo/jupyterhub_config.py
