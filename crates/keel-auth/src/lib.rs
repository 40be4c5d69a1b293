//! # keel-auth — etcd's authentication and role-based access, as pure state
//!
//! What etcd keeps in its `auth`, `authUsers` and `authRoles` buckets: whether auth is on, the
//! auth revision, users (a bcrypt hash, granted roles) and roles (key permissions). It changes
//! only by [`AuthCommand`]s applied in log order, so every member holds the same store at the
//! same log index, and a permission revoked at index `i` is refused by every member from `i` on.
//!
//! - [`AuthStore`]: the state, [`AuthStore::apply`] (etcd 3.4's `auth/store.go` rules and
//!   errors) and the checks a request passes ([`AuthStore::check_range`] and friends).
//! - [`Permissions`]: one user's read and write key ranges, merged, for the check.
//! - [`SimpleTokens`]: etcd's `simple` tokens, assigned when an `Authenticate` entry is applied
//!   (so a token issued by one member is honoured by all), expiring after a TTL of disuse.
//!
//! Pure: no clock, no randomness, no IO. Password hashes are made and verified by the server
//! (bcrypt is salted with random bytes), and commands carry the hash, so applying is
//! deterministic.

mod command;
mod error;
mod perms;
mod store;
mod tokens;

pub use command::AuthCommand;
pub use error::AuthError;
pub use perms::{KeyRange, Permissions};
pub use store::{AuthStore, Permission, PermissionKind, Role, User, ROOT_ROLE, ROOT_USER};
pub use tokens::{SimpleTokens, TokenInfo};
