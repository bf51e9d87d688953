#!/usr/bin/env bash
# Runs the whole test suite. The tests start their own redis-server processes
# on free loopback ports, so the binary must be installed; on Debian/Ubuntu
# this script installs it when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
    echo "redis-server not found; installing it with apt-get" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi

cargo test --locked --workspace "$@"
