#!/usr/bin/env bash
# Is keel's leader detection quiet? A healthy cluster under saturating write load must never
# change leader: keel (phi-accrual suspicion on) against etcd 3.4 (Debian's etcd-server), one
# after the other on this box, same flags, same load tool, same load.
#
#   scripts/bench-quiet.sh [MINUTES]        default 10
#
# Each server: 3 members on loopback, default timing (100 ms heartbeat, 1 s election), history
# auto-compacted to the last minute and an 8 GiB quota (else etcd's 2 GiB fill in 5 minutes and
# every write after is refused), then MINUTES back-to-back minutes of 1 KiB puts from 256 clients
# over 10,000 keys. After every minute
# it prints throughput, p99, and from every member's /metrics the leader changes it has seen
# (etcd_server_leader_changes_seen_total, the first election included) and, for keel, the times
# it suspected its leader (keel_leader_suspicions_total) and judged its own disk slow
# (keel_disk_slow_flags_total: on a healthy cluster every one is a false flag).
#   SERVERS="keel" scripts/bench-quiet.sh 2      one server only
#   KEEL_FLAGS="--experimental-leader-suspicion-phi 0" SERVERS=keel scripts/bench-quiet.sh 4   keel's detector off
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-10}
SERVERS=${SERVERS:-"etcd keel"}

source scripts/bench-cluster.sh
bench_setup quiet
QUIET_FLAGS=(--auto-compaction-mode periodic --auto-compaction-retention 1m --quota-backend-bytes $((8 << 30)))

metric() { # metric NAME: the value on each member, space-separated
    local out="" endpoint value
    for endpoint in ${ENDPOINTS//,/ }; do
        value=$(curl -s -m 2 "http://$endpoint/metrics" | awk -v n="$1" '$1 == n {print $2}')
        out="$out ${value:-?}"
    done
    echo "${out# }"
}

for server in $SERVERS; do
    case $server in
        etcd) start_cluster etcd etcd "${QUIET_FLAGS[@]}" ;;
        keel) start_cluster keel "$KEEL" server "${QUIET_FLAGS[@]}" ${KEEL_FLAGS:-} ;;
        *) echo "unknown server $server" >&2; exit 2 ;;
    esac
    for minute in $(seq "$MINUTES"); do
        line=$("$KEEL" bench kv --endpoints "$ENDPOINTS" --op put --clients 256 --conns 16 --keys 10000 \
            --value-bytes 1024 --seconds 60)
        qps=$(sed -E 's/.* qps=([0-9]+).*/\1/' <<<"$line")
        p99=$(sed -E 's/.* p99=([0-9.]+ms).*/\1/' <<<"$line")
        echo "server=$server minute=$minute qps=$qps p99=$p99" \
            "leader_changes_seen=[$(metric etcd_server_leader_changes_seen_total)]" \
            "suspicions=[$(metric keel_leader_suspicions_total)]" \
            "slow_disk_flags=[$(metric keel_disk_slow_flags_total)]"
    done
    stop_cluster
done
