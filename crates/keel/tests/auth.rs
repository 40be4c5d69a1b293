//! etcd's authentication and role-based access on a 3-member cluster of real processes, through
//! the Rust client, etcdctl 3.4 and the JSON gateway: a role with a key-prefix permission, what
//! it allows and denies, a txn denied whole, a watch refused, a token from one member honoured
//! by the others, a revoked permission denied at once on every member, root-only management,
//! and all of it kept across a restart.

mod common;

use std::process::Command;

use common::{etcdctl, eventually, message, Cluster};
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Permission, Txn, TxnOp, WatchOptions};

const ROOT_PASSWORD: &str = "root-secret";
const ALICE_PASSWORD: &str = "alice-secret";

async fn as_user(cluster: &Cluster, member: usize, user: &str, password: &str) -> Client {
    let options = ConnectOptions::new().with_user(user, password);
    eventually("log in", || {
        let options = options.clone();
        let endpoint = cluster.members[member].endpoint();
        async move { Client::connect([endpoint], Some(options)).await }
    })
    .await
}

/// `curl -X POST` to the gateway of `port`, with `token` as `Authorization` when given.
fn gateway(port: u16, path: &str, body: &str, token: Option<&str>) -> serde_json::Value {
    let mut curl = Command::new("curl");
    curl.args(["-sS", "-X", "POST", &format!("http://127.0.0.1:{port}{path}"), "-d", body]);
    if let Some(token) = token {
        curl.args(["-H", &format!("Authorization: {token}")]);
    }
    let out = curl.output().expect("run curl");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{path}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Users root (with the root role) and alice, whose role `app` may read and write `/app/`.
async fn add_root_and_alice(setup: &mut Client) {
    eventually("root", || {
        let mut c = setup.clone();
        async move { c.user_add("root", ROOT_PASSWORD, None).await }
    })
    .await;
    setup.role_add("root").await.expect("role add root");
    setup.user_grant_role("root", "root").await.expect("grant root");
    setup.role_add("app").await.expect("role add app");
    setup.role_grant_permission("app", Permission::read_write("/app/").with_prefix()).await.expect("grant");
    setup.user_add("alice", ALICE_PASSWORD, None).await.expect("user add alice");
    setup.user_grant_role("alice", "app").await.expect("grant app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_with_a_prefix_permission_is_allowed_its_keys_and_denied_the_rest_on_every_member() {
    let mut cluster = Cluster::start("auth", 3);
    let mut setup = cluster.client(0).await;
    add_root_and_alice(&mut setup).await;
    setup.put("/other", "outside", None).await.expect("put before auth");
    setup.auth_enable().await.expect("auth enable");

    // Without a token: etcd's "user name is empty", on any member.
    let anonymous = setup.get("/app/x", None).await.expect_err("anonymous get");
    assert_eq!(message(anonymous), "etcdserver: user name is empty");
    let wrong = Client::connect([cluster.members[1].endpoint()], Some(ConnectOptions::new().with_user("alice", "no")))
        .await
        .map(drop)
        .expect_err("a wrong password");
    let wrong = message(wrong);
    assert!(wrong.contains("authentication failed, invalid user ID or password"), "{wrong}");

    // Alice, through member 1: her prefix yes, the rest no.
    let mut alice = as_user(&cluster, 1, "alice", ALICE_PASSWORD).await;
    alice.put("/app/x", "1", None).await.expect("put in her prefix");
    let got = alice.get("/app/", Some(GetOptions::new().with_prefix())).await.expect("get her prefix");
    assert_eq!(got.kvs().len(), 1);
    for denied in [
        alice.put("/other", "2", None).await.map(drop),
        alice.get("/other", None).await.map(drop),
        alice.get("/app/", Some(GetOptions::new().with_from_key())).await.map(drop),
        alice.delete("/", Some(etcd_client::DeleteOptions::new().with_prefix())).await.map(drop),
    ] {
        assert_eq!(message(denied.expect_err("outside her prefix")), "etcdserver: permission denied");
    }

    // A txn touching a forbidden key in any branch is denied as a whole: the allowed put in the
    // branch that would run does not happen either.
    let txn = Txn::new()
        .when([Compare::value("/app/x", CompareOp::Equal, "1")])
        .and_then([TxnOp::put("/app/y", "from-txn", None)])
        .or_else([TxnOp::put("/other", "from-txn", None)]);
    assert_eq!(message(alice.txn(txn).await.expect_err("txn")), "etcdserver: permission denied");
    let mut root = as_user(&cluster, 0, "root", ROOT_PASSWORD).await;
    assert_eq!(root.get("/app/y", None).await.expect("root get").count(), 0, "nothing of the txn ran");
    assert_eq!(root.get("/other", None).await.expect("root get").kvs()[0].value(), b"outside");

    // A watch on a forbidden range is canceled at once, with etcd's reason.
    let mut watch = alice.watch("/other", None).await.expect("watch stream");
    let first = watch.message().await.expect("a response").expect("not the end");
    assert!(first.canceled(), "{first:?}");
    assert!(first.cancel_reason().contains("etcdserver: permission denied"), "{}", first.cancel_reason());
    let mut allowed = alice.watch("/app/", Some(WatchOptions::new().with_prefix())).await.expect("watch stream");
    assert!(!allowed.message().await.expect("created").expect("open").canceled());

    // Managing the cluster is root's: members, auth itself.
    assert_eq!(message(alice.user_list().await.map(drop).expect_err("user list")), "etcdserver: permission denied");
    let add = alice.member_add(["http://127.0.0.1:1"], None).await.map(drop).expect_err("member add");
    assert_eq!(message(add), "etcdserver: permission denied");
    assert_eq!(root.user_list().await.expect("root lists users").users(), ["alice", "root"]);

    // etcdctl 3.4 against member 2, as alice.
    let endpoint = cluster.members[2].endpoint();
    let user = format!("--user=alice:{ALICE_PASSWORD}");
    let out = etcdctl(&endpoint, &[&user, "put", "/app/from-etcdctl", "v"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = etcdctl(&endpoint, &[&user, "get", "/other"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("etcdserver: permission denied"));

    // A token issued by member 0 is honoured by members 1 and 2 (through the gateway, which takes
    // the raw token in `Authorization`).
    let ports: Vec<u16> = cluster.members.iter().map(|m| m.client_port).collect();
    let login = gateway(ports[0], "/v3/auth/authenticate", r#"{"name":"alice","password":"alice-secret"}"#, None);
    let token = login["token"].as_str().expect("a token").to_string();
    for &port in &ports[1..] {
        let key = r#"{"key":"L2FwcC94"}"#; // "/app/x"
        let got = eventually("the token on another member", || {
            let got = gateway(port, "/v3/kv/range", key, Some(&token));
            async move {
                match got.get("kvs") {
                    Some(_) => Ok(got),
                    None => Err(etcd_client::Error::InvalidArgs(format!("{got}"))),
                }
            }
        })
        .await;
        assert_eq!(got["kvs"][0]["value"], "MQ=="); // "1"
        let forged = gateway(port, "/v3/kv/range", key, Some("forged.1"));
        assert_eq!(forged["error"], "etcdserver: invalid auth token");
    }

    // A revoked permission is denied at once on every member: a fresh login on each (at the new
    // auth revision) reads nothing of her prefix any more.
    root.role_revoke_permission("app", "/app/", Some(etcd_client::RoleRevokePermissionOptions::new().with_prefix()))
        .await
        .expect("revoke");
    for member in 0..3 {
        let mut alice = as_user(&cluster, member, "alice", ALICE_PASSWORD).await;
        let denied = alice.get("/app/x", None).await.expect_err("revoked");
        assert_eq!(message(denied), "etcdserver: permission denied", "member {member}");
    }
    // A client still holding a token from before the revoke is refused too (etcd's clients log
    // in again on this answer).
    let stale = etcdctl(&endpoint, &[&user, "get", "/app/x"]);
    assert!(!String::from_utf8_lossy(&stale.stdout).contains("/app/x"), "{stale:?}");

    // Users, roles, permissions and "auth on" are replicated state: kept across a restart of
    // every member.
    for member in 0..3 {
        cluster.stop(member);
    }
    for member in 0..3 {
        cluster.spawn(member);
    }
    cluster.wait_ready();
    let mut anonymous = cluster.client(1).await;
    let still_on = eventually("a member up", || {
        let mut c = anonymous.clone();
        async move {
            match c.get("/other", None).await {
                Ok(_) => Ok("served without a token".to_string()),
                Err(error) => match message(error) {
                    refused if refused.contains("user name is empty") => Ok(refused),
                    other => Err(etcd_client::Error::InvalidArgs(other)), // not up yet
                },
            }
        }
    })
    .await;
    assert_eq!(still_on, "etcdserver: user name is empty");
    let mut root = as_user(&cluster, 2, "root", ROOT_PASSWORD).await;
    let role = root.role_get("app").await.expect("role get");
    assert!(role.permissions().is_empty(), "the revoke was kept: {:?}", role.permissions());
    root.auth_disable().await.expect("auth disable");
    anonymous.get("/other", None).await.expect("anonymous reads with auth off");
}

/// An ES256 key pair made with openssl (as an operator makes etcd's): PKCS#8 and SPKI PEM.
fn jwt_keys(dir: &std::path::Path) -> (String, String) {
    std::fs::create_dir_all(dir).expect("key dir");
    let (private, public) = (dir.join("jwt.key"), dir.join("jwt.pub"));
    for args in [
        vec![
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            private.to_str().expect("utf-8"),
        ],
        vec!["pkey", "-in", private.to_str().expect("utf-8"), "-pubout", "-out", public.to_str().expect("utf-8")],
    ] {
        let out = Command::new("openssl").args(&args).output().expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    (private.to_string_lossy().into_owned(), public.to_string_lossy().into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_issued_by_one_member_is_honoured_by_every_member_until_auth_changes() {
    let keys = std::env::temp_dir().join(format!("keel-it-jwt-keys-{}", std::process::id()));
    let (private, public) = jwt_keys(&keys);
    let signing = format!("--auth-token=jwt,pub-key={public},priv-key={private},sign-method=ES256,ttl=10m");
    // Member 3 holds only the public key: it verifies tokens and cannot issue them.
    let verify_only = format!("--auth-token=jwt,pub-key={public},sign-method=ES256");
    let mut cluster = Cluster::start_members("jwt", vec![vec![signing.clone()], vec![signing], vec![verify_only]], &[]);
    let mut setup = cluster.client(0).await;
    add_root_and_alice(&mut setup).await;
    setup.put("/app/x", "1", None).await.expect("put");
    setup.auth_enable().await.expect("auth enable");

    // Alice logs in on member 1 and gets etcd's JWT (three dot-separated parts).
    let login = eventually("log in", || {
        let mut auth = setup.auth_client();
        async move { auth.authenticate("alice".into(), ALICE_PASSWORD.into()).await }
    })
    .await;
    let token = login.token().to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    // Every member honours it, the verify-only one too; a forged one is refused.
    let endpoints: Vec<String> = cluster.members.iter().map(|m| m.endpoint()).collect();
    for endpoint in &endpoints {
        let value = eventually("the token", || common::range_with_token(endpoint, None, "/app/x", token.clone())).await;
        assert_eq!(value, b"1");
        let forged = format!("{}x", &token[..token.len() - 1]);
        let refused = common::range_with_token(endpoint, None, "/app/x", forged).await.expect_err("forged");
        assert_eq!(message(refused), "etcdserver: invalid auth token");
    }
    // The verify-only member cannot issue one.
    let mut at_verifier = Client::connect([endpoints[2].clone()], None).await.expect("connect").auth_client();
    assert!(at_verifier.authenticate("alice".into(), ALICE_PASSWORD.into()).await.is_err());
    // The password is checked all the same.
    assert!(setup.auth_client().authenticate("alice".into(), "wrong".into()).await.is_err());

    // A token names no state: it survives a restart of every member.
    for member in 0..3 {
        cluster.stop(member);
    }
    for member in 0..3 {
        cluster.spawn(member);
    }
    cluster.wait_ready();
    let value = eventually("the token after a restart", || {
        common::range_with_token(&endpoints[2], None, "/app/x", token.clone())
    })
    .await;
    assert_eq!(value, b"1");

    // Any auth change makes it old on every member (clients log in again on this answer).
    let mut root = as_user(&cluster, 0, "root", ROOT_PASSWORD).await;
    root.role_add("unrelated").await.expect("role add");
    for endpoint in &endpoints {
        let refused = eventually("the old token refused", || {
            let (endpoint, token) = (endpoint.clone(), token.clone());
            async move {
                match common::range_with_token(&endpoint, None, "/app/x", token).await {
                    Ok(_) => Err(etcd_client::Error::InvalidArgs("still honoured".into())),
                    Err(refused) => Ok(message(refused)),
                }
            }
        })
        .await;
        assert_eq!(refused, "etcdserver: revision of auth store is old", "{endpoint}");
    }
    let _ = std::fs::remove_dir_all(&keys);
}
