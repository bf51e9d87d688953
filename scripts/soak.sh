#!/usr/bin/env bash
# Soak test (not CI): the multi-instance demo's load with faults injected on
# Redis (bus subscriptions killed, clients paused) for N minutes (default 10),
# with each instance's RAM layer capped at 4 MiB over a key space far larger
# than that. Reports memory over time (process RSS, RAM-layer bytes against
# the budget), errors, and the demo's verdict: after every rename, every
# instance served the new value.
#   scripts/soak.sh        # 10 minutes
#   scripts/soak.sh 2      # 2 minutes
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-10}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cargo build --release --example multi-instance >/dev/null 2>&1
set +e
./target/release/examples/multi-instance \
    --duration $((minutes * 60)) --rate 300 --keys 2000000 --ram-mb 4 \
    --invalidate-every 5 --faults --report "$work/memory.csv" >"$work/demo.log" 2>&1
status=$?
set -e

# The demo redraws its live view; keep what follows the last one.
grep '^faults injected' "$work/demo.log" || true
sed -n '/^summary:/,$p' "$work/demo.log"
python3 - "$work/memory.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
by_port = {}
for r in rows:
    by_port.setdefault(r["port"], []).append(r)
print()
print("| instance | RSS first / last / max (MiB) | RAM layer max (MiB) | RAM budget (MiB) | within budget |")
print("|---|---|---|---|---|")
for port, rs in sorted(by_port.items()):
    rss = [int(r["rss_kib"]) / 1024 for r in rs]
    ram = [int(r["ram_bytes"]) / 2**20 for r in rs]
    budget = int(rs[0]["ram_budget_bytes"]) / 2**20
    print(f"| :{port} | {rss[0]:.1f} / {rss[-1]:.1f} / {max(rss):.1f} | {max(ram):.2f} | {budget:.0f} | {'yes' if max(ram) <= budget else 'NO'} |")
print(f"\n{len(rows)} samples, every 10 s. RSS and RAM-layer MiB over time (one row a minute):")
print()
ports = sorted(by_port)
print("| t (s) | " + " | ".join(f":{p} RSS / RAM" for p in ports) + " |")
print("|---|" + "---|" * len(ports))
for i in range(0, min(len(v) for v in by_port.values()), 6):
    cells = [f"{int(by_port[p][i]['rss_kib'])/1024:.1f} / {int(by_port[p][i]['ram_bytes'])/2**20:.2f}" for p in ports]
    print(f"| {by_port[ports[0]][i]['seconds']} | " + " | ".join(cells) + " |")
PY
exit "$status"
