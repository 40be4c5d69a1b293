#!/usr/bin/env bash
# Do heavy reads hold up writes? keel against etcd 3.4 (Debian's etcd-server), one after the
# other on this box, same flags, same data, same load.
#
#   scripts/bench-heavy-reads.sh [KEYS] [SECONDS]     default 200,000 keys of 256 B, 20 s a phase
#
# Each server: 3 members on loopback, KEYS keys written once (`keel bench kv --op load`). Then
# 16 clients put for SECONDS seconds twice: alone, and while one reader loops over the heaviest
# reads etcd's API has: HashKV on every member (a scan of all history) and a linearizable range of
# every key with its value. Printed: the puts' rate and latency in each phase, and how many heavy
# reads finished. A server that serves reads on the thread that drives raft shows it in the
# second phase's p99 and max (and, past an election timeout, in leader changes).
#   SERVERS="keel" scripts/bench-heavy-reads.sh            one server only
#   KEEL_BIN=/path/to/keel SERVERS=keel ...                 another keel build, for a before/after
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${1:-200000}
PHASE_SECONDS=${2:-20}
SERVERS=${SERVERS:-"etcd keel"}

source scripts/bench-cluster.sh
bench_setup heavy-reads
SERVER_KEEL=${KEEL_BIN:-$KEEL}
FLAGS=(--quota-backend-bytes $((8 << 30)))

# reader COUNT_FILE: heavy reads in a loop, one line appended to COUNT_FILE per finished read.
reader() {
    while true; do
        ETCDCTL_API=3 etcdctl --endpoints="$ENDPOINTS" --command-timeout=60s endpoint hashkv >/dev/null 2>&1 &&
            echo hashkv >>"$1"
        ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:51379 --command-timeout=60s get "" --from-key -w json \
            >/dev/null 2>&1 && echo range >>"$1"
    done
}

puts() { # puts NAME PHASE
    "$KEEL" bench kv --endpoints "$ENDPOINTS" --op put --clients 16 --conns 16 --seconds "$PHASE_SECONDS" \
        --keys "$KEYS" --value-bytes 256 | sed "s/^/server=$1 phase=$2 /"
}

for server in $SERVERS; do
    case $server in
        keel) start_cluster keel "$SERVER_KEEL" server "${FLAGS[@]}" ;;
        etcd) start_cluster etcd etcd "${FLAGS[@]}" ;;
        *) echo "unknown server $server" >&2; exit 1 ;;
    esac
    "$KEEL" bench kv --endpoints "$ENDPOINTS" --op load --clients 64 --conns 16 --keys "$KEYS" \
        --value-bytes 256 | sed "s/^/server=$server loaded: /"
    puts "$server" alone
    COUNT="$WORK/$server-reads"
    : >"$COUNT"
    reader "$COUNT" &
    READER=$!
    puts "$server" with-heavy-reads
    kill "$READER" 2>/dev/null || true
    wait "$READER" 2>/dev/null || true
    echo "server=$server heavy reads finished: hashkv=$(grep -c hashkv "$COUNT" || true) full_range=$(grep -c range "$COUNT" || true)"
    stop_cluster
done
