# etcd's authentication and role-based access, as etcdctl 3.4 and the JSON gateway use it: users
# and roles, a role with a key-prefix permission, what it allows and denies (a txn with one
# forbidden key denied whole, a watch refused), root-only management, a token from one member
# used on another, a revoked permission denied on every member. Sourced by compat.sh (it uses
# ctl, ctl_at, run, check, check_ok, check_err, txn_in, js, b64, EP, CPORTS, GW); the expected
# answers are etcd 3.4's. Leaves auth off and no users or roles behind, as it found them.

ROOT="--user=root:root-secret"
ALICE="--user=alice:alice-secret"

check_err "auth enable without a root user" "etcdserver: root user does not exist" ctl auth enable
check_ok "auth: user add root" "User root created" ctl user add root --new-user-password=root-secret
check_ok "auth: role add app" "Role app created" ctl role add app
check_ok "auth: role grant-permission on a prefix" "Role app updated" \
    ctl role grant-permission app --prefix=true readwrite auth/app/
check_ok "auth: user add alice" "User alice created" ctl user add alice --new-user-password=alice-secret
check_ok "auth: user grant-role alice app" "Role app is granted to user alice" ctl user grant-role alice app
check_err "auth: user add of an existing user" "etcdserver: user name already exists" \
    ctl user add alice --new-user-password=x
check_err "auth: role add of an existing role" "etcdserver: role name already exists" ctl role add app
check_err "auth: user grant-role of an unknown role" "etcdserver: role name not found" ctl user grant-role alice nothing
check_err "auth: user get of an unknown user" "etcdserver: user name not found" ctl user get nobody
ctl put auth/other outside >/dev/null
# root lacks the root role: the server refuses with "root user does not have root role", on
# which etcdctl adds the role, grants it to root and asks again.
check_ok "auth enable (etcdctl gives root the root role first)" "Authentication Enabled" ctl auth enable
check_ok "auth: root has the root role" "Roles: root" ctl "$ROOT" user get root

check_err "auth: a get without credentials" "etcdserver: user name is empty" ctl get auth/app/x
check_err "auth: a wrong password" "etcdserver: authentication failed, invalid user ID or password" \
    ctl --user=alice:wrong get auth/app/x
check_ok "auth: a put in the role's prefix" "OK" ctl "$ALICE" put auth/app/x 1
check_ok "auth: a get of the role's prefix" "auth/app/x" ctl "$ALICE" get auth/app/ --prefix
check_err "auth: a put outside the prefix" "etcdserver: permission denied" ctl "$ALICE" put auth/other 1
check_err "auth: a get outside the prefix" "etcdserver: permission denied" ctl "$ALICE" get auth/other
check_err "auth: a get of a range reaching past the prefix" "etcdserver: permission denied" \
    ctl "$ALICE" get auth/app/ auth/other
check_err "auth: a txn with a forbidden key in its failure branch is denied whole" "etcdserver: permission denied" \
    ctl "$ALICE" txn < <(txn_in 'value("auth/app/x") = "1"' 'put auth/app/y 2' 'put auth/other 3')
run ctl "$ROOT" get auth/app/y --print-value-only
check "auth: ... and ran none of it" "" "$OUT"
run timeout 5 etcdctl --endpoints="${EP[0]}" "$ALICE" watch auth/other
check "auth: a watch outside the prefix is canceled by the server" "True" \
    "$([[ "$OUT" == *"watch is canceled by the server"* && "$OUT" == *"etcdserver: permission denied"* ]] && echo True)"
check_err "auth: user list by a non-root user" "etcdserver: permission denied" ctl "$ALICE" user list
check_ok "auth: user list by root" $'alice\nroot' ctl "$ROOT" user list
check_ok "auth: a user reads its own user" "Roles: app" ctl "$ALICE" user get alice
check_ok "auth: role list by root" $'app\nroot' ctl "$ROOT" role list
check_err "auth: role list by a non-root user" "etcdserver: permission denied" ctl "$ALICE" role list
check_ok "auth: role get" "[auth/app/, auth/app0) (prefix auth/app/)" ctl "$ROOT" role get app
check_err "auth: member add by a non-root user" "etcdserver: permission denied" \
    ctl "$ALICE" member add nobody --peer-urls=http://127.0.0.1:24390
check_err "auth: root cannot be deleted while auth is on" "etcdserver: invalid auth management" \
    ctl "$ROOT" user delete root
check_err "auth: root keeps its role while auth is on" "etcdserver: invalid auth management" \
    ctl "$ROOT" user revoke-role root root
check_err "auth: revoking a permission the role lacks" "etcdserver: permission is not granted to the role" \
    ctl "$ROOT" role revoke-permission app nothing

# The gateway: a token from member 1's /v3/auth/authenticate, used on members 2 and 3 (simple
# tokens are assigned on every member as the login is applied).
run gw auth/authenticate '{"name": "root", "password": "root-secret"}'
AUTH_TOKEN=$(js 'd["token"]' <<<"$OUT")
for j in 1 2; do
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        run curl -sS -m 20 -X POST "http://127.0.0.1:${CPORTS[$j]}/v3/kv/range" -H "Authorization: $AUTH_TOKEN" \
            -d "{\"key\": \"$(b64 auth/other)\"}"
        [[ "$OUT" == *'"kvs"'* ]] && break
        sleep 0.3
    done
    check "auth: member $((j + 1)) honours member 1's token" "$(b64 outside)" "$(js 'd["kvs"][0]["value"]' <<<"$OUT")"
done
run curl -sS -m 20 -w '\n%{http_code}' -X POST "$GW/v3/kv/range" -H "Authorization: forged.1" \
    -d "{\"key\": \"$(b64 auth/other)\"}"
check "auth: a forged token is HTTP 401, etcd's invalid auth token" "401 etcdserver: invalid auth token" \
    "${OUT##*$'\n'} $(js 'd["error"]' <<<"${OUT%$'\n'*}")"

# Revoked: denied on every member at once.
check_ok "auth: role revoke-permission" "is revoked from role app" \
    ctl "$ROOT" role revoke-permission app --prefix=true auth/app/
for j in 0 1 2; do
    check_err "auth: the revoked permission is denied on member $((j + 1))" "etcdserver: permission denied" \
        ctl_at "${EP[$j]}" "$ALICE" get auth/app/x
done

check_ok "auth disable" "Authentication Disabled" ctl "$ROOT" auth disable
check_ok "auth: with auth off anyone reads again" "outside" ctl get auth/other
for user in alice root; do ctl user delete "$user" >/dev/null; done
for role in app root; do ctl role delete "$role" >/dev/null; done
run ctl user list
check "auth: no users left behind" "" "$OUT"
