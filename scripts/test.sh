#!/usr/bin/env bash
# Runs the whole test suite. The tests start their own redis-server processes
# on free loopback ports, so the binary must be installed; on Debian/Ubuntu
# this script installs it when it is missing. The TLS tests (feature `tls`,
# in tests/security.rs) also need the `openssl` CLI, which generates their
# certificates, and a redis-server built with TLS (Debian's is).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib/packages.sh
need_programs redis-server openssl

cargo test --locked --workspace "$@"
cargo test --locked --workspace --features tls --test security "$@"
