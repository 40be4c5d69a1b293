//! The etcd state machine lives in `keel-machine`, so that the simulator runs it too.
pub use keel_machine::*;
