//! `keel certs`: a throwaway CA and the certificates a TLS cluster needs — one per member
//! (serving clients and peers, and dialing peers) and one per client user (its common name is
//! the user name when `--client-cert-auth` and auth are on). For trying TLS, for tests and for
//! scripts that run keel and etcd alike; production clusters bring their own PKI.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use keel_server::tls::certs::ThrowawayCa;

#[derive(clap::Args, Debug)]
pub struct Options {
    /// Where to write ca.pem, MEMBER.pem/MEMBER-key.pem and client-USER.pem/client-USER-key.pem.
    #[arg(long)]
    dir: PathBuf,
    /// Host names and IP addresses every member certificate is valid for.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1,localhost")]
    hosts: Vec<String>,
    /// One certificate per member name.
    #[arg(long, value_delimiter = ',', default_value = "m1,m2,m3")]
    members: Vec<String>,
    /// One client certificate per user name.
    #[arg(long, value_delimiter = ',', default_value = "root")]
    users: Vec<String>,
    /// Years the certificates are valid.
    #[arg(long, default_value_t = 1)]
    years: u64,
}

pub fn run(options: Options) -> anyhow::Result<()> {
    write(&options.dir, &options.hosts, &options.members, &options.users, options.years)?;
    println!("wrote a throwaway CA and its certificates to {}", options.dir.display());
    Ok(())
}

/// Writes a new CA's certificate and those it signs into `dir` (the CA's key is never written:
/// nothing more can be signed by it later).
pub fn write(dir: &Path, hosts: &[String], members: &[String], users: &[String], years: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let validity = Duration::from_secs(years.max(1).saturating_mul(365 * 86_400));
    let ca = ThrowawayCa::new("keel throwaway CA", validity)?;
    std::fs::write(dir.join("ca.pem"), &ca.cert_pem).with_context(|| format!("write {}/ca.pem", dir.display()))?;
    for member in members {
        ca.member(member, hosts)?.write(dir, member)?;
    }
    for user in users {
        ca.client(user)?.write(dir, &format!("client-{user}"))?;
    }
    Ok(())
}
