#!/usr/bin/env bash
# What TLS costs, keel beside etcd 3.4 in one run: new connections per second (TCP, the TLS
# handshake, HTTP/2, one serializable range, close; 16 at a time) and put x16 on long-lived
# connections, first in the clear, then with mutual TLS on the client and peer ports
# (--client-cert-auth, --peer-client-cert-auth; certificates from `keel certs`), on the same
# 3-member loopback cluster per server.
#
#   scripts/bench-tls.sh [SECONDS]          default 10 s per load
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_LOAD=${1:-10}

source scripts/bench-cluster.sh
bench_setup bench-tls
CERTS="$WORK/certs"
"$KEEL" certs --dir "$CERTS" --members member --users root >/dev/null
TLS_SERVER_FLAGS=(--cert-file "$CERTS/member.pem" --key-file "$CERTS/member-key.pem"
    --trusted-ca-file "$CERTS/ca.pem" --client-cert-auth
    --peer-cert-file "$CERTS/member.pem" --peer-key-file "$CERTS/member-key.pem"
    --peer-trusted-ca-file "$CERTS/ca.pem" --peer-client-cert-auth)
TLS_CLIENT_FLAGS=(--cacert "$CERTS/ca.pem" --cert "$CERTS/client-root.pem" --key "$CERTS/client-root-key.pem")

load() { # load NAME OP [bench flags...]
    local name=$1 op=$2; shift 2
    compact
    line=$("$KEEL" bench kv --endpoints "$ENDPOINTS" --op "$op" --clients 16 --conns 3 --seconds "$SECONDS_PER_LOAD" "$@")
    echo "$name $line" | tee -a "$WORK/results"
}
run() { # run NAME COMMAND...
    local name=$1; shift
    BENCH_SCHEME=http CTL_FLAGS=()
    start_cluster "$name-plain" "$@"
    for op in connect put; do load "$name-plain" "$op"; done
    stop_cluster
    BENCH_SCHEME=https CTL_FLAGS=(--cacert "$CERTS/ca.pem" --cert "$CERTS/client-root.pem" --key "$CERTS/client-root-key.pem")
    start_cluster "$name-tls" "$@" "${TLS_SERVER_FLAGS[@]}"
    for op in connect put; do load "$name-tls" "$op" "${TLS_CLIENT_FLAGS[@]}"; done
    stop_cluster
}

run keel "$KEEL" server
run etcd etcd

echo
python3 - "$WORK/results" <<'PY'
import re, sys
rows = {}
for line in open(sys.argv[1]):
    name, rest = line.split(" ", 1)
    f = dict(re.findall(r"(\w[\w.]*)=([\w.]+)", rest))
    rows[(name, f["op"])] = f
print(f"{'load':<16}{'server':<7}{'qps plain':>10}{'qps TLS':>9}{'TLS/plain':>10}{'p99 plain':>10}{'p99 TLS':>9}")
for op, label in (("Connect", "connect x16"), ("Put", "put x16")):
    for server in ("keel", "etcd"):
        plain, tls = rows.get((server + "-plain", op)), rows.get((server + "-tls", op))
        if not plain or not tls: continue
        ratio = float(tls["qps"]) / float(plain["qps"])
        print(f"{label:<16}{server:<7}{plain['qps']:>10}{tls['qps']:>9}{ratio:>9.2f}x{plain['p99']:>10}{tls['p99']:>9}")
for op, label in (("Connect", "connect x16"), ("Put", "put x16")):
    for mode in ("plain", "tls"):
        k, e = rows.get(("keel-" + mode, op)), rows.get(("etcd-" + mode, op))
        if k and e:
            print(f"keel/etcd {label} {mode}: {float(k['qps'])/float(e['qps']):.2f}x")
PY
