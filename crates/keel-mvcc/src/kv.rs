//! Key-values as clients see them (etcd's `mvccpb.KeyValue` and `Event`), and the record
//! stored in the backend for each revision.

use bytes::Bytes;

use crate::codec::{Reader, Writer};
use crate::error::DecodeError;

/// One version of a key (etcd's `mvccpb.KeyValue`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyValue {
    /// The key.
    pub key: Bytes,
    /// Main revision of the put that created this generation of the key.
    pub create_revision: i64,
    /// Main revision of the last change (the delete revision for a tombstone).
    pub mod_revision: i64,
    /// 1 on create, +1 per put; 0 for a tombstone.
    pub version: i64,
    /// The value (empty for a tombstone).
    pub value: Bytes,
    /// Attached lease id, 0 for none.
    pub lease: i64,
}

/// Kind of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A put.
    Put,
    /// A delete; the event's kv is the tombstone: key and `mod_revision` only.
    Delete,
}

/// One change, as watchers receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The new kv (for a delete: key and `mod_revision` = the delete revision, rest zero).
    pub kv: KeyValue,
    /// The key's value before this change, when it had one (and it is not compacted), if it
    /// was read: see `prev_kv_read`.
    pub prev_kv: Option<KeyValue>,
    /// Whether `prev_kv` was looked up. When not (no watcher wanted it as the change was
    /// applied, see [`crate::Store::set_events_prev_kv`]), `prev_kv` is `None` and says nothing:
    /// a watcher that wants it reads the event back from history.
    pub prev_kv_read: bool,
}

/// Format version of [`StoredRecord`].
const RECORD_V1: u8 = 1;
/// Flag bit: this revision is a tombstone.
const FLAG_TOMBSTONE: u8 = 1;

/// What the backend stores under a revision: the kv plus whether it is a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredRecord {
    pub(crate) kv: KeyValue,
    pub(crate) tombstone: bool,
}

/// A stored record's fields the key index needs, borrowed from the stored bytes.
pub(crate) struct RecordHeader<'a> {
    pub key: &'a [u8],
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
    pub tombstone: bool,
}

impl StoredRecord {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(RECORD_V1);
        w.u8(if self.tombstone { FLAG_TOMBSTONE } else { 0 });
        w.i64(self.kv.create_revision);
        w.i64(self.kv.mod_revision);
        w.i64(self.kv.version);
        w.i64(self.kv.lease);
        w.bytes(&self.kv.key);
        // The value runs to the end: no length needed, and large values are not copied twice.
        w.buf.extend_from_slice(&self.kv.value);
        w.finish()
    }

    /// How many leading bytes of an encoded record [`StoredRecord::decode_header`] reads (or
    /// the whole length when it is too short to say: decoding then reports the error).
    pub(crate) fn header_len(input: &[u8]) -> usize {
        const KEY_LEN_AT: usize = 2 + 4 * 8;
        match input.get(KEY_LEN_AT..KEY_LEN_AT + 4) {
            Some(len) => KEY_LEN_AT + 4 + u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize,
            None => input.len(),
        }
    }

    /// What the key index needs of a record, read in place (no copy of the key or value):
    /// rebuilding the index of a million keys at start reads every record once.
    pub(crate) fn decode_header(input: &[u8]) -> Result<RecordHeader<'_>, DecodeError> {
        Ok(Self::decode_parts(input)?.0)
    }

    pub(crate) fn decode(input: &[u8]) -> Result<Self, DecodeError> {
        let (header, mod_revision, value) = Self::decode_parts(input)?;
        Ok(StoredRecord {
            kv: KeyValue {
                key: Bytes::copy_from_slice(header.key),
                create_revision: header.create_revision,
                mod_revision,
                version: header.version,
                value: Bytes::copy_from_slice(value),
                lease: header.lease,
            },
            tombstone: header.tombstone,
        })
    }

    /// The header, the mod revision and the value, borrowed from `input`.
    fn decode_parts(input: &[u8]) -> Result<(RecordHeader<'_>, i64, &[u8]), DecodeError> {
        let mut r = Reader::new(input, "stored kv record");
        let version = r.u8()?;
        if version != RECORD_V1 {
            return Err(r.err(format!("unknown record version {version}")));
        }
        let flags = r.u8()?;
        if flags & !FLAG_TOMBSTONE != 0 {
            return Err(r.err(format!("unknown flags {flags:#x}")));
        }
        let create_revision = r.i64()?;
        let mod_revision = r.i64()?;
        let version = r.i64()?;
        let lease = r.i64()?;
        let key_len = r.u32()? as usize;
        let key = r.take(key_len)?;
        let header = RecordHeader { key, create_revision, version, lease, tombstone: flags & FLAG_TOMBSTONE != 0 };
        Ok((header, mod_revision, r.rest()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_roundtrip_and_errors() {
        let rec = StoredRecord {
            kv: KeyValue {
                key: Bytes::from_static(b"k"),
                create_revision: 2,
                mod_revision: 3,
                version: 2,
                value: Bytes::from_static(b"value"),
                lease: 7,
            },
            tombstone: false,
        };
        let enc = rec.encode();
        assert_eq!(StoredRecord::decode(&enc), Ok(rec));
        assert!(StoredRecord::decode(&enc[..10]).is_err());
        let mut bad = enc.clone();
        bad[0] = 9;
        assert!(StoredRecord::decode(&bad).is_err());
    }

    #[test]
    fn the_header_prefix_decodes_as_the_whole_record_does() {
        let rec = StoredRecord {
            kv: KeyValue {
                key: Bytes::from_static(b"some/key"),
                create_revision: 4,
                mod_revision: 9,
                version: 3,
                value: Bytes::from(vec![1u8; 300]),
                lease: 11,
            },
            tombstone: true,
        };
        let enc = rec.encode();
        let len = StoredRecord::header_len(&enc);
        assert_eq!(len, enc.len() - 300, "the value is not part of the header");
        let (whole, prefix) =
            (StoredRecord::decode_header(&enc).unwrap(), StoredRecord::decode_header(&enc[..len]).unwrap());
        assert_eq!(
            (whole.key, whole.create_revision, whole.version, whole.lease, whole.tombstone),
            (prefix.key, prefix.create_revision, prefix.version, prefix.lease, prefix.tombstone)
        );
        assert!(StoredRecord::decode_header(&enc[..len - 1]).is_err(), "one byte short of the key");
        assert_eq!(StoredRecord::header_len(&enc[..10]), 10, "too short to say: all of it");
    }
}
