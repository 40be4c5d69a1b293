//! etcd's `Auth` service: enabling auth, logging in, and managing users, roles and permissions.
//!
//! Every change is an [`AuthCommand`] through the log, checked as it is applied (the root role
//! for all but `Authenticate`; see `keel_machine::auth`). Passwords are hashed here, with bcrypt
//! at etcd's cost, before the command is proposed, so the log holds only hashes and applying
//! stays deterministic. Reads of users and roles wait for a read-index round first, so they see
//! every change acknowledged before they were asked.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_api::authpb;
use keel_api::etcdserverpb::{self as pb, auth_server::Auth};
use keel_api::tonic::{self, Request, Response, Status};
use keel_auth::{AuthCommand, AuthError, Permission, PermissionKind};

use super::{Caller, Shared};
use crate::status;

/// etcd's default `--bcrypt-cost`.
pub const BCRYPT_COST: u32 = 10;

/// Letters of a token's random part (etcd's simple tokens have 16).
const TOKEN_LETTERS: usize = 16;

pub struct AuthService {
    pub shared: Arc<Shared>,
}

/// Makes every token this member issues distinct, whatever the random part.
static ISSUED: AtomicU64 = AtomicU64::new(0);

/// bcrypt hashes and checks running at once; more wait their turn. Each takes a core for tens of
/// milliseconds by design, so a flood of logins must not take every core from the cluster.
const PASSWORD_WORK_AT_ONCE: usize = 2;
static PASSWORD_WORK: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(PASSWORD_WORK_AT_ONCE);

fn auth_error(error: AuthError) -> Status {
    status::from_auth(error)
}

/// bcrypt is slow on purpose (tens of milliseconds): off the async threads.
async fn hash_password(password: String) -> Result<Vec<u8>, Status> {
    let _turn = PASSWORD_WORK.acquire().await.map_err(|_| status::stopped())?;
    tokio::task::spawn_blocking(move || bcrypt::hash(password, BCRYPT_COST))
        .await
        .map_err(|error| Status::internal(format!("etcdserver: hashing failed: {error}")))?
        .map(String::into_bytes)
        .map_err(|error| Status::internal(format!("etcdserver: hashing failed: {error}")))
}

async fn password_matches(password: String, hash: Vec<u8>) -> bool {
    let Ok(_turn) = PASSWORD_WORK.acquire().await else { return false };
    tokio::task::spawn_blocking(move || {
        std::str::from_utf8(&hash).ok().is_some_and(|hash| bcrypt::verify(password, hash).unwrap_or(false))
    })
    .await
    .unwrap_or(false)
}

/// Failed logins tolerated per user name before each further attempt must wait.
const FAILURES_BEFORE_BACKOFF: u32 = 5;
/// The first wait, doubled by each further failure, up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// User names whose failures are remembered at once; beyond it the oldest is forgotten.
const FAILING_NAMES_MAX: usize = 10_000;

/// Keel's limit on password guessing (etcd has none): after [`FAILURES_BEFORE_BACKOFF`] failed
/// logins in a row for one user name, each further attempt before the backoff has passed is
/// refused as a failed login without the password being looked at (so without the bcrypt work
/// either); the backoff doubles with each failure, up to a minute. A successful login resets it.
/// Per member: a guesser spreading over members gets the limit of each.
#[derive(Debug, Default)]
struct FailedLogins {
    /// Per name: failures in a row, and when the next attempt may be checked.
    names: std::collections::BTreeMap<String, (u32, Instant)>,
}

impl FailedLogins {
    fn admits(&self, user: &str, now: Instant) -> bool {
        self.names.get(user).is_none_or(|&(_, next)| now >= next)
    }

    fn failed(&mut self, user: &str, now: Instant) {
        if !self.names.contains_key(user) && self.names.len() >= FAILING_NAMES_MAX {
            let oldest = self.names.iter().min_by_key(|(_, (_, next))| *next).map(|(name, _)| name.clone());
            if let Some(oldest) = oldest {
                self.names.remove(&oldest);
            }
        }
        let entry = self.names.entry(user.to_string()).or_insert((0, now));
        entry.0 = entry.0.saturating_add(1);
        entry.1 = match entry.0.checked_sub(FAILURES_BEFORE_BACKOFF) {
            None => now,
            Some(over) => now + BACKOFF_FIRST.saturating_mul(1 << over.min(6)).min(BACKOFF_MAX),
        };
    }

    fn succeeded(&mut self, user: &str) {
        self.names.remove(user);
    }
}

static FAILED_LOGINS: std::sync::Mutex<FailedLogins> =
    std::sync::Mutex::new(FailedLogins { names: std::collections::BTreeMap::new() });

fn failed_logins() -> std::sync::MutexGuard<'static, FailedLogins> {
    FAILED_LOGINS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `TOKEN_LETTERS` letters from the operating system's random source, then `.` and a number.
fn new_token(serial: u64) -> Result<String, Status> {
    let mut random = [0u8; TOKEN_LETTERS];
    getrandom::fill(&mut random).map_err(|error| Status::internal(format!("etcdserver: no randomness: {error}")))?;
    let letters: String = random
        .iter()
        .map(|b| char::from(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"[usize::from(b % 52)]))
        .collect();
    Ok(format!("{letters}.{serial}"))
}

impl AuthService {
    fn header(&self) -> Option<pb::ResponseHeader> {
        Some(self.shared.header(self.shared.metrics.revision()))
    }

    async fn change(&self, caller: &Caller, command: AuthCommand) -> Result<(), Status> {
        self.shared.propose_auth(caller, &command).await
    }

    pub async fn authenticate(&self, request: pb::AuthenticateRequest) -> Result<pb::AuthenticateResponse, Status> {
        // etcd's CheckPassword, on the member asked: the hash is in every member's store.
        // The password is checked against the cluster's latest users, not this member's possibly
        // older copy (etcd waits for a linearizable read here too): a login right after `auth
        // enable` or a password change through another member sees it. A JWT is then issued
        // with no log entry at all.
        self.shared.caught_up().await?;
        let (hash, revision) = {
            let auth = self.shared.auth.lock();
            if !auth.is_enabled() {
                return Err(auth_error(AuthError::AuthNotEnabled));
            }
            (auth.user(&request.name).ok().and_then(|user| user.password_hash.clone()), auth.revision())
        };
        if !failed_logins().admits(&request.name, Instant::now()) {
            return Err(auth_error(AuthError::AuthFailed));
        }
        let matches = match hash {
            Some(hash) => password_matches(request.password, hash).await,
            None => false,
        };
        if !matches {
            failed_logins().failed(&request.name, Instant::now());
            return Err(auth_error(AuthError::AuthFailed));
        }
        failed_logins().succeeded(&request.name);
        if let Some(jwt) = &self.shared.jwt {
            // Signed at the revision the password was checked at: a password change or any
            // other auth change applied since makes the token old at once.
            let token = jwt.sign(&request.name, revision).map_err(Status::failed_precondition)?;
            return Ok(pb::AuthenticateResponse { header: self.header(), token });
        }
        let token = new_token(ISSUED.fetch_add(1, Ordering::Relaxed))?;
        let command = AuthCommand::Authenticate { user: request.name, token: token.clone() };
        self.change(&Caller::default(), command).await?;
        Ok(pb::AuthenticateResponse { header: self.header(), token })
    }

    pub async fn user_add(&self, caller: &Caller, request: pb::AuthUserAddRequest) -> Result<(), Status> {
        if request.name.is_empty() {
            return Err(auth_error(AuthError::UserEmpty));
        }
        let no_password = request.options.as_ref().is_some_and(|options| options.no_password);
        let password_hash = if no_password {
            None
        } else if !request.hashed_password.is_empty() {
            // etcd 3.5's clients may hash on their side.
            Some(request.hashed_password.into_bytes())
        } else {
            Some(hash_password(request.password).await?)
        };
        self.change(caller, AuthCommand::UserAdd { name: request.name, password_hash }).await
    }

    pub async fn user_get(&self, caller: &Caller, name: &str) -> Result<Vec<String>, Status> {
        self.shared.caught_up().await?;
        // Root may read anyone; a user may read itself.
        if let Err(error) = self.shared.check_admin(caller) {
            if caller.user() != name {
                return Err(error);
            }
        }
        self.shared.auth.lock().user(name).map(|user| user.roles.clone()).map_err(auth_error)
    }

    pub async fn role_get(&self, caller: &Caller, name: &str) -> Result<Vec<authpb::Permission>, Status> {
        self.shared.caught_up().await?;
        // Root may read any role; a user may read the roles it has. (`check_admin` takes the
        // lock itself: asked before this function takes it.)
        let admin = self.shared.check_admin(caller);
        let auth = self.shared.auth.lock();
        if let Err(error) = admin {
            let has_role = auth.user(caller.user()).is_ok_and(|user| user.roles.iter().any(|role| role == name));
            if !has_role {
                return Err(error);
            }
        }
        let role = auth.role(name).map_err(auth_error)?;
        Ok(role
            .permissions
            .iter()
            .map(|p| authpb::Permission {
                perm_type: p.kind as i32,
                key: p.key.clone(),
                range_end: p.range_end.clone(),
            })
            .collect())
    }

    async fn names(&self, caller: &Caller, users: bool) -> Result<Vec<String>, Status> {
        self.shared.caught_up().await?;
        self.shared.check_admin(caller)?;
        let auth = self.shared.auth.lock();
        Ok(if users { auth.user_names() } else { auth.role_names() })
    }
}

macro_rules! respond {
    ($response:ident { $($field:ident: $value:expr),* }, $self:ident) => {
        Ok(Response::new(pb::$response { header: $self.header(), $($field: $value),* }))
    };
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        request: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        let caller = self.shared.caller(&request)?;
        self.change(&caller, AuthCommand::Enable).await?;
        respond!(AuthEnableResponse {}, self)
    }

    async fn auth_disable(
        &self,
        request: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        let caller = self.shared.caller(&request)?;
        self.change(&caller, AuthCommand::Disable).await?;
        respond!(AuthDisableResponse {}, self)
    }

    async fn auth_status(
        &self,
        request: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        self.shared.caller(&request)?;
        self.shared.caught_up().await?;
        let (enabled, auth_revision) = {
            let auth = self.shared.auth.lock();
            (auth.is_enabled(), auth.revision())
        };
        respond!(AuthStatusResponse { enabled: enabled, auth_revision: auth_revision }, self)
    }

    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        AuthService::authenticate(self, request.into_inner()).await.map(Response::new)
    }

    async fn user_add(
        &self,
        request: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        let caller = self.shared.caller(&request)?;
        AuthService::user_add(self, &caller, request.into_inner()).await?;
        respond!(AuthUserAddResponse {}, self)
    }

    async fn user_get(
        &self,
        request: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        let caller = self.shared.caller(&request)?;
        let roles = AuthService::user_get(self, &caller, &request.into_inner().name).await?;
        respond!(AuthUserGetResponse { roles: roles }, self)
    }

    async fn user_list(
        &self,
        request: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        let caller = self.shared.caller(&request)?;
        let users = self.names(&caller, true).await?;
        respond!(AuthUserListResponse { users: users }, self)
    }

    async fn user_delete(
        &self,
        request: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        let caller = self.shared.caller(&request)?;
        self.change(&caller, AuthCommand::UserDelete { name: request.into_inner().name }).await?;
        respond!(AuthUserDeleteResponse {}, self)
    }

    async fn user_change_password(
        &self,
        request: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        let caller = self.shared.caller(&request)?;
        let request = request.into_inner();
        let password_hash = if request.hashed_password.is_empty() {
            hash_password(request.password).await?
        } else {
            request.hashed_password.into_bytes()
        };
        self.change(&caller, AuthCommand::UserChangePassword { name: request.name, password_hash }).await?;
        respond!(AuthUserChangePasswordResponse {}, self)
    }

    async fn user_grant_role(
        &self,
        request: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        let caller = self.shared.caller(&request)?;
        let request = request.into_inner();
        self.change(&caller, AuthCommand::UserGrantRole { user: request.user, role: request.role }).await?;
        respond!(AuthUserGrantRoleResponse {}, self)
    }

    async fn user_revoke_role(
        &self,
        request: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        let caller = self.shared.caller(&request)?;
        let request = request.into_inner();
        self.change(&caller, AuthCommand::UserRevokeRole { user: request.name, role: request.role }).await?;
        respond!(AuthUserRevokeRoleResponse {}, self)
    }

    async fn role_add(
        &self,
        request: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        let caller = self.shared.caller(&request)?;
        self.change(&caller, AuthCommand::RoleAdd { name: request.into_inner().name }).await?;
        respond!(AuthRoleAddResponse {}, self)
    }

    async fn role_get(
        &self,
        request: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        let caller = self.shared.caller(&request)?;
        let perm = AuthService::role_get(self, &caller, &request.into_inner().role).await?;
        respond!(AuthRoleGetResponse { perm: perm }, self)
    }

    async fn role_list(
        &self,
        request: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        let caller = self.shared.caller(&request)?;
        let roles = self.names(&caller, false).await?;
        respond!(AuthRoleListResponse { roles: roles }, self)
    }

    async fn role_delete(
        &self,
        request: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        let caller = self.shared.caller(&request)?;
        self.change(&caller, AuthCommand::RoleDelete { name: request.into_inner().role }).await?;
        respond!(AuthRoleDeleteResponse {}, self)
    }

    async fn role_grant_permission(
        &self,
        request: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        let caller = self.shared.caller(&request)?;
        let request = request.into_inner();
        // etcd answers a request without a permission with "permission not granted".
        let perm = request.perm.ok_or_else(|| auth_error(AuthError::PermissionNotGranted))?;
        let kind = PermissionKind::from_code(perm.perm_type).ok_or_else(|| {
            Status::invalid_argument(format!("etcdserver: unknown permission type {}", perm.perm_type))
        })?;
        let permission = Permission { kind, key: perm.key, range_end: perm.range_end };
        self.change(&caller, AuthCommand::RoleGrantPermission { role: request.name, permission }).await?;
        respond!(AuthRoleGrantPermissionResponse {}, self)
    }

    async fn role_revoke_permission(
        &self,
        request: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        let caller = self.shared.caller(&request)?;
        let request = request.into_inner();
        let command =
            AuthCommand::RoleRevokePermission { role: request.role, key: request.key, range_end: request.range_end };
        self.change(&caller, command).await?;
        respond!(AuthRoleRevokePermissionResponse {}, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_failed_logins_for_a_name_must_wait_a_growing_backoff_and_a_success_resets_it() {
        let mut logins = FailedLogins::default();
        let start = Instant::now();
        for _ in 0..FAILURES_BEFORE_BACKOFF - 1 {
            logins.failed("alice", start);
            assert!(logins.admits("alice", start), "a few mistakes cost nothing");
        }
        logins.failed("alice", start);
        assert!(!logins.admits("alice", start));
        assert!(logins.admits("alice", start + BACKOFF_FIRST));
        assert!(logins.admits("bob", start), "per name");
        logins.failed("alice", start + BACKOFF_FIRST);
        assert!(!logins.admits("alice", start + BACKOFF_FIRST * 2), "doubled");
        assert!(logins.admits("alice", start + BACKOFF_FIRST * 3));
        for n in 0..20 {
            logins.failed("alice", start + BACKOFF_MAX * n);
        }
        assert!(logins.admits("alice", start + BACKOFF_MAX * 21), "never more than the maximum");
        logins.succeeded("alice");
        assert!(logins.admits("alice", start));
        for n in 0..FAILING_NAMES_MAX + 10 {
            logins.failed(&format!("u{n}"), start);
        }
        assert!(logins.names.len() <= FAILING_NAMES_MAX, "bounded");
    }

    #[test]
    fn tokens_are_letters_then_a_serial_and_never_repeat() {
        let a = new_token(7).unwrap();
        let b = new_token(7).unwrap();
        assert_ne!(a, b, "the random part differs");
        let (letters, serial) = a.split_once('.').unwrap();
        assert_eq!((letters.len(), serial), (TOKEN_LETTERS, "7"));
        assert!(letters.chars().all(|c| c.is_ascii_alphabetic()));
    }
}
