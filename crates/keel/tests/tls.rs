//! Mutual TLS on real processes: a 3-member cluster with client and peer mTLS
//! (`--client-cert-auth`, `--peer-client-cert-auth`) and auth on, driven by etcdctl 3.4 with
//! `--cacert/--cert/--key` (and `--user`), the Rust client with a TLS identity, and curl on the
//! JSON gateway. What it pins down: the common name of a verified client certificate is the
//! user; a role's prefix allows and denies as with a password; a txn with a forbidden key in any
//! branch is denied whole; a watch on a forbidden range is refused; a token from one member is
//! honoured by the others; a revoked permission is denied at once on every member; a client
//! without a certificate is refused at the handshake; and a peer whose certificate comes from
//! another CA never joins.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{eventually, make_certs, message, range_with_token, Cluster};
use etcd_client::{Certificate, Client, Compare, CompareOp, ConnectOptions, Identity, TlsOptions, Txn, TxnOp};

const ALICE_PASSWORD: &str = "alice-secret";

fn certs_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-it-certs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn file(certs: &Path, name: &str) -> String {
    certs.join(name).to_string_lossy().into_owned()
}

/// etcdctl 3.4 against `endpoint` with the CA and, when `user` is given, that user's client
/// certificate (`None`: no certificate at all).
fn etcdctl_tls(endpoint: &str, certs: &Path, user: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new("etcdctl");
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg(format!("--cacert={}", file(certs, "ca.pem")))
        .args(["--dial-timeout=2s", "--command-timeout=4s"]);
    if let Some(user) = user {
        command
            .arg(format!("--cert={}", file(certs, &format!("client-{user}.pem"))))
            .arg(format!("--key={}", file(certs, &format!("client-{user}-key.pem"))));
    }
    command.args(args).output().expect("run etcdctl (scripts/install-deps.sh etcd installs it)")
}

fn succeeded(out: &Output) -> bool {
    out.status.success()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The Rust client over TLS as `cert_user`'s certificate, optionally logging in with a password.
async fn rust_client(endpoint: &str, certs: &Path, cert_user: &str, login: Option<(&str, &str)>) -> Client {
    let read = |name: String| std::fs::read(certs.join(name)).expect("read a certificate file");
    let tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read("ca.pem".into()))).identity(
        Identity::from_pem(read(format!("client-{cert_user}.pem")), read(format!("client-{cert_user}-key.pem"))),
    );
    let mut options = ConnectOptions::new().with_tls(tls);
    if let Some((user, password)) = login {
        options = options.with_user(user, password);
    }
    eventually("connect over TLS", || {
        let (endpoint, options) = (endpoint.to_string(), options.clone());
        async move { Client::connect([endpoint], Some(options)).await }
    })
    .await
}

/// `curl -X POST` to a member's gateway over TLS with `cert_user`'s certificate: the body.
fn gateway_text(endpoint: &str, certs: &Path, cert_user: &str, path: &str, body: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert", &file(certs, "ca.pem")])
        .args(["--cert", &file(certs, &format!("client-{cert_user}.pem"))])
        .args(["--key", &file(certs, &format!("client-{cert_user}-key.pem"))])
        .args(["-X", "POST", &format!("{endpoint}{path}"), "-d", body])
        .output()
        .expect("run curl");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mutual_tls_and_auth_a_certificates_common_name_is_its_user_on_every_member() {
    let certs = certs_dir("mtls");
    make_certs(&certs, &["root", "alice", "nobody"]);
    let cluster = Cluster::start_tls("mtls", 3, &certs, &[]);
    let endpoints: Vec<String> = cluster.members.iter().map(|m| m.endpoint()).collect();

    // Auth off: any verified certificate may write; members replicate over peer TLS.
    let put = etcdctl_tls(&endpoints[0], &certs, Some("root"), &["put", "/greeting", "hello"]);
    assert!(succeeded(&put), "{}", stderr(&put));
    let got = etcdctl_tls(&endpoints[2], &certs, Some("root"), &["get", "/greeting", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "hello", "{}", stderr(&got));

    // A client without a certificate never gets past the handshake: etcdctl gives up, the
    // member logs why, and nothing is written.
    let anonymous = etcdctl_tls(&endpoints[1], &certs, None, &["put", "/greeting", "anonymous"]);
    assert!(!succeeded(&anonymous), "a client without a certificate wrote");
    assert!(cluster.log(1).contains("refused a client's TLS handshake"), "member 2's log:\n{}", cluster.log(1));
    let plain = common::etcdctl(
        &format!("127.0.0.1:{}", cluster.members[1].client_port),
        &["--dial-timeout=2s", "--command-timeout=4s", "get", "/greeting"],
    );
    assert!(!succeeded(&plain), "a client without TLS read");

    // Users and a role with a prefix permission, then auth on. The root certificate acts as root.
    for args in [
        &["user", "add", "root:root-secret"][..],
        &["role", "add", "app"],
        &["role", "grant-permission", "app", "readwrite", "/app/", "--prefix=true"],
        &["user", "add", &format!("alice:{ALICE_PASSWORD}")],
        &["user", "grant-role", "alice", "app"],
        &["put", "/other", "outside"],
        &["auth", "enable"],
    ] {
        let out = etcdctl_tls(&endpoints[0], &certs, Some("root"), args);
        assert!(succeeded(&out), "{args:?}: {}", stderr(&out));
    }

    // Alice's certificate, no password, on every member: her prefix yes, the rest no.
    for (member, endpoint) in endpoints.iter().enumerate() {
        let key = format!("/app/from-{member}");
        let out = etcdctl_tls(endpoint, &certs, Some("alice"), &["put", &key, "v"]);
        assert!(succeeded(&out), "member {member}: {}", stderr(&out));
        let out = etcdctl_tls(endpoint, &certs, Some("alice"), &["put", "/other", "no"]);
        assert!(stderr(&out).contains("etcdserver: permission denied"), "member {member}: {}", stderr(&out));
        let out = etcdctl_tls(endpoint, &certs, Some("alice"), &["get", "/other"]);
        assert!(stderr(&out).contains("etcdserver: permission denied"), "member {member}: {}", stderr(&out));
    }
    // A verified certificate whose name is no user is denied everything.
    let out = etcdctl_tls(&endpoints[0], &certs, Some("nobody"), &["get", "/app/from-0"]);
    assert!(stderr(&out).contains("etcdserver: permission denied"), "{}", stderr(&out));
    // The root certificate manages the cluster; alice's does not.
    let out = etcdctl_tls(&endpoints[2], &certs, Some("root"), &["user", "list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("alice"), "{}", stderr(&out));
    let out = etcdctl_tls(&endpoints[2], &certs, Some("alice"), &["user", "list"]);
    assert!(stderr(&out).contains("etcdserver: permission denied"), "{}", stderr(&out));

    // The Rust client with alice's identity: a txn with a forbidden key in the branch that would
    // not even run is denied whole, and a watch on a forbidden range is refused.
    let mut alice = rust_client(&endpoints[1], &certs, "alice", None).await;
    alice.put("/app/x", "1", None).await.expect("put in her prefix");
    let txn = Txn::new()
        .when([Compare::value("/app/x", CompareOp::Equal, "1")])
        .and_then([TxnOp::put("/app/y", "from-txn", None)])
        .or_else([TxnOp::put("/other", "from-txn", None)]);
    assert_eq!(message(alice.txn(txn).await.expect_err("txn")), "etcdserver: permission denied");
    assert_eq!(alice.get("/app/y", None).await.expect("get").count(), 0, "nothing of the txn ran");
    let mut watch = alice.watch("/other", None).await.expect("watch stream");
    let first = watch.message().await.expect("a response").expect("not the end");
    assert!(first.canceled() && first.cancel_reason().contains("etcdserver: permission denied"), "{first:?}");

    // A password login over TLS works too (etcdctl --user and the Rust client), and a token
    // issued by member 0 is honoured by members 1 and 2 (the gateway takes it in
    // `Authorization`; a certificate never speaks for a gateway request, as in etcd).
    let user = format!("--user=alice:{ALICE_PASSWORD}");
    let out = etcdctl_tls(&endpoints[2], &certs, Some("nobody"), &[&user, "put", "/app/by-password", "v"]);
    assert!(succeeded(&out), "{}", stderr(&out));
    let mut by_password = rust_client(&endpoints[0], &certs, "nobody", Some(("alice", ALICE_PASSWORD))).await;
    by_password.put("/app/rust-password", "v", None).await.expect("put with a token");
    let mut login = rust_client(&endpoints[0], &certs, "nobody", None).await.auth_client();
    let token = login.authenticate("alice".into(), ALICE_PASSWORD.into()).await.expect("log in on member 0");
    let token = token.token().to_string();
    for endpoint in &endpoints[1..] {
        let value = eventually("the token on another member", || {
            range_with_token(endpoint, Some(&certs), "/app/x", token.clone())
        })
        .await;
        assert_eq!(value, b"1");
        let forged =
            range_with_token(endpoint, Some(&certs), "/app/x", "forged.1".into()).await.expect_err("a forged token");
        assert_eq!(message(forged), "etcdserver: invalid auth token");
    }
    // The gateway never takes a certificate's name as the user: with auth on it refuses a
    // request whose certificate names one (etcd 3.4's 400 and text).
    let named = gateway_text(&endpoints[1], &certs, "root", "/v3/kv/range", r#"{"key":"L2FwcC94"}"#);
    assert!(named.contains("CommonName of client sending a request against gateway will be ignored"), "{named}");

    // A revoked permission is denied at once on every member.
    let out = etcdctl_tls(
        &endpoints[0],
        &certs,
        Some("root"),
        &["role", "revoke-permission", "app", "/app/", "--prefix=true"],
    );
    assert!(succeeded(&out), "{}", stderr(&out));
    for (member, endpoint) in endpoints.iter().enumerate() {
        let out = etcdctl_tls(endpoint, &certs, Some("alice"), &["get", "/app/x"]);
        assert!(stderr(&out).contains("etcdserver: permission denied"), "member {member}: {}", stderr(&out));
        let out = etcdctl_tls(endpoint, &certs, Some("alice"), &["put", "/app/x", "2"]);
        assert!(stderr(&out).contains("etcdserver: permission denied"), "member {member}: {}", stderr(&out));
    }
    let _ = std::fs::remove_dir_all(&certs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_certificate_comes_from_another_ca_never_joins() {
    let certs = certs_dir("peer-ca");
    let other = certs_dir("peer-other-ca");
    make_certs(&certs, &["root"]);
    make_certs(&other, &["root"]);
    let mut cluster = Cluster::prepare_tls("peer-ca", 3, &certs, &[]);
    // Member 3 is named in --initial-cluster, but its certificates come from another CA (and it
    // trusts only that one).
    cluster.members[2].certs = Some(other.clone());
    for i in 0..3 {
        cluster.spawn(i);
    }
    // Members 1 and 2 are a quorum: they elect a leader and serve.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !(cluster.is_healthy(0) && cluster.is_healthy(1)) {
        assert!(std::time::Instant::now() < deadline, "members 1 and 2 never became healthy:\n{}", cluster.log(0));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let endpoint = cluster.members[0].endpoint();
    let put = etcdctl_tls(&endpoint, &certs, Some("root"), &["put", "/k", "v"]);
    assert!(succeeded(&put), "{}", stderr(&put));
    // Member 3 keeps trying (reconnects every 100 ms): give it time to be refused many times.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let refusals: usize =
        (0..2).map(|i| cluster.log(i).matches("refused a peer connection's TLS handshake").count()).sum();
    assert!(refusals > 0, "no member refused member 3's certificate:\n{}\n{}", cluster.log(0), cluster.log(1));
    // It has no leader and none of the data: it never got past a handshake.
    assert!(!cluster.is_healthy(2), "member 3 joined with a certificate from another CA");
    let got = etcdctl_tls(&cluster.members[2].endpoint(), &other, Some("root"), &["get", "/k", "--consistency=s"]);
    assert!(!String::from_utf8_lossy(&got.stdout).contains('v'), "member 3 has the data: {got:?}");
    let _ = std::fs::remove_dir_all(&certs);
    let _ = std::fs::remove_dir_all(&other);
}
