# The rest of etcd's JSON gateway, route by route, beyond the KV/lease/watch basics compat.sh
# checks first: compaction, the lease routes' /v3/kv/lease aliases, every Cluster, Lock,
# Election and Maintenance route, many watches and a cancel on one watch stream, the /v3alpha
# prefix, and etcd's error shape. Sourced by compat.sh (it uses gw, run, check, js, b64,
# wait_for, file_has, ctl, EP, CPORTS, GW, WORK); the expected answers are etcd 3.4's.
#
# Not here: the Auth routes (scripts/compat_auth.sh logs in and uses tokens through the gateway),
# and /v3/maintenance/downgrade, which etcd 3.4 does not serve (it came with 3.5). Where etcd 3.4's
# gateway lacks a route keel serves (/v3alpha, /v3/maintenance/hashkv), each server is held to
# its own answer: etcd's 404, keel's result.
IS_ETCD=false
[[ "$(basename "${SERVER[0]}")" == etcd ]] && IS_ETCD=true

# gw_at PORT PATH BODY: POST to one member's gateway; gw_code PATH BODY: "HTTP-STATUS BODY".
gw_at() { curl -sS -m 20 -X POST "http://127.0.0.1:$1/v3/$2" -H 'Content-Type: application/json' -d "$3"; }
gw_code() {
    local out
    out=$(curl -sS -m 20 -w '\n%{http_code}' -X POST "$GW/v3/$1" -H 'Content-Type: application/json' -d "$2")
    echo "${out##*$'\n'} ${out%$'\n'*}"
}

# Errors as etcd's gateway shapes them: {"error", "code", "message"} with the HTTP status of the
# gRPC code (OutOfRange -> 400).
run gw_code kv/range "{\"key\": \"$(b64 gw/t)\", \"revision\": \"100000000\"}"
check "gateway error: a future revision is HTTP 400 with etcd's error body" \
    "400 ['etcdserver: mvcc: required revision is a future revision', 11, 'etcdserver: mvcc: required revision is a future revision']" \
    "${OUT%% *} $(js '[d["error"], d["code"], d["message"]]' <<<"${OUT#* }")"
run gw_code kv/put '{"key": ""}'
check "gateway error: an empty key is HTTP 400, InvalidArgument" "400 ['etcdserver: key is not provided', 3]" \
    "${OUT%% *} $(js '[d["error"], d["code"]]' <<<"${OUT#* }")"

# /v3/kv/compaction: history before the revision is gone, for gateway reads too.
run gw kv/put "{\"key\": \"$(b64 gw/c)\", \"value\": \"$(b64 old)\"}"
GW_OLD_REV=$(js 'd["header"]["revision"]' <<<"$OUT")
run gw kv/put "{\"key\": \"$(b64 gw/c)\", \"value\": \"$(b64 new)\"}"
GW_NEW_REV=$(js 'd["header"]["revision"]' <<<"$OUT")
run gw kv/compaction "{\"revision\": \"$GW_NEW_REV\", \"physical\": true}"
check "gateway /v3/kv/compaction" "True" "$(js '"header" in d' <<<"$OUT")"
run gw_code kv/range "{\"key\": \"$(b64 gw/c)\", \"revision\": \"$GW_OLD_REV\"}"
check "gateway range below the compaction is refused" \
    "400 ['etcdserver: mvcc: required revision has been compacted', 11]" \
    "${OUT%% *} $(js '[d["error"], d["code"]]' <<<"${OUT#* }")"

# /v3/lease/leases and the older /v3/kv/lease/* aliases etcd 3.4's gateway still serves.
run gw lease/grant '{"TTL": "120"}'
GW_LEASE=$(js 'd["ID"]' <<<"$OUT")
run gw lease/leases '{}'
check "gateway /v3/lease/leases lists the lease" "True" "$(js '"'"$GW_LEASE"'" in [l["ID"] for l in d["leases"]]' <<<"$OUT")"
run gw kv/lease/leases '{}'
check "gateway /v3/kv/lease/leases" "True" "$(js '"'"$GW_LEASE"'" in [l["ID"] for l in d["leases"]]' <<<"$OUT")"
run gw kv/put "{\"key\": \"$(b64 gw/leased)\", \"value\": \"$(b64 v)\", \"lease\": \"$GW_LEASE\"}"
run gw kv/lease/timetolive "{\"ID\": \"$GW_LEASE\", \"keys\": true}"
check "gateway /v3/kv/lease/timetolive with keys" "['120', ['$(b64 gw/leased)']]" \
    "$(js '[d["grantedTTL"], d["keys"]]' <<<"$OUT")"
run gw kv/lease/revoke "{\"ID\": \"$GW_LEASE\"}"
run gw kv/range "{\"key\": \"$(b64 gw/leased)\"}"
check "gateway /v3/kv/lease/revoke deletes the lease's key" "False" "$(js '"kvs" in d' <<<"$OUT")"
run gw_code lease/timetolive "{\"ID\": \"$GW_LEASE\"}"
check "gateway timetolive of a revoked lease" "200 -1" "${OUT%% *} $(js 'd["TTL"]' <<<"${OUT#* }")"

# /v3alpha, the prefix etcd 3.3's gateway clients used.
if $IS_ETCD; then
    check "gateway /v3alpha prefix (etcd 3.4: 404)" "404" \
        "$(curl -s -o /dev/null -w '%{http_code}' -m 20 -X POST "$GW/v3alpha/kv/range" -d '{}')"
else
    run curl -sS -m 20 -X POST "$GW/v3alpha/kv/range" -d "{\"key\": \"$(b64 gw/c)\"}"
    check "gateway /v3alpha prefix" "$(b64 new)" "$(js 'd["kvs"][0]["value"]' <<<"$OUT")"
fi

# /v3/watch: two watches and a cancel on one stream (a body of several requests, as etcd's
# gateway reads it); a put reaches only the watch still open.
GW_WATCH=$(mktemp)
curl -sS -N -m 8 -X POST "$GW/v3/watch" -d "{\"create_request\": {\"key\": \"$(b64 gw/wa)\"}}
{\"create_request\": {\"key\": \"$(b64 gw/wb)\"}}
{\"cancel_request\": {\"watch_id\": \"0\"}}" >"$GW_WATCH" 2>/dev/null &
GW_WATCH_PID=$!
wait_for 5 file_has "$GW_WATCH" canceled
run gw kv/put "{\"key\": \"$(b64 gw/wa)\", \"value\": \"$(b64 to-a)\"}"
run gw kv/put "{\"key\": \"$(b64 gw/wb)\", \"value\": \"$(b64 to-b)\"}"
wait_for 5 file_has "$GW_WATCH" "$(b64 to-b)"
kill "$GW_WATCH_PID" 2>/dev/null; wait "$GW_WATCH_PID" 2>/dev/null
GOT=$("$VENV/bin/python" -c '
import json, sys
out = []
for line in open(sys.argv[1]):
    r = json.loads(line)["result"]
    wid = r.get("watch_id", "0")
    if r.get("created"): out.append("created " + wid)
    if r.get("canceled"): out.append("canceled " + wid)
    for e in r.get("events", []): out.append("event " + wid + " " + e["kv"]["key"])
print(", ".join(out))' "$GW_WATCH" 2>&1)
check "gateway /v3/watch: two watches, one canceled, the other sees its put" \
    "created 0, created 1, canceled 0, event 1 $(b64 gw/wb)" "$GOT"
rm -f "$GW_WATCH"

# /v3/lock/lock and /v3/lock/unlock: the lock key is the name's prefix plus the lease.
run gw lease/grant '{"TTL": "60"}'
GW_LOCK_LEASE=$(js 'd["ID"]' <<<"$OUT")
run gw lock/lock "{\"name\": \"$(b64 gw-lock)\", \"lease\": \"$GW_LOCK_LEASE\"}"
GW_LOCK_KEY=$(js 'd["key"]' <<<"$OUT")
check "gateway /v3/lock/lock returns a key under the name" "True" \
    "$(js '__import__("base64").b64decode(d["key"]).decode().startswith("gw-lock/")' <<<"$OUT")"
run gw lock/unlock "{\"key\": \"$GW_LOCK_KEY\"}"
run gw kv/range "{\"key\": \"$GW_LOCK_KEY\"}"
check "gateway /v3/lock/unlock deletes the lock key" "False" "$(js '"kvs" in d' <<<"$OUT")"

# /v3/election/*: campaign, leader, proclaim, observe (a stream), resign.
run gw election/campaign "{\"name\": \"$(b64 gw-elect)\", \"lease\": \"$GW_LOCK_LEASE\", \"value\": \"$(b64 first)\"}"
check "gateway /v3/election/campaign wins an empty election" "['$(b64 gw-elect)', '$GW_LOCK_LEASE']" \
    "$(js '[d["leader"]["name"], d["leader"]["lease"]]' <<<"$OUT")"
GW_LEADER_JSON=$(js 'json.dumps(d["leader"])' <<<"$OUT")
run gw election/leader "{\"name\": \"$(b64 gw-elect)\"}"
check "gateway /v3/election/leader" "$(b64 first)" "$(js 'd["kv"]["value"]' <<<"$OUT")"
run gw election/proclaim "{\"leader\": $GW_LEADER_JSON, \"value\": \"$(b64 second)\"}"
check "gateway /v3/election/proclaim" "True" "$(js '"header" in d' <<<"$OUT")"
run curl -sS -N -m 3 -X POST "$GW/v3/election/observe" -d "{\"name\": \"$(b64 gw-elect)\"}"
check "gateway /v3/election/observe streams the current leader" "$(b64 second)" \
    "$(js 'd["result"]["kv"]["value"]' <<<"$(head -n 1 <<<"$OUT")")"
run gw election/resign "{\"leader\": $GW_LEADER_JSON}"
check "gateway /v3/election/resign" "True" "$(js '"header" in d' <<<"$OUT")"
run gw_code election/leader "{\"name\": \"$(b64 gw-elect)\"}"
check "gateway /v3/election/leader after resign: no leader" "election: no leader" \
    "$(js 'd["error"]' <<<"${OUT#* }")"
gw lease/revoke "{\"ID\": \"$GW_LOCK_LEASE\"}" >/dev/null 2>&1

# /v3/cluster/member/*: a learner added (never started), updated, removed; promoting it is
# refused because it holds none of the leader's log, and promoting a voter is refused.
run gw cluster/member/add '{"peerURLs": ["http://127.0.0.1:24380"], "isLearner": true}'
GW_MEMBER=$(js 'd["member"]["ID"]' <<<"$OUT")
check "gateway /v3/cluster/member/add a learner" "[True, 4]" "$(js '[d["member"]["isLearner"], len(d["members"])]' <<<"$OUT")"
run gw cluster/member/update "{\"ID\": \"$GW_MEMBER\", \"peerURLs\": [\"http://127.0.0.1:24381\"]}"
check "gateway /v3/cluster/member/update" "True" \
    "$(js '[m["peerURLs"] for m in d["members"] if m["ID"] == "'"$GW_MEMBER"'"] == [["http://127.0.0.1:24381"]]' <<<"$OUT")"
run gw_code cluster/member/promote "{\"ID\": \"$GW_MEMBER\"}"
check "gateway /v3/cluster/member/promote of a learner not in sync is refused" \
    "412 ['etcdserver: can only promote a learner member which is in sync with leader', 9]" \
    "${OUT%% *} $(js '[d["error"], d["code"]]' <<<"${OUT#* }")"
GW_VOTER=$(gw maintenance/status '{}' | js 'd["header"]["member_id"]')
run gw_code cluster/member/promote "{\"ID\": \"$GW_VOTER\"}"
check "gateway /v3/cluster/member/promote of a voter is refused" \
    "412 ['etcdserver: can only promote a learner member', 9]" \
    "${OUT%% *} $(js '[d["error"], d["code"]]' <<<"${OUT#* }")"
run gw cluster/member/remove "{\"ID\": \"$GW_MEMBER\"}"
check "gateway /v3/cluster/member/remove" "3" "$(js 'len(d["members"])' <<<"$OUT")"

# /v3/maintenance/*: alarm list, defragment, hash, hashkv, snapshot (a stream), and
# transfer-leadership (sent to the leader, naming a follower).
# (etcd 3.4 answers alarm, defragment and transfer-leadership with `{}`, no header.)
run gw_code maintenance/alarm '{"action": "GET"}'
check "gateway /v3/maintenance/alarm GET: none raised" "200 False" "${OUT%% *} $(js '"alarms" in d' <<<"${OUT#* }")"
run gw_code maintenance/defragment '{}'
check "gateway /v3/maintenance/defragment" "200 True" "${OUT%% *} $(js 'isinstance(d, dict) and "error" not in d' <<<"${OUT#* }")"
run gw maintenance/hash '{}'
check "gateway /v3/maintenance/hash" "True" "$(js 'int(d["hash"]) > 0' <<<"$OUT")"
if $IS_ETCD; then
    check "gateway /v3/maintenance/hashkv (etcd 3.4: 404)" "404" \
        "$(curl -s -o /dev/null -w '%{http_code}' -m 20 -X POST "$GW/v3/maintenance/hashkv" -d '{}')"
else
    run gw maintenance/hashkv '{"revision": "0"}'
    check "gateway /v3/maintenance/hashkv" "[True, True]" \
        "$(js '[int(d["hash"]) > 0, int(d["compact_revision"]) >= '"$GW_NEW_REV"']' <<<"$OUT")"
fi
run curl -sS -N -m 20 -X POST "$GW/v3/maintenance/snapshot" -d '{}'
check "gateway /v3/maintenance/snapshot streams blobs to the last" "[True, True]" "$(
    "$VENV/bin/python" -c '
import base64, json, sys
chunks = [json.loads(l)["result"] for l in sys.stdin if l.strip()]
size = sum(len(base64.b64decode(c.get("blob", ""))) for c in chunks)
print([size > 0, chunks[-1].get("remaining_bytes", "0") == "0"])' <<<"$OUT" 2>&1)"
GW_LEADER_PORT="" GW_TARGET=""
for p in "${CPORTS[@]}"; do
    st=$(gw_at "$p" maintenance/status '{}')
    if [[ $(js 'd["leader"] == d["header"]["member_id"]' <<<"$st") == True ]]; then GW_LEADER_PORT=$p
    else GW_TARGET=$(js 'd["header"]["member_id"]' <<<"$st"); fi
done
run curl -sS -m 20 -w '\n%{http_code}' -X POST "http://127.0.0.1:$GW_LEADER_PORT/v3/maintenance/transfer-leadership" \
    -d "{\"targetID\": \"$GW_TARGET\"}"
check "gateway /v3/maintenance/transfer-leadership" "200" "${OUT##*$'\n'}"
gw_leader_is() { [[ $(gw maintenance/status '{}' | js 'd["leader"]') == "$1" ]]; }
wait_for 5 gw_leader_is "$GW_TARGET"
run gw maintenance/status '{}'
check "gateway: the leader is the member it was moved to" "$GW_TARGET" "$(js 'd["leader"]' <<<"$OUT")"
