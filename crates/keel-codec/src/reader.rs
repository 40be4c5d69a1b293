use bytes::Bytes;
use thiserror::Error;

/// Why a decode failed: what was being read, and where.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("cannot decode {what} at byte {offset}: {problem}")]
pub struct DecodeError {
    pub what: &'static str,
    pub offset: usize,
    pub problem: String,
}

/// Reads fixed-width little-endian values from a byte slice, tracking the offset for errors.
#[derive(Debug)]
pub struct Reader<'a> {
    data: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data, offset: 0 }
    }

    pub fn offset(&self) -> usize {
        self.offset
    }

    pub fn remaining(&self) -> usize {
        self.data.len() - self.offset
    }

    pub fn error(&self, what: &'static str, problem: impl Into<String>) -> DecodeError {
        DecodeError { what, offset: self.offset, problem: problem.into() }
    }

    fn take(&mut self, what: &'static str, len: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < len {
            return Err(self.error(what, format!("needs {len} bytes, {} left", self.remaining())));
        }
        let slice = &self.data[self.offset..self.offset + len];
        self.offset += len;
        Ok(slice)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(what, 1)?[0])
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let bytes = self.take(what, 4)?;
        Ok(u32::from_le_bytes(bytes.try_into().expect("took 4 bytes")))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let bytes = self.take(what, 8)?;
        Ok(u64::from_le_bytes(bytes.try_into().expect("took 8 bytes")))
    }

    pub fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError { what, offset: self.offset - 1, problem: format!("bool byte {other}") }),
        }
    }

    /// A u32 length and that many bytes; the length is checked against what is present before
    /// anything is allocated.
    pub fn bytes(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.u32(what)? as usize;
        Ok(Bytes::copy_from_slice(self.take(what, len)?))
    }

    /// A count of items each at least `min_item_bytes` long; rejects counts the remaining input
    /// cannot possibly hold, so a corrupt count cannot trigger a huge allocation.
    pub fn count(&mut self, what: &'static str, min_item_bytes: usize) -> Result<usize, DecodeError> {
        let count = self.u32(what)? as usize;
        if count.saturating_mul(min_item_bytes.max(1)) > self.remaining() {
            return Err(self.error(what, format!("count {count} exceeds the {} bytes left", self.remaining())));
        }
        Ok(count)
    }

    pub fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        if self.remaining() != 0 {
            return Err(self.error(what, format!("{} trailing bytes", self.remaining())));
        }
        Ok(())
    }
}
