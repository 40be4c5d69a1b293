//! # keel-codec — how keel's data looks on disk and on the wire
//!
//! Hand-written, fixed-width little-endian encodings: simple to audit and fast to decode. Every
//! decoder is *total*: any input — truncated, corrupt, hostile — yields a [`DecodeError`] naming
//! what was being read and at which byte offset, never a panic and never an unbounded allocation
//! (every length is checked against the bytes actually present before anything is allocated).
//!
//! - [`reader`]/[`writer`]: the primitives;
//! - [`raft`]: entries, hard state, membership, snapshot metadata, messages;
//! - [`record`]: the WAL's group-tagged record payloads;
//! - [`frame`]: length + CRC32C framing shared by WAL records, snapshot files and peer frames;
//! - [`peer`]: the peer protocol's frames (hello with cluster id, batched raft messages) and a
//!   streaming frame reader.

pub mod frame;
pub mod peer;
pub mod raft;
pub mod reader;
pub mod record;
pub mod writer;

pub use frame::{crc32c, FrameError};
pub use reader::{DecodeError, Reader};
pub use writer::Writer;

#[cfg(test)]
mod tests;
