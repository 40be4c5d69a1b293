#!/usr/bin/env bash
# What auth costs, keel beside etcd 3.4 in one run: put x16 and linearizable get x16 with auth
# off, then with auth on as a user whose role has read-write on the benchmark's prefix (every
# request's permissions checked), then off again, on the same 3-member loopback cluster per
# server; "off" is the mean of the runs before and after, so a history that grows or a box
# that warms up does not pass for the cost of auth.
#
#   scripts/bench-auth.sh [SECONDS]          default 10 s per load
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_LOAD=${1:-10}

source scripts/bench-cluster.sh
bench_setup bench-auth

ctl() { ETCDCTL_API=3 etcdctl --endpoints="$ENDPOINTS" "$@" >/dev/null; }
load() { # load NAME OP [--user ...]
    local name=$1 op=$2; shift 2
    if [[ $# -gt 0 ]]; then compact --user=root:root-pw; else compact; fi
    line=$("$KEEL" bench kv --endpoints "$ENDPOINTS" --op "$op" --clients 16 --conns 3 --seconds "$SECONDS_PER_LOAD" "$@")
    echo "$name $line" | tee -a "$WORK/results"
}
run() { # run SERVER
    for op in put get; do load "$1-auth-off" "$op"; done
    ctl user add root --new-user-password=root-pw
    ctl role add root
    ctl user grant-role root root
    ctl role add bench
    ctl role grant-permission bench --prefix=true readwrite bench/
    ctl user add bencher --new-user-password=bench-pw
    ctl user grant-role bencher bench
    ctl auth enable
    for op in put get; do load "$1-auth-on" "$op" --user bencher:bench-pw; done
    ETCDCTL_API=3 etcdctl --endpoints="$ENDPOINTS" --user=root:root-pw auth disable >/dev/null
    for op in put get; do load "$1-auth-off2" "$op"; done
}

NAME_OF_RUN=keel; start_cluster keel "$KEEL" server; run keel; stop_cluster
NAME_OF_RUN=etcd; start_cluster etcd etcd; run etcd; stop_cluster

echo
python3 - "$WORK/results" <<'PY'
import re, sys
rows = {}
for line in open(sys.argv[1]):
    name, rest = line.split(" ", 1)
    f = dict(re.findall(r"(\w[\w.]*)=([\w.]+)", rest))
    rows[(name, f["op"])] = f
print(f"{'load':<12}{'server':<7}{'qps off':>9}{'qps on':>9}{'on/off':>8}{'p99 off':>9}{'p99 on':>9}")
for server in ("keel", "etcd"):
    for op in ("Put", "Get"):
        before, on, after = (rows.get((server + suffix, op)) for suffix in ("-auth-off", "-auth-on", "-auth-off2"))
        if not before or not on or not after: continue
        off_qps = (float(before["qps"]) + float(after["qps"])) / 2
        off_p99 = (float(before["p99"].rstrip("ms")) + float(after["p99"].rstrip("ms"))) / 2
        print(f"{op+' x16':<12}{server:<7}{off_qps:>9.0f}{on['qps']:>9}{float(on['qps'])/off_qps:>7.2f}x{off_p99:>9.2f}{on['p99']:>9}")
PY
