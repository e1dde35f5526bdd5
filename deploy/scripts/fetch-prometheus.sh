#!/usr/bin/env bash
# Unpack Debian's `prometheus` package (prometheus + promtool) into ~/.cache/k2/prometheus and print
# its bin directory. No service is installed or started; used by the tests and by `make prometheus`.
# Needs apt (Debian); runs `apt-get update` once if the package index does not know the package.
set -euo pipefail
CACHE="${K2_CACHE_DIR:-$HOME/.cache/k2}/prometheus"
BIN="$CACHE/root/usr/bin"
if [[ -x "$BIN/prometheus" && -x "$BIN/promtool" ]]; then
    echo "$BIN"
    exit 0
fi
mkdir -p "$CACHE/download"
cd "$CACHE/download"
rm -f prometheus_*.deb
if ! apt-get download prometheus >&2 2>/dev/null; then
    apt-get update -qq >&2
    apt-get download prometheus >&2
fi
rm -rf "$CACHE/root.tmp"
dpkg -x prometheus_*.deb "$CACHE/root.tmp"
rm -rf "$CACHE/root"
mv "$CACHE/root.tmp" "$CACHE/root"
"$BIN/promtool" --version >&2
echo "$BIN"
