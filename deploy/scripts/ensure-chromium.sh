#!/usr/bin/env bash
# Make sure Debian's headless-capable Chromium is installed (the dashboard test drives it through
# Playwright with executable_path=/usr/bin/chromium); print its path. Needs root and apt, like the
# PostgreSQL install in src/k2/devservices/postgres.py; runs `apt-get update` once if needed.
set -euo pipefail
BIN="${K2_CHROMIUM:-/usr/bin/chromium}"
if [[ -x "$BIN" ]]; then
    echo "$BIN"
    exit 0
fi
if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
    echo "chromium not found at $BIN: install Debian's package (apt-get install -y chromium) as root" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends chromium >&2 2>/dev/null; then
    apt-get update -qq >&2
    apt-get install -y --no-install-recommends chromium >&2
fi
"$BIN" --version >&2
echo "$BIN"
