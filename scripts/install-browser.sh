#!/usr/bin/env bash
# Install Debian's chromium, the browser tests/test_admin_browser.py drives through
# Playwright (which comes from pip with the `test` extra; never `playwright install`).
# Safe to run again: does nothing when /usr/bin/chromium is there.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi
echo "install-browser: installing chromium from Debian" >&2
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
echo "install-browser: installed /usr/bin/chromium" >&2
