#!/usr/bin/env bash
# Install configurable-http-proxy, the proxy JupyterHub starts, into .cache/node under
# the repo root: the hub tests and the demo run it from there. Safe to run again.
set -euo pipefail
dir="$(cd "$(dirname "$0")/.." && pwd)/.cache/node"
bin="$dir/node_modules/.bin/configurable-http-proxy"

if [ -x "$bin" ]; then
    exit 0
fi
if ! command -v npm >/dev/null; then
    echo "install-proxy: installing Node.js and npm from Debian" >&2
    apt-get update -qq
    apt-get install -y -qq nodejs npm >/dev/null
fi
mkdir -p "$dir"
npm install --prefix "$dir" --no-audit --no-fund --loglevel=error configurable-http-proxy
echo "install-proxy: installed $bin" >&2
