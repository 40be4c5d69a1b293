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
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-20}
SECONDS_PER_ROUND=${2:-30}
SERVERS=${SERVERS:-"etcd keel"}

source scripts/bench-cluster.sh
bench_setup longrun
# What an operator runs with: snapshots every 2,000 entries, history kept for a minute.
LONG_RUN_FLAGS=(--snapshot-count 2000 --auto-compaction-mode periodic --auto-compaction-retention 1m)

largest_dir_mb() { du -sm "$WORK/$1"/m* | sort -n | tail -1 | cut -f1; }
files_in_largest() { local d; d=$(du -sm "$WORK/$1"/m* | sort -n | tail -1 | cut -f2); find "$d" -type f | wc -l; }
max_rss_mb() { local max=0 rss; for pid in "${PIDS[@]}"; do rss=$(awk '/VmRSS/ {print int($2/1024)}' "/proc/$pid/status" 2>/dev/null || echo 0); (( rss > max )) && max=$rss; done; echo "$max"; }

for server in $SERVERS; do
    case $server in
        etcd) start_cluster etcd etcd "${LONG_RUN_FLAGS[@]}" ;;
        keel) start_cluster keel "$KEEL" server "${LONG_RUN_FLAGS[@]}" ;;
        *) echo "unknown server $server" >&2; exit 2 ;;
    esac
    for round in $(seq "$ROUNDS"); do
        line=$("$KEEL" bench kv --endpoints "$ENDPOINTS" --op put --clients 64 --conns 16 --keys 10000 \
            --value-bytes 1024 --seconds "$SECONDS_PER_ROUND")
        qps=$(sed -E 's/.* qps=([0-9]+).*/\1/' <<<"$line")
        p99=$(sed -E 's/.* p99=([0-9.]+ms).*/\1/' <<<"$line")
        errors=$(sed -E 's/.* errors=([0-9]+).*/\1/' <<<"$line")
        echo "server=$server round=$round qps=$qps p99=$p99 errors=$errors data_dir_mb=$(largest_dir_mb "$server") files=$(files_in_largest "$server") max_rss_mb=$(max_rss_mb)"
    done
    stop_cluster
done
