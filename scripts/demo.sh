#!/usr/bin/env bash
# Runs the multi-instance demo (`cargo run --example multi-instance`). Unless
# REDIS_URL names a Redis to use, the demo starts its own redis-server on a
# free loopback port, so the binary must be installed; on Debian/Ubuntu this
# script installs it when it is missing. Arguments go to the demo
# (`--instances N --duration SECS --rate REQ_PER_S`).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/packages.sh

[ -n "${REDIS_URL:-}" ] || need_programs redis-server
exec cargo run --locked --example multi-instance -- "$@"
