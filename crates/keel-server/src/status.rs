//! Every error a client can see, mapped to etcd's gRPC code and message in this one place
//! (etcd's `api/v3rpc/rpctypes`). Clients match on these strings, so they are etcd's, byte for
//! byte.

use keel_api::tonic::{Code, Status};
use keel_mvcc::MvccError;
use keel_node::RequestError;
use keel_raft::RaftError;

use keel_auth::AuthError;

use crate::machine::ApplyError;

pub const REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";
pub const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
pub const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
pub const FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";
pub const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
pub const LEASE_EXISTS: &str = "etcdserver: lease already exists";
pub const LEASE_TTL_TOO_LARGE: &str = "etcdserver: too large lease TTL";
pub const NO_LEADER: &str = "etcdserver: no leader";
pub const LEADER_CHANGED: &str = "etcdserver: leader changed";
pub const TIMEOUT: &str = "etcdserver: request timed out";
pub const TOO_MANY_REQUESTS: &str = "etcdserver: too many requests";
pub const STOPPED: &str = "etcdserver: server stopped";
pub const EMPTY_KEY: &str = "etcdserver: key is not provided";
pub const KEY_NOT_FOUND: &str = "etcdserver: key not found";
pub const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
pub const VALUE_PROVIDED: &str = "etcdserver: value is provided";
pub const LEASE_PROVIDED: &str = "etcdserver: lease is provided";
pub const MEMBER_NOT_FOUND: &str = "etcdserver: member not found";
pub const PEER_URL_EXISTS: &str = "etcdserver: Peer URLs already exists";
pub const NOT_LEARNER: &str = "etcdserver: can only promote a learner member";
pub const LEARNER_NOT_READY: &str = "etcdserver: can only promote a learner member which is in sync with leader";
pub const NOT_CAPABLE: &str = "etcdserver: not capable";
pub const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";

pub fn no_space() -> Status {
    Status::resource_exhausted(NO_SPACE)
}

pub fn too_large() -> Status {
    Status::invalid_argument(REQUEST_TOO_LARGE)
}

pub fn too_many_ops() -> Status {
    Status::invalid_argument(TOO_MANY_OPS)
}

pub fn empty_key() -> Status {
    Status::invalid_argument(EMPTY_KEY)
}

pub fn lease_not_found() -> Status {
    Status::not_found(LEASE_NOT_FOUND)
}

pub fn stopped() -> Status {
    Status::unavailable(STOPPED)
}

pub fn too_many_requests() -> Status {
    Status::resource_exhausted(TOO_MANY_REQUESTS)
}

pub fn from_mvcc(error: &MvccError) -> Status {
    match error {
        MvccError::Compacted => Status::out_of_range(COMPACTED),
        MvccError::FutureRevision => Status::out_of_range(FUTURE_REV),
        MvccError::KeyNotFound => Status::invalid_argument(KEY_NOT_FOUND),
        MvccError::LeaseNotFound => lease_not_found(),
        MvccError::LeaseTtlTooLarge => Status::out_of_range(LEASE_TTL_TOO_LARGE),
        MvccError::LeaseExists => Status::failed_precondition(LEASE_EXISTS),
        MvccError::DuplicateKey => Status::invalid_argument(DUPLICATE_KEY),
        MvccError::ValueProvided => Status::invalid_argument(VALUE_PROVIDED),
        MvccError::LeaseProvided => Status::invalid_argument(LEASE_PROVIDED),
        MvccError::TxnTooDeep => Status::invalid_argument(error.to_string()),
        MvccError::Storage(error) => Status::internal(format!("etcdserver: {error}")),
    }
}

/// etcd's code for each auth error (`rpctypes`); the message is the error's own.
pub fn from_auth(error: AuthError) -> Status {
    let code = match error {
        AuthError::UserEmpty
        | AuthError::RoleEmpty
        | AuthError::AuthFailed
        | AuthError::InvalidAuthMgmt
        | AuthError::AuthOldRevision => Code::InvalidArgument,
        AuthError::PermissionDenied => Code::PermissionDenied,
        AuthError::InvalidAuthToken => Code::Unauthenticated,
        AuthError::RootUserNotExist
        | AuthError::RootRoleNotExist
        | AuthError::UserAlreadyExist
        | AuthError::UserNotFound
        | AuthError::RoleAlreadyExist
        | AuthError::RoleNotFound
        | AuthError::RoleNotGranted
        | AuthError::PermissionNotGranted
        | AuthError::AuthNotEnabled => Code::FailedPrecondition,
    };
    Status::new(code, error.to_string())
}

pub fn from_apply(error: &ApplyError) -> Status {
    match error {
        ApplyError::Auth(error) => from_auth(*error),
        ApplyError::Client(error) => from_mvcc(error),
        // Replaying an entry after a restart never reaches a client; treat it as unknown.
        ApplyError::AlreadyApplied => Status::unavailable(TIMEOUT),
        ApplyError::Undecodable(error) => Status::internal(format!("etcdserver: undecodable command: {error}")),
        ApplyError::Fatal(error) => Status::unavailable(format!("{STOPPED}: {error}")),
    }
}

pub fn from_request(error: &RequestError) -> Status {
    match error {
        RequestError::Refused(RaftError::NotLeader { leader: 0 }) => Status::unavailable(NO_LEADER),
        RequestError::Refused(RaftError::NotLeader { .. }) => Status::unavailable(LEADER_CHANGED),
        RequestError::Refused(RaftError::Busy(_)) => too_many_requests(),
        RequestError::Refused(RaftError::TransferInProgress) => Status::unavailable(LEADER_CHANGED),
        RequestError::Refused(RaftError::LearnerNotInSync) => Status::failed_precondition(LEARNER_NOT_READY),
        RequestError::Refused(error) => Status::new(Code::FailedPrecondition, format!("etcdserver: {error}")),
        // The slot went to another leader's entry: the write did not happen.
        RequestError::Dropped => Status::unavailable(LEADER_CHANGED),
        // Unknown outcome, as etcd's timeout.
        RequestError::Timeout => Status::unavailable(TIMEOUT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_see_etcds_codes_and_messages() {
        let compacted = from_mvcc(&MvccError::Compacted);
        assert_eq!((compacted.code(), compacted.message()), (Code::OutOfRange, COMPACTED));
        let lease = from_mvcc(&MvccError::LeaseNotFound);
        assert_eq!((lease.code(), lease.message()), (Code::NotFound, "etcdserver: requested lease not found"));
        let no_leader = from_request(&RequestError::Refused(RaftError::NotLeader { leader: 0 }));
        assert_eq!((no_leader.code(), no_leader.message()), (Code::Unavailable, "etcdserver: no leader"));
        assert_eq!(too_large().message(), "etcdserver: request is too large");
        assert_eq!(too_many_ops().code(), Code::InvalidArgument);
        let denied = from_auth(AuthError::PermissionDenied);
        assert_eq!((denied.code(), denied.message()), (Code::PermissionDenied, "etcdserver: permission denied"));
        let token = from_auth(AuthError::InvalidAuthToken);
        assert_eq!((token.code(), token.message()), (Code::Unauthenticated, "etcdserver: invalid auth token"));
        for error in AuthError::ALL {
            assert!(from_auth(error).message().starts_with("etcdserver: "), "{error:?}");
        }
    }
}
