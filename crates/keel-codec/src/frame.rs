//! Framing: `[len: u32][crc32c(payload): u32][payload]`. Used for WAL records, snapshot files and
//! peer frames. A frame can be told apart from preallocated zeros (len 0 is never valid) and from
//! a torn write (the length runs past the data, or the checksum does not match).

use thiserror::Error;

pub const FRAME_HEADER_BYTES: usize = 8;

pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// Zeros where a frame header would be: the end of the written part of a preallocated file.
    #[error("end of data (zero header)")]
    End,
    #[error("frame at byte {offset}: header runs past the end ({available} bytes left)")]
    TruncatedHeader { offset: usize, available: usize },
    #[error("frame at byte {offset}: length {len} exceeds the limit {limit}")]
    TooLong { offset: usize, len: usize, limit: usize },
    #[error("frame at byte {offset}: payload of {len} bytes runs past the end ({available} bytes left)")]
    TruncatedPayload { offset: usize, len: usize, available: usize },
    #[error("frame at byte {offset}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { offset: usize, stored: u32, computed: u32 },
}

/// Appends one frame around `payload`.
pub fn encode_frame(out: &mut Vec<u8>, payload: &[u8]) {
    assert!(!payload.is_empty(), "an empty frame would read as the end of data");
    let len = u32::try_from(payload.len()).expect("frames are < 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Decodes the frame starting at `offset` in `data`; returns the payload and the offset after it.
pub fn decode_frame(data: &[u8], offset: usize, max_len: usize) -> Result<(&[u8], usize), FrameError> {
    let available = data.len().saturating_sub(offset);
    if available < FRAME_HEADER_BYTES {
        if data[offset.min(data.len())..].iter().all(|&b| b == 0) {
            return Err(FrameError::End);
        }
        return Err(FrameError::TruncatedHeader { offset, available });
    }
    let header = &data[offset..offset + FRAME_HEADER_BYTES];
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    let stored = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if len == 0 && stored == 0 {
        return Err(FrameError::End);
    }
    if len == 0 || len > max_len {
        return Err(FrameError::TooLong { offset, len, limit: max_len });
    }
    let start = offset + FRAME_HEADER_BYTES;
    if data.len() - start < len {
        return Err(FrameError::TruncatedPayload { offset, len, available: data.len() - start });
    }
    let payload = &data[start..start + len];
    let computed = crc32c(payload);
    if computed != stored {
        return Err(FrameError::Checksum { offset, stored, computed });
    }
    Ok((payload, start + len))
}
