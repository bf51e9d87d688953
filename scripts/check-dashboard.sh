#!/usr/bin/env bash
# Checks that every panel of grafana/dashboards/cachenode.json shows data
# against a real Prometheus scraping the multi-instance demo.
#
# The demo must already be running, in another terminal:
#
#     cargo run --example multi-instance -- --duration 120
#
# This script then starts Prometheus (Debian's `prometheus` package, installed
# with apt-get when missing) with grafana/prometheus.yml, a throwaway storage
# directory and --web.listen-address 127.0.0.1:9090, waits for ~20 s of
# scrapes, runs every panel target's expr as an instant query (`$instance` ->
# `.*`, `$__rate_interval` -> `30s`) and prints OK / NO DATA per panel.
# Prometheus is stopped on exit, however the script ends.
#
# Exit status: 0 every panel has data, 1 some panel has none (or a query
# failed), 2 the check could not run (no demo, port taken, Prometheus failed).
#
#     scripts/check-dashboard.sh           # the check
#     scripts/check-dashboard.sh --list    # only print the queries it would run
#
# Environment: SCRAPE_WAIT (seconds, default 20), PROM_LISTEN (default
# 127.0.0.1:9090), DASHBOARD (default grafana/dashboards/cachenode.json).
# Not for CI: it needs the demo and a free port 9090.
set -euo pipefail
cd "$(dirname "$0")/.."

export DASHBOARD=${DASHBOARD:-grafana/dashboards/cachenode.json}
CONFIG=grafana/prometheus.yml
LISTEN=${PROM_LISTEN:-127.0.0.1:9090}
SCRAPE_WAIT=${SCRAPE_WAIT:-20}
DEMO_URL=http://127.0.0.1:8081/metrics

# The Python half: `targets` prints one JSON object per panel target, with the
# Grafana variables substituted; `answers URL` tells whether URL answers 2xx;
# `listens HOST:PORT` whether it accepts connections; `check BASE` queries
# Prometheus at BASE for every target and reports.
read -r -d '' PY <<'EOF' || true
import json, math, os, re, sys, urllib.error, urllib.parse, urllib.request

DASHBOARD = os.environ.get("DASHBOARD", "grafana/dashboards/cachenode.json")
SUBST = [("$__rate_interval", "30s"), ("${__rate_interval}", "30s"),
         ("${instance}", ".*"), ("$instance", ".*")]

def targets():
    with open(DASHBOARD) as f:
        dash = json.load(f)
    out = []
    def walk(panels):
        for p in panels:
            walk(p.get("panels", []))  # panels inside collapsed rows
            if p.get("type") == "row":
                continue
            for t in p.get("targets", []):
                expr = t.get("expr", "")
                for a, b in SUBST:
                    expr = expr.replace(a, b)
                out.append({"panel": p.get("title", "?"), "ref": t.get("refId", "?"), "expr": expr})
    walk(dash.get("panels", []))
    return out

def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()

def query(base, expr):
    url = base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        body = json.loads(get(url, 15))
    except urllib.error.HTTPError as e:  # a bad query: Prometheus says why
        body = json.loads(e.read().decode() or "{}")
    if body.get("status") != "success":
        raise RuntimeError(body.get("error", "query failed"))
    result = body["data"]["result"]
    values = [s["value"][1] for s in result] if isinstance(result, list) else [result[1]]
    return [v for v in values if not math.isnan(float(v))], len(values)

def check(base):
    # Scrape targets first: an instance that is down explains empty panels.
    health = json.loads(get(base + "/api/v1/targets"))["data"]["activeTargets"]
    for t in health:
        print(f"target {t['labels'].get('instance', '?'):<18} {t['health']}"
              + (f" ({t['lastError']})" if t.get("lastError") else ""))
    print()
    panels, failed = {}, 0
    for t in targets():
        try:
            real, total = query(base, t["expr"])
            status = "data" if real else ("only NaN" if total else "no data")
            if real:
                t["sample"] = f"{len(real)} series, e.g. {float(real[0]):.4g}"
        except Exception as e:  # bad PromQL, HTTP error
            status = f"error: {e}"
        panels.setdefault(t["panel"], []).append((t["ref"], t["expr"], status, t.get("sample")))
    for panel, rows in panels.items():
        error = any(s.startswith("error") for _, _, s, _ in rows)
        ok = any(s == "data" for _, _, s, _ in rows) and not error
        failed += not ok
        print(f"{'OK' if ok else 'ERROR' if error else 'NO DATA':<8} {panel}")
        for ref, expr, s, sample in rows:
            print(f"         {ref}: {sample}" if sample else f"         {ref}: {s}: {expr}")
    # Metrics the dashboard uses that Prometheus never saw: the panels showing
    # them may still be OK through a zero fallback (`or on() vector(0)`).
    seen = set(json.loads(get(base + "/api/v1/label/__name__/values"))["data"])
    used = sorted({m for t in targets() for m in re.findall(r"cachenode_[a-z_]+", t["expr"])})
    unseen = [m for m in used if m not in seen]
    if unseen:
        print("\nnot emitted during this run (fine for error and flush counters):")
        for m in unseen:
            print(f"  {m}")
    print(f"\n{len(panels) - failed} of {len(panels)} panels have data")
    return 1 if failed else 0

mode = sys.argv[1]
if mode == "targets":
    for t in targets():
        print(json.dumps(t))
elif mode == "listens":  # HOST:PORT accepts connections
    import socket
    host, port = sys.argv[2].rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), 2).close()
    except OSError:
        sys.exit(1)
elif mode == "answers":  # URL answers 2xx
    try:
        get(sys.argv[2], 2)
    except Exception:
        sys.exit(1)
elif mode == "check":
    sys.exit(check(sys.argv[2]))
EOF

py() { python3 -c "$PY" "$@"; }

if [ "${1:-}" = "--list" ]; then
    py targets
    exit 0
fi

if ! py answers "$DEMO_URL"; then
    echo "No cachenode instance answers on $DEMO_URL." >&2
    echo "Start the demo first, in another terminal:" >&2
    echo "    cargo run --example multi-instance -- --duration 120" >&2
    exit 2
fi

if ! command -v prometheus >/dev/null 2>&1; then
    echo "prometheus not found; installing Debian's package with apt-get" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq prometheus >/dev/null
fi

BASE="http://$LISTEN"
if py listens "$LISTEN"; then
    echo "Something already listens on $LISTEN (the prometheus service Debian's" >&2
    echo "package starts? 'sudo systemctl stop prometheus'), or set PROM_LISTEN." >&2
    exit 2
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/check-dashboard.XXXXXX")
PROM_PID=""
SLEEP_PID=""
cleanup() {
    [ -z "$SLEEP_PID" ] || kill "$SLEEP_PID" 2>/dev/null || true
    if [ -n "$PROM_PID" ] && kill -0 "$PROM_PID" 2>/dev/null; then
        kill "$PROM_PID" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$PROM_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -9 "$PROM_PID" 2>/dev/null || true
        wait "$PROM_PID" 2>/dev/null || true
        echo "prometheus stopped" >&2
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

prometheus \
    --config.file="$CONFIG" \
    --storage.tsdb.path="$TMP/data" \
    --web.listen-address="$LISTEN" \
    >"$TMP/prometheus.log" 2>&1 &
PROM_PID=$!
echo "prometheus started (pid $PROM_PID, $BASE, log $TMP/prometheus.log)" >&2

for _ in $(seq 60); do
    py answers "$BASE/-/ready" && break
    if ! kill -0 "$PROM_PID" 2>/dev/null; then
        echo "prometheus exited:" >&2
        tail -n 20 "$TMP/prometheus.log" >&2
        exit 2
    fi
    sleep 0.5
done
if ! py answers "$BASE/-/ready"; then
    echo "prometheus is not ready after 30 s:" >&2
    tail -n 20 "$TMP/prometheus.log" >&2
    exit 2
fi

echo "waiting ${SCRAPE_WAIT}s for scrapes..." >&2
# In the background so that a signal ends the wait at once.
sleep "$SCRAPE_WAIT" &
SLEEP_PID=$!
wait "$SLEEP_PID"
SLEEP_PID=""

py check "$BASE"
