//! Minimal binary writer/reader shared by the command, record and snapshot encodings.
//!
//! Fixed-width big-endian integers and `u32`-length-prefixed byte strings. The reader is
//! total: every read checks bounds and reports the offset, lengths are checked against the
//! remaining input before anything is allocated, so hostile input cannot make it panic or
//! allocate more than its own size.

use bytes::Bytes;

use crate::error::DecodeError;

/// Appends encoded fields to a buffer.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn new() -> Self {
        Writer { buf: Vec::new() }
    }
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub(crate) fn bool(&mut self, v: bool) {
        self.buf.push(u8::from(v));
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    /// A length-prefixed byte string. Lengths above `u32::MAX` cannot occur for keys and
    /// values the server accepts (its request limit is far below); saturating would corrupt
    /// silently, so this is an internal invariant.
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        let len = u32::try_from(v.len()).expect("byte string longer than 4 GiB");
        self.u32(len);
        self.buf.extend_from_slice(v);
    }
    /// A collection length (same invariant as [`Writer::bytes`]).
    pub(crate) fn len(&mut self, n: usize) {
        let len = u32::try_from(n).expect("collection longer than u32::MAX");
        self.u32(len);
    }
    /// An unsigned LEB128 varint: 1 byte below 128, at most 10.
    pub(crate) fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }
    /// A signed integer as a zigzag varint (small magnitudes of either sign are short).
    pub(crate) fn zigzag(&mut self, v: i64) {
        self.varint(((v << 1) ^ (v >> 63)) as u64);
    }
    pub(crate) fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads fields back, checking every bound.
pub(crate) struct Reader<'a> {
    input: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(input: &'a [u8], what: &'static str) -> Self {
        Reader { input, pos: 0, what }
    }

    pub(crate) fn offset(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.input.len() - self.pos
    }

    pub(crate) fn err(&self, detail: impl Into<String>) -> DecodeError {
        DecodeError::new(self.what, self.pos, detail)
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(self.err(format!("truncated: need {n} bytes, have {}", self.remaining())));
        }
        let out = &self.input[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(DecodeError::new(self.what, self.pos - 1, format!("bool byte {b}"))),
        }
    }
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    pub(crate) fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array()?))
    }
    pub(crate) fn bytes(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u32()? as usize;
        Ok(Bytes::copy_from_slice(self.take(len)?))
    }
    /// A collection length; each element takes at least `min_elem_bytes`, so a length that
    /// cannot fit in the remaining input is rejected before any allocation.
    pub(crate) fn len(&mut self, min_elem_bytes: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_elem_bytes.max(1)) > self.remaining() {
            return Err(self.err(format!("length {n} exceeds remaining input")));
        }
        Ok(n)
    }
    /// What [`Writer::varint`] wrote; refuses a truncated one and one over 64 bits.
    pub(crate) fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            if shift == 63 && b > 1 {
                return Err(DecodeError::new(self.what, self.pos - 1, "varint over 64 bits"));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(DecodeError::new(self.what, self.pos - 1, "varint over 64 bits"))
    }
    pub(crate) fn zigzag(&mut self) -> Result<i64, DecodeError> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }
    /// A collection length written with [`Writer::varint`], checked as [`Reader::len`] does.
    pub(crate) fn varint_len(&mut self, min_elem_bytes: usize) -> Result<usize, DecodeError> {
        let n = usize::try_from(self.varint()?).unwrap_or(usize::MAX);
        if n.saturating_mul(min_elem_bytes.max(1)) > self.remaining() {
            return Err(self.err(format!("length {n} exceeds remaining input")));
        }
        Ok(n)
    }
    /// The rest of the input, unparsed.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let out = &self.input[self.pos..];
        self.pos = self.input.len();
        out
    }
    pub(crate) fn expect_end(&self) -> Result<(), DecodeError> {
        if self.remaining() != 0 {
            return Err(self.err(format!("{} trailing bytes", self.remaining())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_refuse_what_no_writer_writes() {
        let values = [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX - 1, u64::MAX];
        let signed = [0i64, -1, 1, -64, 64, i64::MIN, i64::MAX];
        let mut w = Writer::new();
        values.iter().for_each(|&v| w.varint(v));
        signed.iter().for_each(|&v| w.zigzag(v));
        let bytes = w.finish();
        let mut r = Reader::new(&bytes, "test");
        assert_eq!(values.map(|_| r.varint().unwrap()), values);
        assert_eq!(signed.map(|_| r.zigzag().unwrap()), signed);
        r.expect_end().unwrap();
        assert!(Reader::new(&[0x80], "test").varint().is_err(), "truncated");
        assert!(Reader::new(&[0xff; 10], "test").varint().is_err(), "over 64 bits");
        assert!(Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02], "test").varint().is_err());
        assert!(Reader::new(&[5, 1, 2], "test").varint_len(1).is_err(), "5 elements cannot fit in 2 bytes");
    }
}
