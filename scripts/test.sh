#!/usr/bin/env bash
# Runs the whole test suite. The tests start their own redis-server processes
# on free loopback ports, so the binary must be installed; on Debian/Ubuntu
# this script installs it when it is missing. The TLS tests (feature `tls`,
# in tests/security.rs) also need the `openssl` CLI, which generates their
# certificates, and a redis-server built with TLS (Debian's is).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "${missing[*]} not found; installing with apt-get" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cargo test --locked --workspace "$@"
cargo test --locked --workspace --features tls --test security "$@"
