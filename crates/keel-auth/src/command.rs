//! The changes to the auth store, as log entries.

use keel_codec::{DecodeError, Reader, Writer};

use crate::store::{string, Permission, PermissionKind};

/// A change to the auth store, proposed through raft and applied by every member in log order
/// ([`crate::AuthStore::apply`]). Passwords arrive hashed: the proposing member hashes them
/// (bcrypt salts randomly), so applying is deterministic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthCommand {
    Enable,
    Disable,
    /// The proposing member checked the password; applying assigns `token` to `user` on every
    /// member.
    Authenticate {
        user: String,
        token: String,
    },
    UserAdd {
        name: String,
        /// `None`: a user without a password (etcd's `--no-password`).
        password_hash: Option<Vec<u8>>,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password_hash: Vec<u8>,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        user: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    RoleGrantPermission {
        role: String,
        permission: Permission,
    },
    RoleRevokePermission {
        role: String,
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
}

impl AuthCommand {
    /// Entries whose first byte is this hold an [`AuthCommand`] (etcd commands start with their
    /// format version, 1; member commands with `0xa0`).
    pub const TAG: u8 = 0xa1;

    const ENABLE: u8 = 1;
    const DISABLE: u8 = 2;
    const AUTHENTICATE: u8 = 3;
    const USER_ADD: u8 = 4;
    const USER_DELETE: u8 = 5;
    const USER_CHANGE_PASSWORD: u8 = 6;
    const USER_GRANT_ROLE: u8 = 7;
    const USER_REVOKE_ROLE: u8 = 8;
    const ROLE_ADD: u8 = 9;
    const ROLE_DELETE: u8 = 10;
    const ROLE_GRANT_PERMISSION: u8 = 11;
    const ROLE_REVOKE_PERMISSION: u8 = 12;

    /// Whether `entry` holds an auth command (by its first byte).
    pub fn is_auth_command(entry: &[u8]) -> bool {
        entry.first() == Some(&AuthCommand::TAG)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(AuthCommand::TAG);
        match self {
            AuthCommand::Enable => w.u8(Self::ENABLE),
            AuthCommand::Disable => w.u8(Self::DISABLE),
            AuthCommand::Authenticate { user, token } => {
                w.u8(Self::AUTHENTICATE).bytes(user.as_bytes()).bytes(token.as_bytes())
            }
            AuthCommand::UserAdd { name, password_hash } => {
                w.u8(Self::USER_ADD).bytes(name.as_bytes());
                match password_hash {
                    Some(hash) => w.bool(true).bytes(hash),
                    None => w.bool(false),
                }
            }
            AuthCommand::UserDelete { name } => w.u8(Self::USER_DELETE).bytes(name.as_bytes()),
            AuthCommand::UserChangePassword { name, password_hash } => {
                w.u8(Self::USER_CHANGE_PASSWORD).bytes(name.as_bytes()).bytes(password_hash)
            }
            AuthCommand::UserGrantRole { user, role } => {
                w.u8(Self::USER_GRANT_ROLE).bytes(user.as_bytes()).bytes(role.as_bytes())
            }
            AuthCommand::UserRevokeRole { user, role } => {
                w.u8(Self::USER_REVOKE_ROLE).bytes(user.as_bytes()).bytes(role.as_bytes())
            }
            AuthCommand::RoleAdd { name } => w.u8(Self::ROLE_ADD).bytes(name.as_bytes()),
            AuthCommand::RoleDelete { name } => w.u8(Self::ROLE_DELETE).bytes(name.as_bytes()),
            AuthCommand::RoleGrantPermission { role, permission } => w
                .u8(Self::ROLE_GRANT_PERMISSION)
                .bytes(role.as_bytes())
                .u8(permission.kind as u8)
                .bytes(&permission.key)
                .bytes(&permission.range_end),
            AuthCommand::RoleRevokePermission { role, key, range_end } => {
                w.u8(Self::ROLE_REVOKE_PERMISSION).bytes(role.as_bytes()).bytes(key).bytes(range_end)
            }
        };
        w.into_vec()
    }

    /// The inverse of [`AuthCommand::encode`]; anything else is an error, never a panic.
    pub fn decode(data: &[u8]) -> Result<AuthCommand, DecodeError> {
        let mut r = Reader::new(data);
        if r.u8("auth command tag")? != AuthCommand::TAG {
            return Err(r.error("auth command tag", "not an auth command"));
        }
        let command = match r.u8("auth command kind")? {
            Self::ENABLE => AuthCommand::Enable,
            Self::DISABLE => AuthCommand::Disable,
            Self::AUTHENTICATE => {
                AuthCommand::Authenticate { user: string(&mut r, "user name")?, token: string(&mut r, "token")? }
            }
            Self::USER_ADD => {
                let name = string(&mut r, "user name")?;
                let password_hash =
                    if r.bool("has password")? { Some(r.bytes("password hash")?.to_vec()) } else { None };
                AuthCommand::UserAdd { name, password_hash }
            }
            Self::USER_DELETE => AuthCommand::UserDelete { name: string(&mut r, "user name")? },
            Self::USER_CHANGE_PASSWORD => AuthCommand::UserChangePassword {
                name: string(&mut r, "user name")?,
                password_hash: r.bytes("password hash")?.to_vec(),
            },
            Self::USER_GRANT_ROLE => {
                AuthCommand::UserGrantRole { user: string(&mut r, "user name")?, role: string(&mut r, "role name")? }
            }
            Self::USER_REVOKE_ROLE => {
                AuthCommand::UserRevokeRole { user: string(&mut r, "user name")?, role: string(&mut r, "role name")? }
            }
            Self::ROLE_ADD => AuthCommand::RoleAdd { name: string(&mut r, "role name")? },
            Self::ROLE_DELETE => AuthCommand::RoleDelete { name: string(&mut r, "role name")? },
            Self::ROLE_GRANT_PERMISSION => {
                let role = string(&mut r, "role name")?;
                let code = r.u8("permission kind")?;
                let kind = PermissionKind::from_code(i32::from(code))
                    .ok_or_else(|| r.error("permission kind", format!("unknown kind {code}")))?;
                let key = r.bytes("permission key")?.to_vec();
                let range_end = r.bytes("permission range end")?.to_vec();
                AuthCommand::RoleGrantPermission { role, permission: Permission { kind, key, range_end } }
            }
            Self::ROLE_REVOKE_PERMISSION => AuthCommand::RoleRevokePermission {
                role: string(&mut r, "role name")?,
                key: r.bytes("permission key")?.to_vec(),
                range_end: r.bytes("permission range end")?.to_vec(),
            },
            other => return Err(r.error("auth command kind", format!("unknown kind {other}"))),
        };
        r.finish("auth command")?;
        Ok(command)
    }
}
