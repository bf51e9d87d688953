#!/usr/bin/env bash
# Runs every fuzz target for a while (default 60 s each) with cargo-fuzz and
# the nightly toolchain. Not part of CI. Crashes land in fuzz/artifacts/.
#   scripts/fuzz.sh            # 60 s per target
#   scripts/fuzz.sh 600        # 10 minutes per target
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
for target in envelope bus_message; do
    echo "== $target for ${seconds}s"
    cargo +nightly fuzz run "$target" "corpus/$target" -- -max_total_time="$seconds"
done
