#!/usr/bin/env bash
# A member that was down while gigabytes went by comes back and catches up over a streamed
# snapshot while writes continue. Prints the transfer time, the peak memory of the leader and
# of the returning member, and the foreground write latency during the catch-up.
#
#   scripts/bench-catch-up.sh [GIB]          default 2 GiB written while the member is down
set -euo pipefail
cd "$(dirname "$0")/.."
GIB=${1:-2}

source scripts/bench-cluster.sh
bench_setup catchup
PIDS=(0 0 0)

CLUSTER="m1=http://127.0.0.1:51380,m2=http://127.0.0.1:52380,m3=http://127.0.0.1:53380"
ENDPOINTS="127.0.0.1:51379,127.0.0.1:52379,127.0.0.1:53379"
start() { # start I STATE
    local i=$1
    "$KEEL" server --name "m$i" --data-dir "$WORK/m$i" \
        --listen-client-urls "http://127.0.0.1:5${i}379" --advertise-client-urls "http://127.0.0.1:5${i}379" \
        --listen-peer-urls "http://127.0.0.1:5${i}380" --initial-advertise-peer-urls "http://127.0.0.1:5${i}380" \
        --initial-cluster "$CLUSTER" --initial-cluster-state new --initial-cluster-token catch-up \
        --snapshot-count 2000 --quota-backend-bytes $((16 << 30)) >>"$WORK/m$i.log" 2>&1 &
    PIDS[$((i - 1))]=$!
}
peak_mb() { awk '/VmHWM/ {print int($2/1024)}' "/proc/$1/status" 2>/dev/null || echo "?"; }
leader() { # the member number that leads
    ETCDCTL_API=3 etcdctl --endpoints="$ENDPOINTS" endpoint status -w json | python3 -c '
import json,sys
for e in json.load(sys.stdin):
    if e["Status"]["leader"] == e["Status"]["header"]["member_id"]:
        print(e["Endpoint"].split(":")[1][1]); break'
}

for i in 1 2 3; do start "$i"; done
for _ in $(seq 100); do ETCDCTL_API=3 etcdctl --endpoints="$ENDPOINTS" endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
L=$(leader); B=$(( L % 3 + 1 ))
echo "leader m$L; stopping m$B"
kill -9 "${PIDS[$((B - 1))]}"; PIDS[$((B - 1))]=0

# 32 KiB values over enough keys that the store keeps growing (history is not compacted),
# until the leader's store holds GIB of values.
UP="127.0.0.1:5${L}379"
revision() { curl -s "http://$UP/metrics" | awk '/^etcd_debugging_mvcc_current_revision/ {print $2}'; }
echo "writing until the store holds ${GIB} GiB of values, with m$B down"
"$KEEL" bench kv --endpoints "$UP" --op put --clients 32 --conns 8 --keys 1000000 --value-bytes 32768 \
    --seconds 3600 >"$WORK/load" &
LOAD=$!
while [ "$(( $(revision) * 32768 ))" -lt $(( GIB << 30 )) ]; do sleep 1; done
kill -INT "$LOAD" 2>/dev/null || true; kill "$LOAD" 2>/dev/null || true; wait "$LOAD" 2>/dev/null || true
du -sh "$WORK"/m*/member/db.redb | sed 's/^/  /'

echo "  leader m$L resident before the catch-up: $(awk '/VmRSS/ {print int($2/1024)}' "/proc/${PIDS[$((L - 1))]}/status") MB (peak so far $(peak_mb "${PIDS[$((L - 1))]}") MB)"
echo "restarting m$B with writes going on"
start "$B"
T0=$(date +%s.%N)
"$KEEL" bench kv --endpoints "$UP" --op put --clients 16 --conns 4 --keys 10000 --value-bytes 1024 --seconds 60 \
    >"$WORK/foreground" &
FG=$!
for _ in $(seq 600); do
    grep -q "installed a snapshot from the leader" "$WORK/m$B.log" && break
    sleep 0.5
done
T1=$(date +%s.%N)
wait "$FG"
echo "  foreground during catch-up: $(cat "$WORK/foreground")"
echo "  m$B installed the snapshot $(python3 -c "print(round($T1-$T0,1))") s after it restarted"
grep -h "streamed the store" "$WORK/m$L.log" | sed 's/^/  leader: /'
grep -h "installed a snapshot" "$WORK/m$B.log" | sed 's/^/  follower: /'
echo "  peak RSS: leader m$L $(peak_mb "${PIDS[$((L - 1))]}") MB, returning m$B $(peak_mb "${PIDS[$((B - 1))]}") MB"
du -sh "$WORK"/m*/member/db.redb | sed 's/^/  /'
