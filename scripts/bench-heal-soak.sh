#!/usr/bin/env bash
# Self-healing over minutes, with realistic settings: 3 voters and 2 spares of keel on loopback,
# the default --replace-dead-after (60 s) and membership period (1 s), a small --snapshot-count
# and auto-compaction, 1 KiB puts from 64 clients all along. One voter is killed with SIGKILL
# after the first minute; the script reports every 30 s: throughput and p99, the voters in
# MemberList, the under-replicated count, and every process's RSS, threads and open files (the
# membership protocol runs in all five, spares included, and must not grow).
#
#   scripts/bench-heal-soak.sh [MINUTES]        default 5
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-5}

source scripts/bench-cluster.sh
bench_setup heal-soak
FLAGS=(--snapshot-count 10000 --auto-compaction-mode periodic --auto-compaction-retention 1m
       --quota-backend-bytes $((8 << 30)))
start_cluster keel "$KEEL" server "${FLAGS[@]}"
for i in 1 2; do
    "$KEEL" server --spare --name "s$i" --data-dir "$WORK/keel/s$i" \
        --listen-client-urls "http://127.0.0.1:5$((i + 3))379" --advertise-client-urls "http://127.0.0.1:5$((i + 3))379" \
        --listen-peer-urls "http://127.0.0.1:5$((i + 3))380" --initial-advertise-peer-urls "http://127.0.0.1:5$((i + 3))380" \
        --initial-cluster "$CLUSTER" --initial-cluster-state existing --initial-cluster-token bench-keel \
        "${FLAGS[@]}" >"$WORK/keel-s$i.log" 2>&1 &
    PIDS+=($!)
done
ALL="$ENDPOINTS,127.0.0.1:54379,127.0.0.1:55379"

voters() { # the voters' names in MemberList, from a survivor
    ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:51379 member list 2>/dev/null \
        | awk -F', ' '$6 == "false" {printf "%s ", $3}'
}
processes() { # RSS MiB / threads / open files of each live process
    local out="" pid
    for pid in "${PIDS[@]}"; do
        if [ -d "/proc/$pid" ]; then
            out="$out $(awk '/VmRSS/ {printf "%d", $2 / 1024}' "/proc/$pid/status")M/$(ls "/proc/$pid/task" | wc -l)t/$(ls "/proc/$pid/fd" | wc -l)f"
        else
            out="$out dead"
        fi
    done
    echo "${out# }"
}
under() { # the leader reports it (the others say 0): the largest over the live members
    local endpoint max=0 value
    for endpoint in ${ALL//,/ }; do
        value=$(curl -s -m 2 "http://$endpoint/metrics" | awk '$1 == "keel_under_replicated_voters" {print $2}')
        [ -n "$value" ] && [ "$value" -gt "$max" ] && max=$value
    done
    echo "$max"
}

start=$(date +%s)
for half in $(seq $((MINUTES * 2))); do
    if [ "$half" = 3 ]; then
        kill -9 "${PIDS[1]}"
        wait "${PIDS[1]}" 2>/dev/null || true
        echo "t=$(( $(date +%s) - start ))s kill -9 m2 at $(date -u +%H:%M:%S.%N)"
    fi
    line=$("$KEEL" bench kv --endpoints "127.0.0.1:51379,127.0.0.1:53379" --op put --clients 64 --conns 8 \
        --keys 10000 --value-bytes 1024 --seconds 30)
    qps=$(sed -E 's/.* qps=([0-9]+).*/\1/' <<<"$line")
    p99=$(sed -E 's/.* p99=([0-9.]+ms).*/\1/' <<<"$line")
    echo "t=$(( $(date +%s) - start ))s qps=$qps p99=$p99 voters=[$(voters)] under_replicated=$(under)" \
        "processes(m1 m2 m3 s1 s2)=[$(processes)]"
done
grep -h "replacing a dead voter" "$WORK"/keel-m1.log "$WORK"/keel-m3.log | sed -E 's/^([^ ]+) .*(replacing.*)/\1 \2/' || true
disown -a
