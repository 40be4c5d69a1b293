# TLS and mutual TLS, as etcd's flags set them up: a second 3-member cluster (clients
# 24379/25379/26379, peers 24380/25380/26380) with https:// URLs, --client-cert-auth and
# --peer-client-cert-auth, certificates made here with openssl (not by keel: the server must
# take what an operator's PKI hands it), driven by etcdctl with --cacert/--cert/--key and curl.
# The common name of a client certificate is the user when auth is on; logins get JWT tokens
# (--auth-token jwt with an ES256 key pair, also made with openssl). Sourced by compat.sh (it
# uses run, check, check_ok, check_err, check_true, alive, stop_pid, SERVER, WORK); the expected
# answers are etcd 3.4's. Stops its cluster when done.

TLS_DIR="$WORK/tls"
TLS_CPORTS=(24379 25379 26379)
TLS_PPORTS=(24380 25380 26380)
TLS_EP=(https://127.0.0.1:24379 https://127.0.0.1:25379 https://127.0.0.1:26379)
TLS_CLUSTER="t1=https://127.0.0.1:24380,t2=https://127.0.0.1:25380,t3=https://127.0.0.1:26380"
declare -a TLS_PID=()

# tls_cert NAME SUBJECT-CN EXTENSIONS: NAME.pem and NAME-key.pem signed by the CA in $TLS_DIR.
tls_cert() {
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$2" \
        -keyout "$TLS_DIR/$1-key.pem" -out "$TLS_DIR/$1.csr" 2>/dev/null &&
        openssl x509 -req -in "$TLS_DIR/$1.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca-key.pem" \
            -CAcreateserial -days 2 -out "$TLS_DIR/$1.pem" -extfile <(printf '%s\n' "$3") 2>/dev/null
}
# tls_cert_without_cn NAME EXTENSIONS: a client certificate naming no user (for the gateway,
# which refuses certificates that do while auth is on).
tls_cert_without_cn() {
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/O=compat" \
        -keyout "$TLS_DIR/$1-key.pem" -out "$TLS_DIR/$1.csr" 2>/dev/null &&
        openssl x509 -req -in "$TLS_DIR/$1.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca-key.pem" \
            -CAcreateserial -days 2 -out "$TLS_DIR/$1.pem" -extfile <(printf '%s\n' "$2") 2>/dev/null
}
tls_make_certs() {
    mkdir -p "$TLS_DIR"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=compat CA" -days 2 \
        -keyout "$TLS_DIR/ca-key.pem" -out "$TLS_DIR/ca.pem" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null &&
        tls_cert member member $'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth' &&
        tls_cert root root 'extendedKeyUsage=clientAuth' &&
        tls_cert alice alice 'extendedKeyUsage=clientAuth' &&
        tls_cert_without_cn anon 'extendedKeyUsage=clientAuth' &&
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$TLS_DIR/jwt.key" 2>/dev/null &&
        openssl pkey -in "$TLS_DIR/jwt.key" -pubout -out "$TLS_DIR/jwt.pub" 2>/dev/null
}

tls_start_member() {
    local i=$1 n="t$(($1 + 1))"
    setsid "${SERVER[@]}" \
        --name "$n" --data-dir "$WORK/$n" \
        --listen-client-urls "${TLS_EP[$i]}" --advertise-client-urls "${TLS_EP[$i]}" \
        --listen-peer-urls "https://127.0.0.1:${TLS_PPORTS[$i]}" \
        --initial-advertise-peer-urls "https://127.0.0.1:${TLS_PPORTS[$i]}" \
        --initial-cluster "$TLS_CLUSTER" --initial-cluster-state new --initial-cluster-token keel-compat-tls \
        --cert-file "$TLS_DIR/member.pem" --key-file "$TLS_DIR/member-key.pem" \
        --trusted-ca-file "$TLS_DIR/ca.pem" --client-cert-auth \
        --peer-cert-file "$TLS_DIR/member.pem" --peer-key-file "$TLS_DIR/member-key.pem" \
        --peer-trusted-ca-file "$TLS_DIR/ca.pem" --peer-client-cert-auth \
        --auth-token "jwt,pub-key=$TLS_DIR/jwt.pub,priv-key=$TLS_DIR/jwt.key,sign-method=ES256" \
        >>"$WORK/$n.log" 2>&1 &
    TLS_PID[$i]=$!
}

# tctl USER [etcdctl args]: etcdctl against t1 with USER's client certificate ("-" for none).
tctl_at() {
    local ep=$1 user=$2; shift 2
    local cert=()
    [[ $user != - ]] && cert=(--cert="$TLS_DIR/$user.pem" --key="$TLS_DIR/$user-key.pem")
    etcdctl --endpoints="$ep" --cacert="$TLS_DIR/ca.pem" "${cert[@]}" --dial-timeout=3s --command-timeout=10s "$@"
}
tctl() { tctl_at "${TLS_EP[0]}" "$@"; }
# tcurl USER PATH [BODY]: the gateway of t1 over TLS with USER's certificate ("-" for none).
tcurl() { tcurl_at "${TLS_EP[0]}" "$@"; }
tcurl_at() {
    local ep=$1 user=$2 path=$3; shift 3
    local cert=()
    [[ $user != - ]] && cert=(--cert "$TLS_DIR/$user.pem" --key "$TLS_DIR/$user-key.pem")
    curl -sS -m 10 --cacert "$TLS_DIR/ca.pem" "${cert[@]}" "$ep$path" "$@"
}
tls_healthy() { tctl_at "${TLS_EP[0]},${TLS_EP[1]},${TLS_EP[2]}" root endpoint health >/dev/null 2>&1; }

tls_checks() {
    if ! tls_make_certs; then
        fail "tls: certificates made with openssl" "openssl failed"
        return
    fi
    for i in 0 1 2; do tls_start_member "$i"; done
    if ! wait_for 60 tls_healthy; then
        fail "tls: a cluster with client and peer mutual TLS starts" \
            "not healthy: $(tctl_at "${TLS_EP[0]},${TLS_EP[1]},${TLS_EP[2]}" root endpoint health 2>&1 | grep -v '^{"level":' | tr '\n' ' ')"
        tls_stop
        return
    fi
    pass "tls: a cluster with client and peer mutual TLS starts"

    check_ok "tls: put with a client certificate" "OK" tctl root put tls/k v1
    run tctl_at "${TLS_EP[2]}" root get tls/k --print-value-only
    check "tls: the put replicated over peer TLS is read on t3" "v1" "$OUT"
    run tctl_at "https://localhost:${TLS_CPORTS[1]}" root get tls/k --print-value-only
    check "tls: the certificate's DNS name localhost is accepted" "v1" "$OUT"
    check_err "tls: a client without a certificate is refused" "context deadline exceeded" tctl - get tls/k
    check_err "tls: a client without TLS is refused" "context deadline exceeded" \
        etcdctl --endpoints="127.0.0.1:${TLS_CPORTS[0]}" --dial-timeout=3s --command-timeout=10s get tls/k
    run tcurl root /v3/kv/range -X POST -d "{\"key\":\"$(b64 tls/k)\"}"
    check "tls: the gateway over TLS with a client certificate" "v1" \
        "$(js '__import__("base64").b64decode(d["kvs"][0]["value"]).decode()' <<<"$OUT" 2>/dev/null || echo "$OUT")"
    run tcurl - /v3/kv/range -X POST -d "{\"key\":\"$(b64 tls/k)\"}"
    check_true "tls: the gateway refuses a client without a certificate" "curl fails" test "$RC" -ne 0

    # With auth on, a certificate's common name is the user (no password needed).
    check_ok "tls: user add root" "User root created" tctl root user add root --new-user-password=root-secret
    check_ok "tls: role add app" "Role app created" tctl root role add app
    check_ok "tls: role grant-permission" "Role app updated" \
        tctl root role grant-permission app --prefix=true readwrite tls/app/
    check_ok "tls: user add alice" "User alice created" tctl root user add alice --new-user-password=alice-secret
    check_ok "tls: user grant-role" "Role app is granted to user alice" tctl root user grant-role alice app
    check_ok "tls: auth enable" "Authentication Enabled" tctl root auth enable
    check_ok "tls: alice's certificate puts in her prefix" "OK" tctl alice put tls/app/x 1
    check_err "tls: alice's certificate is denied outside it" "etcdserver: permission denied" tctl alice put tls/k 2
    check_ok "tls: the root certificate acts as root" "alice" tctl root user list
    check_err "tls: alice's certificate is not root" "etcdserver: permission denied" tctl alice user list
    # The gateway never takes a certificate's name as the user: with auth on, etcd refuses such
    # a request outright rather than let it pass as anonymous.
    run tcurl root /v3/kv/range -X POST -d "{\"key\":\"$(b64 tls/k)\"}"
    check "tls: with auth on the gateway refuses a client certificate that names a user" \
        "CommonName of client sending a request against gateway will be ignored and not used as expected" "$OUT"
    # Logins get JWTs: a token rather than a certificate speaks for the request, and a token
    # issued by t1 is honoured by t2 and t3.
    check_ok "tls: jwt: etcdctl --user logs in and puts" "OK" tctl root --user=alice:alice-secret put tls/app/jwt 1
    check_err "tls: jwt: the token, not the root certificate, decides" "etcdserver: permission denied" \
        tctl root --user=alice:alice-secret put tls/k 3
    run tcurl anon /v3/auth/authenticate -X POST -d '{"name":"alice","password":"alice-secret"}'
    TOKEN=$(js 'd["token"]' <<<"$OUT")
    check "tls: jwt: the gateway's login returns a signed token (three parts)" "3" "$(awk -F. '{print NF}' <<<"$TOKEN")"
    for i in 1 2; do
        run tcurl_at "${TLS_EP[$i]}" anon /v3/kv/range -X POST -H "Authorization: $TOKEN" \
            -d "{\"key\":\"$(b64 tls/app/jwt)\"}"
        check "tls: jwt: t$((i + 1)) honours t1's token" "1" \
            "$(js '__import__("base64").b64decode(d["kvs"][0]["value"]).decode()' <<<"$OUT")"
    done
    run tcurl anon /v3/kv/range -X POST -H "Authorization: ${TOKEN}x" -d "{\"key\":\"$(b64 tls/app/jwt)\"}"
    check "tls: jwt: an altered token is refused" "etcdserver: invalid auth token" "$(js 'd["error"]' <<<"$OUT")"
    check_ok "tls: auth disable by the root certificate" "Authentication Disabled" tctl root auth disable
    tls_stop
}

tls_stop() {
    for p in "${TLS_PID[@]}"; do [[ -n "$p" ]] && stop_pid "$p"; done
    TLS_PID=()
}
