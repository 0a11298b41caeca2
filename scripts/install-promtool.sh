#!/usr/bin/env bash
# Unpack Prometheus's `promtool` from Debian's `prometheus` package into the per-machine
# cache (${JSS_CACHE:-~/.cache/jhub-spark-scaler}/bin): tests/test_alert_rules.py checks
# the documented alert rules with it. No system changes, no service installed: the
# package is fetched with `apt-get download` and unpacked with `dpkg -x` in a temporary
# directory. Safe to run again: does nothing when promtool is there.
set -euo pipefail

cache=${JSS_CACHE:-$HOME/.cache/jhub-spark-scaler}
bin="$cache/bin"
if [ -x "$bin/promtool" ]; then
    exit 0
fi
mkdir -p "$bin"
work=$(mktemp -d "$cache/promtool.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
echo "install-promtool: unpacking promtool from Debian's prometheus package into $bin" >&2
download() { apt-get -o APT::Sandbox::User=root download -qq prometheus; }
download 2>/dev/null || { apt-get update -qq; download; }
dpkg -x prometheus_*.deb unpacked
install -m 0755 unpacked/usr/bin/promtool "$bin/promtool"
