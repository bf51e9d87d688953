#!/usr/bin/env bash
# Benchmarks cachenode beside its peers (peers/: moka, a bare and a plain
# Redis cache, the redis crate's client-side caching, the cached crate,
# multi-tier-cache, amalgam-cache and BentoCache on Node.js) on a
# redis-server the harness starts on a free loopback port.
#
#   scripts/bench-peers.sh            # every workload, under 10 minutes
#   scripts/bench-peers.sh --quick    # small sizes, about 1-2 minutes
#   scripts/bench-peers.sh --only 1,4 --systems cachenode,moka --out /tmp/r
#
# Needs redis-server (installed with apt-get when missing, as scripts/test.sh
# does); BentoCache runs when node and npm are installed, and is reported as
# skipped otherwise. The report lands in peers/results/ unless --out says.
set -euo pipefail
caller="$PWD"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if ! command -v redis-server >/dev/null 2>&1; then
    echo "redis-server not found; installing with apt-get" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi

cargo build --locked --release --manifest-path peers/Cargo.toml
bin="$root/peers/target/release/cachenode-peers"

if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    echo "preparing BentoCache (npm install in peers/bento)" >&2
    "$bin" prepare-bento || echo "BentoCache could not be prepared; the report will say why" >&2
else
    echo "node/npm not found: BentoCache will be reported as skipped" >&2
fi

# The report's directory, for the last line: --out is relative to the
# caller's directory, where the harness runs.
out="$root/peers/results"
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[$i]}" in
        --out) out="${args[$((i + 1))]:-$out}" ;;
        --out=*) out="${args[$i]#--out=}" ;;
    esac
done
case "$out" in
    /*) ;;
    *) out="$caller/$out" ;;
esac

cd "$caller"
"$bin" "$@"
echo "report: $out/report.md"
