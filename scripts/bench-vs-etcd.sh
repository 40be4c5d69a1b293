#!/usr/bin/env bash
# Throughput and latency, keel against etcd 3.4 (Debian's etcd-server), on this box, in one run:
# the same 3-member loopback cluster started from the same etcd flags (etcd's default timing),
# the same load generator (`keel bench kv`, a closed-loop etcd v3 client), the same loads.
#
#   scripts/bench-vs-etcd.sh [SECONDS]          default 10 s per load
#
# Loads (256 B values, 10,000 keys): put with 1, 16 and 256 clients; linearizable get with 16;
# serializable get with 256; txn compare-and-set with 16; 80/20 get/put with 16. For each, the
# members' CPU time during the timed part (all three processes, user + system, from /proc; the
# fill before a read load excluded) per 1,000 operations: on two cores the ceiling is CPU per
# operation.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_LOAD=${1:-10}

source scripts/bench-cluster.sh
bench_setup bench

IFS=, read -r -a LOADS <<< "${LOADS_OVERRIDE:-}"  # e.g. LOADS_OVERRIDE="put 16,get 16"
if [[ ${#LOADS[@]} -eq 0 ]]; then LOADS=("put 1" "put 16" "put 256" "get 16" "get-serializable 256" "txn 16" "mixed 16"); fi
run_loads() { # run_loads NAME
    for load in "${LOADS[@]}"; do
        set -- $load
        compact
        line=$("$KEEL" bench kv --endpoints "$ENDPOINTS" --op "$1" --clients "$2" --conns "$(( $2 < 3 ? $2 : ($2 < 48 ? 3 : 16) ))" --seconds "$SECONDS_PER_LOAD" --server-pids "$(IFS=,; echo "${PIDS[*]}")")
        echo "$NAME_OF_RUN $line" | tee -a "$WORK/results"
    done
}

# ONLY=keel or ONLY=etcd runs one side (for quick iterations; comparisons need both).
if [[ "${ONLY:-keel}" == keel ]]; then NAME_OF_RUN=keel; start_cluster keel "$KEEL" server; run_loads; stop_cluster; fi
if [[ "${ONLY:-etcd}" == etcd ]]; then NAME_OF_RUN=etcd; start_cluster etcd etcd; run_loads; stop_cluster; fi

echo
python3 - "$WORK/results" <<'PY'
import re, sys
rows = {}
for line in open(sys.argv[1]):
    server, rest = line.split(" ", 1)
    f = dict(re.findall(r"(\w[\w.]*)=([\w.]+)", rest))
    key = (f["op"], int(f["clients"]))
    rows.setdefault(key, {})[server] = f
print(f"{'load':<26}{'keel qps':>10}{'etcd qps':>10}{'ratio':>7}{'keel p50':>10}{'etcd p50':>10}{'keel p99':>10}{'etcd p99':>10}{'keel cpu/kop':>14}{'etcd cpu/kop':>14}")
for (op, clients), r in rows.items():
    k, e = r.get("keel"), r.get("etcd")
    if not k or not e: continue
    ratio = float(k["qps"]) / max(float(e["qps"]), 1)
    print(f"{op+' x'+str(clients):<26}{k['qps']:>10}{e['qps']:>10}{ratio:>6.2f}x{k['p50']:>10}{e['p50']:>10}{k['p99']:>10}{e['p99']:>10}{k.get('cpu_ms_per_kop','?')+'ms':>14}{e.get('cpu_ms_per_kop','?')+'ms':>14}")
PY
