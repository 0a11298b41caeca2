#!/usr/bin/env bash
# Install what the project needs on a fresh Debian machine: Java (for Spark) and
# a virtualenv with the package, pyspark and the test tools. Safe to run again.
set -euo pipefail
venv=${1:-.venv}

java_major() { java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1; }
if ! command -v java >/dev/null || [ "$(java_major)" -lt 17 ]; then
    echo "setup: installing a Java 17+ runtime from Debian" >&2
    apt-get update -qq
    apt-get install -y -qq openjdk-17-jre-headless >/dev/null
fi

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
stamp="$venv/.installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q -e ".[local,test]"
    touch "$stamp"
fi
