//! The auth store: users, roles, whether auth is on, and the auth revision.

use std::collections::BTreeMap;

use keel_codec::{DecodeError, Reader, Writer};

use crate::command::AuthCommand;
use crate::error::AuthError;
use crate::perms::{KeyRange, Permissions};
use crate::tokens::{SimpleTokens, TokenInfo};

/// The user that must exist, with the root role, before auth can be enabled.
pub const ROOT_USER: &str = "root";
/// The role that may do everything: every key, members, maintenance, auth itself.
pub const ROOT_ROLE: &str = "root";

/// What a permission allows, numbered as etcd's `authpb.Permission.Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PermissionKind {
    Read = 0,
    Write = 1,
    ReadWrite = 2,
}

impl PermissionKind {
    pub fn from_code(code: i32) -> Option<PermissionKind> {
        match code {
            0 => Some(PermissionKind::Read),
            1 => Some(PermissionKind::Write),
            2 => Some(PermissionKind::ReadWrite),
            _ => None,
        }
    }

    fn reads(self) -> bool {
        matches!(self, PermissionKind::Read | PermissionKind::ReadWrite)
    }

    fn writes(self) -> bool {
        matches!(self, PermissionKind::Write | PermissionKind::ReadWrite)
    }
}

/// A role's permission on a key or range ([`KeyRange`]'s conventions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permission {
    pub kind: PermissionKind,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// The bcrypt hash of its password; `None` for a user without one (it cannot
    /// authenticate with a password; etcd's `--no-password`, for certificate users).
    pub password_hash: Option<Vec<u8>>,
    /// Sorted, without duplicates.
    pub roles: Vec<String>,
}

impl User {
    pub fn has_root_role(&self) -> bool {
        self.roles.binary_search_by(|r| r.as_str().cmp(ROOT_ROLE)).is_ok()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    /// Sorted by key (etcd keeps them so; `RoleGet` lists them in this order).
    pub permissions: Vec<Permission>,
}

/// Encoding version of [`AuthStore::encode`].
const STORE_FORMAT: u8 = 1;

/// etcd's auth store as replicated state. See the crate docs.
#[derive(Clone, Debug)]
pub struct AuthStore {
    enabled: bool,
    /// Bumped by every change to users, roles or permissions and by disabling auth (not by
    /// enabling it, as in etcd). A request checked at revision `r` is refused when applied at
    /// a later one ([`AuthError::AuthOldRevision`]).
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
    /// Each user's merged permissions, rebuilt whenever users or roles change.
    merged: BTreeMap<String, Permissions>,
    /// Not replicated state as such: assigned by applied `Authenticate` entries, dropped when
    /// unused for the TTL or when their user goes; not in the encoding (lost on restart, as in
    /// etcd).
    tokens: SimpleTokens,
}

impl Default for AuthStore {
    fn default() -> AuthStore {
        AuthStore::new()
    }
}

impl PartialEq for AuthStore {
    /// Equal replicated state (tokens aside).
    fn eq(&self, other: &AuthStore) -> bool {
        (self.enabled, self.revision, &self.users, &self.roles)
            == (other.enabled, other.revision, &other.users, &other.roles)
    }
}

impl AuthStore {
    /// An empty store at revision 1 (etcd's starts at 1, so a request without a token, at
    /// revision 0, is always older).
    pub fn new() -> AuthStore {
        AuthStore {
            enabled: false,
            revision: 1,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
            merged: BTreeMap::new(),
            tokens: SimpleTokens::default(),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn user(&self, name: &str) -> Result<&User, AuthError> {
        self.users.get(name).ok_or(AuthError::UserNotFound)
    }

    pub fn role(&self, name: &str) -> Result<&Role, AuthError> {
        self.roles.get(name).ok_or(AuthError::RoleNotFound)
    }

    /// User names, sorted.
    pub fn user_names(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    /// Role names, sorted.
    pub fn role_names(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    pub fn tokens(&mut self) -> &mut SimpleTokens {
        &mut self.tokens
    }

    /// Applies a committed command, with etcd 3.4's rules; an error changes nothing.
    pub fn apply(&mut self, command: &AuthCommand) -> Result<(), AuthError> {
        match command {
            AuthCommand::Enable => {
                if self.enabled {
                    return Ok(());
                }
                let root = self.users.get(ROOT_USER).ok_or(AuthError::RootUserNotExist)?;
                if !root.has_root_role() {
                    return Err(AuthError::RootRoleNotExist);
                }
                self.enabled = true;
                return Ok(());
            }
            AuthCommand::Disable => {
                if !self.enabled {
                    return Ok(());
                }
                self.enabled = false;
                self.tokens.clear();
            }
            AuthCommand::Authenticate { user, token } => {
                if !self.enabled {
                    return Err(AuthError::AuthNotEnabled);
                }
                let found = self.users.get(user).ok_or(AuthError::AuthFailed)?;
                if found.password_hash.is_none() {
                    return Err(AuthError::AuthFailed);
                }
                self.tokens.assign(token, user, self.revision);
                return Ok(());
            }
            AuthCommand::UserAdd { name, password_hash } => {
                if name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.users.contains_key(name) {
                    return Err(AuthError::UserAlreadyExist);
                }
                let user = User { name: name.clone(), password_hash: password_hash.clone(), roles: Vec::new() };
                self.users.insert(name.clone(), user);
            }
            AuthCommand::UserDelete { name } => {
                if self.enabled && name == ROOT_USER {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.users.remove(name).ok_or(AuthError::UserNotFound)?;
                self.tokens.invalidate_user(name);
            }
            AuthCommand::UserChangePassword { name, password_hash } => {
                let user = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
                user.password_hash = Some(password_hash.clone());
                self.tokens.invalidate_user(name);
            }
            AuthCommand::UserGrantRole { user, role } => {
                if role != ROOT_ROLE && !self.roles.contains_key(role) {
                    // Checked after the user, as etcd does.
                    self.users.get(user).ok_or(AuthError::UserNotFound)?;
                    return Err(AuthError::RoleNotFound);
                }
                let found = self.users.get_mut(user).ok_or(AuthError::UserNotFound)?;
                match found.roles.binary_search(role) {
                    // Granting a role twice is ignored, and leaves the revision alone.
                    Ok(_) => return Ok(()),
                    Err(at) => found.roles.insert(at, role.clone()),
                }
            }
            AuthCommand::UserRevokeRole { user, role } => {
                if self.enabled && user == ROOT_USER && role == ROOT_ROLE {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let found = self.users.get_mut(user).ok_or(AuthError::UserNotFound)?;
                let at = found.roles.binary_search(role).map_err(|_| AuthError::RoleNotGranted)?;
                found.roles.remove(at);
            }
            AuthCommand::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.roles.contains_key(name) {
                    return Err(AuthError::RoleAlreadyExist);
                }
                self.roles.insert(name.clone(), Role { name: name.clone(), permissions: Vec::new() });
            }
            AuthCommand::RoleDelete { name } => {
                if self.enabled && name == ROOT_ROLE {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.roles.remove(name).ok_or(AuthError::RoleNotFound)?;
                for user in self.users.values_mut() {
                    user.roles.retain(|r| r != name);
                }
            }
            AuthCommand::RoleGrantPermission { role, permission } => {
                let found = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
                let same = found
                    .permissions
                    .iter_mut()
                    .find(|p| p.key == permission.key && p.range_end == permission.range_end);
                match same {
                    Some(existing) => existing.kind = permission.kind,
                    None => {
                        let at = found.permissions.partition_point(|p| p.key <= permission.key);
                        found.permissions.insert(at, permission.clone());
                    }
                }
            }
            AuthCommand::RoleRevokePermission { role, key, range_end } => {
                let found = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
                let before = found.permissions.len();
                found.permissions.retain(|p| !(p.key == *key && p.range_end == *range_end));
                if found.permissions.len() == before {
                    return Err(AuthError::PermissionNotGranted);
                }
            }
        }
        self.revision += 1;
        self.rebuild_merged();
        Ok(())
    }

    fn rebuild_merged(&mut self) {
        let roles = &self.roles;
        self.merged = self
            .users
            .values()
            .map(|user| {
                let grants = user
                    .roles
                    .iter()
                    .filter_map(|name| roles.get(name))
                    .flat_map(|role| role.permissions.iter())
                    .map(|p| (KeyRange::new(&p.key, &p.range_end), p.kind.reads(), p.kind.writes()));
                (user.name.clone(), Permissions::from_grants(grants))
            })
            .collect();
    }

    /// Whether `user`, whose request was checked against auth revision `revision`, may read
    /// (`write == false`) or write `range` (etcd's `isOpPermitted`). Always allowed while auth
    /// is off. Revision 0 is a request that carried no token.
    pub fn check(&self, user: &str, revision: u64, range: KeyRange, write: bool) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        if revision == 0 {
            return Err(AuthError::UserEmpty);
        }
        if revision < self.revision {
            return Err(AuthError::AuthOldRevision);
        }
        let found = self.users.get(user).ok_or(AuthError::PermissionDenied)?;
        if found.has_root_role() {
            return Ok(());
        }
        let merged = self.merged.get(user).ok_or(AuthError::PermissionDenied)?;
        let allowed = if write { merged.may_write(range) } else { merged.may_read(range) };
        if allowed {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// Whether `user` may manage the cluster (members, maintenance, auth): root only, while
    /// auth is on (etcd's `IsAdminPermitted`). `""` is a request without a token.
    pub fn check_admin(&self, user: &str) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        if user.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        let found = self.users.get(user).ok_or(AuthError::UserNotFound)?;
        if found.has_root_role() {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// The user and revision a token stands for (and marks it used): etcd's
    /// `AuthInfoFromCtx` for simple tokens.
    pub fn token_info(&mut self, token: &str) -> Result<TokenInfo, AuthError> {
        self.tokens.info(token).ok_or(AuthError::InvalidAuthToken)
    }

    /// The replicated state (not the tokens), for snapshots and the store file.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(STORE_FORMAT).bool(self.enabled).u64(self.revision);
        w.u32(len32(self.users.len()));
        for user in self.users.values() {
            w.bytes(user.name.as_bytes());
            match &user.password_hash {
                Some(hash) => w.bool(true).bytes(hash),
                None => w.bool(false),
            };
            w.u32(len32(user.roles.len()));
            for role in &user.roles {
                w.bytes(role.as_bytes());
            }
        }
        w.u32(len32(self.roles.len()));
        for role in self.roles.values() {
            w.bytes(role.name.as_bytes());
            w.u32(len32(role.permissions.len()));
            for p in &role.permissions {
                w.u8(p.kind as u8).bytes(&p.key).bytes(&p.range_end);
            }
        }
        w.into_vec()
    }

    /// The inverse of [`AuthStore::encode`]; damage is an error, never a panic.
    pub fn decode(data: &[u8]) -> Result<AuthStore, DecodeError> {
        let mut r = Reader::new(data);
        let format = r.u8("auth store format")?;
        if format != STORE_FORMAT {
            return Err(r.error("auth store format", format!("unknown format {format}")));
        }
        let mut store = AuthStore::new();
        store.enabled = r.bool("auth enabled")?;
        store.revision = r.u64("auth revision")?;
        for _ in 0..r.count("user count", 10)? {
            let name = string(&mut r, "user name")?;
            let password_hash =
                if r.bool("user has password")? { Some(r.bytes("password hash")?.to_vec()) } else { None };
            let mut roles = Vec::new();
            for _ in 0..r.count("user role count", 4)? {
                roles.push(string(&mut r, "user role")?);
            }
            if !roles.windows(2).all(|w| w[0] < w[1]) {
                return Err(r.error("user roles", "not sorted or repeated"));
            }
            if store.users.insert(name.clone(), User { name, password_hash, roles }).is_some() {
                return Err(r.error("user name", "repeated"));
            }
        }
        for _ in 0..r.count("role count", 8)? {
            let name = string(&mut r, "role name")?;
            let mut permissions = Vec::new();
            for _ in 0..r.count("permission count", 9)? {
                let code = r.u8("permission kind")?;
                let kind = PermissionKind::from_code(i32::from(code))
                    .ok_or_else(|| r.error("permission kind", format!("unknown kind {code}")))?;
                permissions.push(Permission {
                    kind,
                    key: r.bytes("permission key")?.to_vec(),
                    range_end: r.bytes("permission range end")?.to_vec(),
                });
            }
            if store.roles.insert(name.clone(), Role { name, permissions }).is_some() {
                return Err(r.error("role name", "repeated"));
            }
        }
        r.finish("auth store")?;
        store.rebuild_merged();
        Ok(store)
    }
}

fn len32(len: usize) -> u32 {
    u32::try_from(len).expect("fewer than 4G users, roles or permissions")
}

pub(crate) fn string(r: &mut Reader, what: &'static str) -> Result<String, DecodeError> {
    let bytes = r.bytes(what)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| r.error(what, "not UTF-8"))
}
