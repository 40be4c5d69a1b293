# Sourced by the benchmark scripts: a 3-member loopback cluster of keel or etcd, started from
# etcd's own flags, so both servers are measured the same way.
PIDS=()

# bench_setup NAME: etcd installed, keel built for release ($KEEL), a scratch dir ($WORK), and
# at exit every member killed and the scratch dir removed (kept with KEEP_WORK=1).
bench_setup() {
    scripts/install-deps.sh etcd
    cargo build --release -p keel >/dev/null 2>&1
    KEEL="${CARGO_TARGET_DIR:-$PWD/target}/release/keel"
    WORK=$(mktemp -d "/tmp/keel-$1.XXXXXX")
    trap bench_cleanup EXIT
}

bench_cleanup() {
    for pid in "${PIDS[@]}"; do [ "$pid" != 0 ] && kill -9 "$pid" 2>/dev/null || true; done
    [ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"
}
CLUSTER="m1=http://127.0.0.1:51380,m2=http://127.0.0.1:52380,m3=http://127.0.0.1:53380"
ENDPOINTS="127.0.0.1:51379,127.0.0.1:52379,127.0.0.1:53379"
# BENCH_SCHEME=https serves both ports with TLS (the command's flags then name the certificates);
# CTL_FLAGS are etcdctl's for it (--cacert, --cert, --key).
BENCH_SCHEME=${BENCH_SCHEME:-http}
CTL_FLAGS=()

start_cluster() { # start_cluster NAME COMMAND [FLAGS...]   (the member flags are added)
    local name=$1 s=$BENCH_SCHEME; shift
    local CLUSTER="m1=$s://127.0.0.1:51380,m2=$s://127.0.0.1:52380,m3=$s://127.0.0.1:53380"
    PIDS=()
    for i in 1 2 3; do
        "$@" --name "m$i" --data-dir "$WORK/$name/m$i" \
            --listen-client-urls "$s://127.0.0.1:5${i}379" --advertise-client-urls "$s://127.0.0.1:5${i}379" \
            --listen-peer-urls "$s://127.0.0.1:5${i}380" --initial-advertise-peer-urls "$s://127.0.0.1:5${i}380" \
            --initial-cluster "$CLUSTER" --initial-cluster-state new --initial-cluster-token "bench-$name" \
            >"$WORK/$name-m$i.log" 2>&1 &
        PIDS+=($!)
    done
    for _ in $(seq 150); do
        if ETCDCTL_API=3 etcdctl --endpoints="$ENDPOINTS" "${CTL_FLAGS[@]}" endpoint health >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    echo "$name did not become healthy" >&2; tail -20 "$WORK/$name-m1.log" >&2; exit 1
}

stop_cluster() { for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done; PIDS=(); }

compact() { # compact [ETCDCTL FLAGS...]: history compacted at the cluster's current revision
    local rev
    rev=$(ETCDCTL_API=3 etcdctl --endpoints="$ENDPOINTS" "${CTL_FLAGS[@]}" "$@" endpoint status -w json | python3 -c 'import json,sys; print(max(e["Status"]["header"]["revision"] for e in json.load(sys.stdin)))')
    ETCDCTL_API=3 etcdctl --endpoints="$ENDPOINTS" "${CTL_FLAGS[@]}" "$@" compaction "$rev" >/dev/null 2>&1 || true
}
