# Patroni (PostgreSQL high availability, Debian's 3.0 package, its `etcd3:` DCS, which speaks
# etcd's JSON gateway) on the cluster under test: three Patroni + PostgreSQL 15 nodes on
# loopback, run as the unprivileged `postgres` user.
#
# Sourced by compat.sh (it uses check/pass/fail, start_member, wait_healthy, MEMBER_PID, CPORTS,
# WORK). Checks: a primary and two streaming replicas bootstrap; after kill -9 of the primary
# (Patroni and PostgreSQL) a replica is promoted, the other follows it, and data written before
# is readable; after kill -9 of the cluster member the primary's Patroni talks to, the primary
# keeps its role. Prints the failover time.

PG_BIN=/usr/lib/postgresql/15/bin
PAT=$WORK/patroni/1 # one directory (and DCS scope) per trial
declare -a PAT_PID=()

# pat_json I PATH: GET from node I's Patroni REST API.
pat_json() { curl -sS -m 5 "http://127.0.0.1:$((8008 + $1))$2" 2>/dev/null; }

# The cluster as node I's Patroni sees it: "name:role:state" per member, sorted.
pat_members() {
    pat_json "$1" /cluster | js '" ".join(sorted(m["name"] + ":" + m["role"] + ":" + m.get("state", "") for m in d["members"]))'
}

# The index of the node whose Patroni leads (empty if none), asked of node I.
pat_leader() {
    local name
    name=$(pat_json "$1" /cluster | js '[m["name"] for m in d["members"] if m["role"] == "leader"][0]' 2>/dev/null)
    [[ "$name" == pg[0-2] ]] && echo "${name#pg}"
}

pat_psql() { # pat_psql I SQL
    runuser -u postgres -- "$PG_BIN/psql" -h 127.0.0.1 -p $((5433 + $1)) -U postgres -d postgres -tAq -c "$2" 2>&1
}

pat_start() {
    local i=$1
    # setsid outside: runuser, Patroni and what it starts share one process group to kill.
    setsid runuser -u postgres -- patroni "$PAT/pg$i.yml" >>"$PAT/pg$i.log" 2>&1 &
    PAT_PID[$i]=$!
    disown # no "Killed" notices from bash when the checks kill it
}

pat_kill9() { # Patroni and its PostgreSQL, as a machine that dies would lose both.
    local i=$1 postmaster
    postmaster=$(head -n 1 "$PAT/pg$i/postmaster.pid" 2>/dev/null)
    kill -KILL -- "-${PAT_PID[$i]}" 2>/dev/null
    [[ -n "$postmaster" ]] && kill -KILL "$postmaster" 2>/dev/null
    pkill -KILL -u postgres -f -- "-D $PAT/pg$i( |$)" 2>/dev/null
    while kill -0 "${PAT_PID[$i]}" 2>/dev/null; do sleep 0.1; done
}

pat_stop_all() {
    for i in 0 1 2; do [[ -n "${PAT_PID[$i]:-}" ]] && pat_kill9 "$i"; done
    pkill -KILL -u postgres -f -- "$WORK/patroni/" 2>/dev/null
}

# All the checks once, then (PATRONI_TRIALS=N) N-1 more bootstraps and failovers for figures.
patroni_checks() {
    patroni_trial 1 member-loss
    local t
    for ((t = 2; t <= ${PATRONI_TRIALS:-1}; t++)); do patroni_trial "$t"; done
}

# patroni_trial T [member-loss]: a fresh Patroni cluster (scope keel-compat-T) through
# bootstrap and failover, then, if asked, the loss of the primary's cluster member.
patroni_trial() {
    PAT=$WORK/patroni/$1
    mkdir -p "$PAT"
    chmod o+x "$WORK" "$WORK/patroni"
    local hosts i
    hosts=$(printf '127.0.0.1:%s,' "${CPORTS[@]}")
    for i in 0 1 2; do
        cat >"$PAT/pg$i.yml" <<EOF
scope: keel-compat-$1
name: pg$i
restapi:
  listen: 127.0.0.1:$((8008 + i))
  connect_address: 127.0.0.1:$((8008 + i))
etcd3:
  hosts: ${hosts%,}
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 4
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: false
  initdb:
  - encoding: UTF8
  pg_hba:
  - host replication replicator 127.0.0.1/32 trust
  - host all all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:$((5433 + i))
  connect_address: 127.0.0.1:$((5433 + i))
  data_dir: $PAT/pg$i
  bin_dir: $PG_BIN
  authentication:
    replication: {username: replicator, password: rep}
    superuser: {username: postgres, password: pg}
  parameters:
    unix_socket_directories: $PAT
EOF
    done
    chown -R postgres: "$PAT"
    for i in 0 1 2; do pat_start "$i"; done

    # Bootstrap: one primary, two replicas streaming from it (Patroni 3.0 says "running" for
    # both; the primary's pg_stat_replication says whether they stream).
    local want_roles="leader:running replica:running replica:running" got="" deadline=$((SECONDS + 90))
    local leader=""
    while ((SECONDS < deadline)); do
        got=$(pat_members 0 | sed 's/pg[0-9]://g' | tr ' ' '\n' | sort | tr '\n' ' ' | sed 's/ $//')
        leader=$(pat_leader 0)
        [[ "$got" == "$want_roles" && -n "$leader" &&
            "$(pat_psql "$leader" "select count(*) from pg_stat_replication where state = 'streaming'")" == 2 ]] && break
        sleep 1
    done
    check "patroni bootstraps a primary and two replicas" "$want_roles" "$got"
    check "patroni's replicas stream from the primary" "2" \
        "$(pat_psql "$leader" "select count(*) from pg_stat_replication where state = 'streaming'")"
    [[ "$got" == "$want_roles" ]] || { tail -n 20 "$PAT"/pg*.log; pat_stop_all; return; }

    check "patroni primary takes a write" "" "$(pat_psql "$leader" 'create table t (x int); insert into t values (42)')"

    # kill -9 of the primary: a replica takes over, the other follows it.
    local others=() started new=""
    for i in 0 1 2; do [[ $i != "$leader" ]] && others+=("$i"); done
    started=$(date +%s.%N)
    pat_kill9 "$leader"
    deadline=$((SECONDS + 90))
    while ((SECONDS < deadline)); do
        new=$(pat_leader "${others[0]}")
        [[ -n "$new" && "$new" != "$leader" ]] && break
        new=""
        sleep 0.2
    done
    local took
    took=$(echo "$(date +%s.%N) - $started" | bc)
    check "patroni promotes a replica after kill -9 of the primary" "True" \
        "$([[ -n "$new" ]] && echo True || echo False)"
    echo "patroni failover after kill -9 of the primary: ${took} s"
    [[ -n "$new" ]] || { pat_stop_all; return; }
    local follower
    for i in "${others[@]}"; do [[ $i != "$new" ]] && follower=$i; done
    deadline=$((SECONDS + 60))
    while ((SECONDS < deadline)); do
        got=$(pat_psql "$new" "select application_name from pg_stat_replication where state = 'streaming'")
        [[ "$got" == "pg$follower" ]] && break
        sleep 1
    done
    check "patroni's other replica streams from the new primary" "pg$follower" "$got"
    check "patroni data written before the failover is on the new primary" "42" "$(pat_psql "$new" 'select x from t')"

    if [[ ${2:-} != member-loss ]]; then
        pat_stop_all
        return
    fi
    # kill -9 of the cluster member the primary's Patroni talks to: it moves to another member
    # and keeps its role (its leader key is renewed through the others).
    local port member=""
    port=$(ss -tnpH state established 2>/dev/null |
        grep -F "pid=$(pgrep -u postgres -f "patroni $PAT/pg$new.yml" | head -n 1)," |
        awk '{print $4}' | grep -oE ":(${CPORTS[0]}|${CPORTS[1]}|${CPORTS[2]})$" | tr -d ':' | head -n 1)
    for i in 0 1 2; do [[ "${CPORTS[$i]}" == "$port" ]] && member=$i; done
    if [[ -z "$member" ]]; then
        fail "patroni primary keeps its role when its cluster member dies" "no connection from its Patroni to a member"
    else
        kill -KILL -- "-${MEMBER_PID[$member]}" 2>/dev/null
        wait "${MEMBER_PID[$member]}" 2>/dev/null
        sleep 25 # more than twice the leader key's TTL
        check "patroni primary keeps its role when its cluster member dies" "$new" "$(pat_leader "$new")"
        check "patroni primary still takes writes" "" "$(pat_psql "$new" 'insert into t values (43)')"
        start_member "$member"
        wait_healthy 60 "cluster heals after the patroni checks" || true
    fi
    pat_stop_all
}
