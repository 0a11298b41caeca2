#!/usr/bin/env bash
# The README's first command: a real JupyterHub on 127.0.0.1 with the scaler as a
# managed service on local Spark. Everything is installed by `make setup` and
# scripts/install-proxy.sh; state lives in .cache/demo. Ctrl-C stops it all.
#
# The hub keeps this script's PID (exec), so a signal to it reaches the hub. The login
# banner comes from a waiter in the background (not the hub's child: nothing for the hub
# to reap), once /hub/login answers 200 (until then the proxy answers 404 for several
# seconds); it gives up after DEMO_WAIT_SECONDS (120) and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
export PATH="$PWD/.cache/node/node_modules/.bin:$PATH"
export DEMO_STATE_DIR="${DEMO_STATE_DIR:-$PWD/.cache/demo}"
mkdir -p "$DEMO_STATE_DIR"
DEMO_PASSWORD=$("$venv/bin/python" -c 'import secrets; print(secrets.token_urlsafe(12))')
export DEMO_PASSWORD
port=${DEMO_PORT:-8000}
wait_seconds=${DEMO_WAIT_SECONDS:-120}
hub_pid=$$

banner() {
    cat <<TXT

  JupyterHub:  http://127.0.0.1:$port/   user: demo   password: $DEMO_PASSWORD
  Spark UI:    http://127.0.0.1:8080/
  Logging in starts your notebook server. Then, in a notebook:
      from pyspark.sql import SparkSession
      spark = SparkSession.builder.getOrCreate()   # a worker is already waiting
      spark.range(10**7).selectExpr("sum(id)").show()

TXT
}

# Polls once a second; stops when the hub has exited (its PID is gone) or at the deadline.
wait_then_banner() {
    local deadline=$((SECONDS + wait_seconds)) code
    while ((SECONDS < deadline)) && kill -0 "$hub_pid" 2>/dev/null; do
        code=$("$venv/bin/python" - "http://127.0.0.1:$port/hub/login" <<'PY'
import sys
import urllib.error
import urllib.request

try:
    print(urllib.request.urlopen(sys.argv[1], timeout=2).status)
except urllib.error.HTTPError as e:
    print(e.code)
except OSError:
    print(0)
PY
)
        if [[ $code == 200 ]]; then
            banner
            return
        fi
        sleep 1
    done
    if kill -0 "$hub_pid" 2>/dev/null; then
        echo "demo: http://127.0.0.1:$port/hub/login did not answer 200 within ${wait_seconds} s" \
             "(last answer: ${code:-none}); see the hub's log above. Ctrl-C stops the demo." >&2
    fi
}

(wait_then_banner &)
exec "$venv/bin/jupyterhub" -f demo/jupyterhub_config.py "$@"
