#!/usr/bin/env bash
# How long a member holding many keys takes to come back after kill -9: keel against etcd 3.4
# (Debian's etcd-server), one after the other on this box, same flags, same data.
#
#   scripts/bench-restart.sh [KEYS]          default 1,000,000 keys of 256 B
#
# Each server: 3 members on loopback with `--snapshot-count 10000`, every key written once
# (`keel bench kv --op load`, 64 clients). Then, three times each:
#   follower  kill -9 one follower, start it again: time until it answers a linearizable get
#   stopped   the same after SIGTERM (a clean stop; the time starts once it has exited)
#   cluster   kill -9 every member, start them all: time until member 1 answers one
# The times run from the start command to the first successful answer (polled every 20 ms), so
# they include reopening the store, rebuilding its index, replaying the WAL and electing.
#   SERVERS="keel" scripts/bench-restart.sh 1000000     one server only
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${1:-1000000}
SERVERS=${SERVERS:-"etcd keel"}

source scripts/bench-cluster.sh
bench_setup restart
FLAGS=(--snapshot-count 10000 --quota-backend-bytes $((8 << 30)))
LAST_KEY=$(printf "bench/%08d" $((KEYS - 1)))

# start_member NAME I COMMAND...: member I again, with the flags start_cluster gave it.
start_member() {
    local name=$1 i=$2; shift 2
    "$@" --name "m$i" --data-dir "$WORK/$name/m$i" \
        --listen-client-urls "http://127.0.0.1:5${i}379" --advertise-client-urls "http://127.0.0.1:5${i}379" \
        --listen-peer-urls "http://127.0.0.1:5${i}380" --initial-advertise-peer-urls "http://127.0.0.1:5${i}380" \
        --initial-cluster "$CLUSTER" --initial-cluster-state new --initial-cluster-token "bench-$name" \
        >>"$WORK/$name-m$i.log" 2>&1 &
    PIDS[$((i - 1))]=$!
}
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
# ms until a linearizable get of the last key through ENDPOINT (host:port) returns it. Through
# the JSON gateway with curl: a refused connection fails at once, where a gRPC client would
# back off for a second before trying again.
until_serving() {
    local endpoint=$1 started=$2 body
    body="{\"key\":\"$(printf %s "$LAST_KEY" | base64)\"}"
    for _ in $(seq 3000); do
        if curl -s -m 1 -X POST "http://$endpoint/v3/kv/range" -d "$body" 2>/dev/null | grep -q '"kvs"'; then
            echo $(( $(now_ms) - started )); return 0
        fi
        sleep 0.02
    done
    echo "never"
}
follower() { # a member number that does not lead
    ETCDCTL_API=3 etcdctl --endpoints="$ENDPOINTS" endpoint status -w json | python3 -c '
import json,sys
for e in json.load(sys.stdin):
    if e["Status"]["leader"] != e["Status"]["header"]["member_id"]:
        print(e["Endpoint"].split(":")[1][1]); break'
}

for server in $SERVERS; do
    case $server in
        etcd) command=(etcd "${FLAGS[@]}") ;;
        keel) command=("$KEEL" server "${FLAGS[@]}") ;;
        *) echo "unknown server $server" >&2; exit 2 ;;
    esac
    start_cluster "$server" "${command[@]}"
    started=$(now_ms)
    load=$("$KEEL" bench kv --endpoints "$ENDPOINTS" --op load --clients 64 --conns 16 --keys "$KEYS" --value-bytes 256)
    echo "server=$server loaded keys=$KEYS in $(( ($(now_ms) - started) / 1000 )) s: $load"
    echo "server=$server data_dir_mb=$(du -sm "$WORK/$server/m1" | cut -f1)"
    for trial in 1 2 3; do
        i=$(follower)
        kill -9 "${PIDS[$((i - 1))]}"; wait "${PIDS[$((i - 1))]}" 2>/dev/null || true
        started=$(now_ms)
        start_member "$server" "$i" "${command[@]}"
        echo "server=$server trial=$trial follower_restart_ms=$(until_serving "127.0.0.1:5${i}379" "$started")"
    done
    for trial in 1 2 3; do
        i=$(follower)
        kill -TERM "${PIDS[$((i - 1))]}"; wait "${PIDS[$((i - 1))]}" 2>/dev/null || true
        started=$(now_ms)
        start_member "$server" "$i" "${command[@]}"
        echo "server=$server trial=$trial follower_stop_start_ms=$(until_serving "127.0.0.1:5${i}379" "$started")"
    done
    for trial in 1 2 3; do
        for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
        started=$(now_ms)
        for i in 1 2 3; do start_member "$server" "$i" "${command[@]}"; done
        echo "server=$server trial=$trial cluster_restart_ms=$(until_serving "127.0.0.1:51379" "$started")"
    done
    stop_cluster
    [ -n "${KEEP_WORK:-}" ] || rm -rf "${WORK:?}/$server"
done
