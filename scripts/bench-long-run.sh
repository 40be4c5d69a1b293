#!/usr/bin/env bash
# The long run an operator would try before trusting a store: keel against etcd 3.4 (Debian's
# etcd-server), one after the other on this box, same flags, same load tool, same load.
#
#   scripts/bench-long-run.sh [ROUNDS] [SECONDS_PER_ROUND]        default 20 rounds of 30 s
#
# Each server: 3 members on loopback with `--snapshot-count 2000` and history auto-compacted to
# the last minute (`--auto-compaction-mode periodic --auto-compaction-retention 1m`, as the
# Kubernetes apiserver keeps its history short), then ROUNDS back-to-back rounds of 1 KiB puts
# from 64 clients over 10,000 keys. After every round it prints throughput and latency, the
# largest member's data dir, the file count in it, and the members' largest resident memory, so
# that growth over time shows: a data dir that plateaus, throughput that does not decay.
#   SERVERS="keel" scripts/bench-long-run.sh 4 30     one server only
#   SECURE=1 scripts/bench-long-run.sh                 with mutual TLS on both ports and auth on:
#       the load logs in as a user whose role covers its keys (a new simple token each round)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-20}
SECONDS_PER_ROUND=${2:-30}
SERVERS=${SERVERS:-"etcd keel"}

source scripts/bench-cluster.sh
bench_setup longrun
# What an operator runs with: snapshots every 2,000 entries, history kept for a minute.
LONG_RUN_FLAGS=(--snapshot-count 2000 --auto-compaction-mode periodic --auto-compaction-retention 1m)
LOAD_FLAGS=()
if [[ -n "${SECURE:-}" ]]; then
    CERTS="$WORK/certs"
    "$KEEL" certs --dir "$CERTS" --members member --users root >/dev/null
    LONG_RUN_FLAGS+=(--cert-file "$CERTS/member.pem" --key-file "$CERTS/member-key.pem"
        --trusted-ca-file "$CERTS/ca.pem" --client-cert-auth
        --peer-cert-file "$CERTS/member.pem" --peer-key-file "$CERTS/member-key.pem"
        --peer-trusted-ca-file "$CERTS/ca.pem" --peer-client-cert-auth)
    BENCH_SCHEME=https
    CTL_FLAGS=(--cacert "$CERTS/ca.pem" --cert "$CERTS/client-root.pem" --key "$CERTS/client-root-key.pem")
    LOAD_FLAGS=(--cacert "$CERTS/ca.pem" --cert "$CERTS/client-root.pem" --key "$CERTS/client-root-key.pem"
        --user bencher:bench-pw)
fi
secure_setup() { # users, a role on the load's keys, auth on (the root certificate acts as root)
    local ctl=(etcdctl --endpoints="$ENDPOINTS" "${CTL_FLAGS[@]}")
    export ETCDCTL_API=3
    "${ctl[@]}" user add root --new-user-password=root-pw >/dev/null
    "${ctl[@]}" role add root >/dev/null
    "${ctl[@]}" user grant-role root root >/dev/null
    "${ctl[@]}" role add bench >/dev/null
    "${ctl[@]}" role grant-permission bench --prefix=true readwrite bench/ >/dev/null
    "${ctl[@]}" user add bencher --new-user-password=bench-pw >/dev/null
    "${ctl[@]}" user grant-role bencher bench >/dev/null
    "${ctl[@]}" auth enable >/dev/null
}

largest_dir_mb() { du -sm "$WORK/$1"/m* | sort -n | tail -1 | cut -f1; }
files_in_largest() { local d; d=$(du -sm "$WORK/$1"/m* | sort -n | tail -1 | cut -f2); find "$d" -type f | wc -l; }
max_fds() { local max=0 n; for pid in "${PIDS[@]}"; do n=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l); (( n > max )) && max=$n; done; echo "$max"; }
max_rss_mb() { local max=0 rss; for pid in "${PIDS[@]}"; do rss=$(awk '/VmRSS/ {print int($2/1024)}' "/proc/$pid/status" 2>/dev/null || echo 0); (( rss > max )) && max=$rss; done; echo "$max"; }

for server in $SERVERS; do
    case $server in
        etcd) start_cluster etcd etcd "${LONG_RUN_FLAGS[@]}" ;;
        keel) start_cluster keel "$KEEL" server "${LONG_RUN_FLAGS[@]}" ;;
        *) echo "unknown server $server" >&2; exit 2 ;;
    esac
    [[ -n "${SECURE:-}" ]] && secure_setup
    for round in $(seq "$ROUNDS"); do
        line=$("$KEEL" bench kv --endpoints "$ENDPOINTS" --op put --clients 64 --conns 16 --keys 10000 \
            --value-bytes 1024 --seconds "$SECONDS_PER_ROUND" "${LOAD_FLAGS[@]}")
        qps=$(sed -E 's/.* qps=([0-9]+).*/\1/' <<<"$line")
        p99=$(sed -E 's/.* p99=([0-9.]+ms).*/\1/' <<<"$line")
        errors=$(sed -E 's/.* errors=([0-9]+).*/\1/' <<<"$line")
        echo "server=$server round=$round qps=$qps p99=$p99 errors=$errors data_dir_mb=$(largest_dir_mb "$server") files=$(files_in_largest "$server") max_rss_mb=$(max_rss_mb) max_fds=$(max_fds)"
    done
    stop_cluster
done
