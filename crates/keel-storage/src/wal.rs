//! The write-ahead log: one per node, shared by every raft group on it.
//!
//! ## Layout
//! `wal/{seq:016x}.wal` segments, each preallocated to `segment_bytes` (so appends inside a
//! segment cannot fail for lack of space). A segment is a sequence of frames
//! (`[len][crc32c][payload]`, see keel-codec); the first is the segment header, the next batch is a
//! *checkpoint* of every group's hard state and snapshot marker, so any suffix of segments is
//! self-contained and old segments can be deleted once snapshots cover their entries.
//!
//! A covered segment is first *retired*: renamed to `{seq:016x}.wal.old`, kept for an operator
//! (etcd's `--max-wals` counts these too) but never read again. Recovery reads only the live
//! `.wal` suffix, so a restart reads what the snapshots do not cover, not every kept file.
//!
//! Frame payload: `[batch: u64][flags: u8][record]`. Every [`Wal::append`] call is one batch;
//! its last frame carries `END_OF_BATCH`. Batch numbers increase by one from batch to batch
//! across segments, which lets recovery tell a gap or a stale frame from a valid one.
//!
//! ## Recovery and corruption
//! Segments are read in order at disk speed. A frame that fails its checksum, is cut short, or
//! breaks the batch sequence is *corruption* at (file, offset). It is a **torn tail** — the crash
//! interrupted the last write, which was never acknowledged — when it lies in the last segment and
//! no valid frame of a later batch follows it: the tail is truncated (zeroed) with a warning.
//! Anything else — a bad frame before valid later batches, a bad frame in an older segment, a
//! missing segment — makes [`Wal::open`] fail with an error naming the file and offset, unless
//! [`WalOptions::repair`] is set, in which case the log is cut at the corruption (and the loss is
//! logged). Nothing is ever dropped silently.
//!
//! Known limit: bit rot inside the very last *synced* batch is indistinguishable from a torn
//! write and is truncated as one; the raft group re-replicates those entries from its peers.
//!
//! ## Full disk
//! Only segment creation allocates space. If it fails with ENOSPC, [`WalError::NoSpace`] is
//! returned, nothing is written, and the WAL stays consistent and readable; the next append retries.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use keel_codec::frame::{decode_frame, encode_frame, FrameError};
use keel_codec::record::Record;
use keel_codec::{Reader, Writer};
use keel_raft::{Entry, GroupId, HardState, Index, SnapshotMeta};
use thiserror::Error;

use crate::disk::{join, Disk, DiskFile};

const SEGMENT_MAGIC: &[u8; 8] = b"KEELWAL\0";
const SEGMENT_VERSION: u32 = 1;
const END_OF_BATCH: u8 = 1;
/// Log recovery progress every this many bytes.
const PROGRESS_EVERY_BYTES: u64 = 256 << 20;

#[derive(Debug, Error)]
pub enum WalError {
    #[error("WAL corrupt in {file} at byte {offset}: {detail} (start with the repair option to cut the log there)")]
    Corrupt { file: String, offset: u64, detail: String },
    #[error("WAL segment missing between {before} and {after} (start with the repair option to drop the segments after the gap)")]
    MissingSegment { before: String, after: String },
    #[error("no space left on the WAL's disk: {0}")]
    NoSpace(io::Error),
    #[error("WAL IO error on {file}: {source}")]
    Io { file: String, source: io::Error },
    #[error("WAL record of {bytes} bytes exceeds the limit of {limit}")]
    RecordTooLarge { bytes: usize, limit: usize },
}

fn io_error(file: &str, source: io::Error) -> WalError {
    if source.kind() == io::ErrorKind::StorageFull {
        return WalError::NoSpace(source);
    }
    WalError::Io { file: file.to_string(), source }
}

#[derive(Clone, Debug)]
pub struct WalOptions {
    pub dir: String,
    pub segment_bytes: u64,
    pub max_record_bytes: usize,
    /// Cut the log at mid-log corruption or a missing segment instead of refusing to start.
    pub repair: bool,
    /// Deliberate bugs for the simulator's tests (inert unless keel-raft is built with them).
    pub plants: keel_raft::Plants,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            dir: "wal".to_string(),
            segment_bytes: 64 << 20,
            max_record_bytes: 64 << 20,
            repair: false,
            plants: keel_raft::Plants::NONE,
        }
    }
}

/// What the WAL holds for one group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupLog {
    pub hard_state: HardState,
    pub snapshot: Option<SnapshotMeta>,
    /// Entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
    /// Set while the entries do not yet join the snapshot: recovery started in the middle of the
    /// group's log (older segments were removed) and a snapshot marker further on must cover the
    /// gap, or the WAL is corrupt.
    gap_after: Option<Index>,
}

impl GroupLog {
    pub fn snapshot_index(&self) -> Index {
        self.snapshot.as_ref().map_or(0, |s| s.index)
    }

    pub fn last_index(&self) -> Index {
        self.entries.last().map_or(self.snapshot_index(), |e| e.index)
    }

    /// The term of the entry at `index` (the snapshot's term at its index), if held.
    pub fn term(&self, index: Index) -> Option<u64> {
        let base = self.snapshot_index();
        if index == base {
            return Some(self.snapshot.as_ref().map_or(0, |s| s.term));
        }
        if index < base || self.has_gap() {
            return None;
        }
        self.entries.get((index - base - 1) as usize).map(|e| e.term)
    }

    /// Applies one record the way recovery does (public so that models of the disk, such as the
    /// simulator's oracle, share these semantics exactly).
    pub fn apply(&mut self, record: &Record) {
        match record {
            Record::HardState { hard_state, .. } => self.hard_state = *hard_state,
            Record::Snapshot { meta, replaces_log, .. } => {
                if *replaces_log {
                    self.entries.clear();
                    self.snapshot = Some(meta.clone());
                    self.gap_after = None;
                } else if meta.index > self.snapshot_index() {
                    self.entries.retain(|e| e.index > meta.index);
                    self.snapshot = Some(meta.clone());
                    if self.entries.first().is_none_or(|e| meta.index.checked_add(1) == Some(e.index)) {
                        self.gap_after = None;
                    }
                }
            }
            Record::Entries { entries, .. } => {
                // Entries a snapshot already covers are skipped.
                let base = self.snapshot_index();
                let entries: Vec<&Entry> = entries.iter().filter(|e| e.index > base).collect();
                let Some(first) = entries.first() else { return };
                if first.index > self.last_index().saturating_add(1) {
                    self.gap_after = Some(self.last_index());
                    self.entries.clear();
                } else {
                    self.entries.retain(|e| e.index < first.index);
                }
                self.entries.extend(entries.into_iter().cloned());
            }
        }
    }

    /// Whether the entries do not join the snapshot (see `gap_after`).
    pub fn has_gap(&self) -> bool {
        self.gap_after.is_some()
    }
}

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovery {
    pub groups: BTreeMap<GroupId, GroupLog>,
    pub segments: usize,
    pub records: u64,
    pub bytes: u64,
    /// (file, offset) of a torn tail that was truncated.
    pub torn_tail: Option<(String, u64)>,
    /// (file, offset) where the repair option cut the log.
    pub repaired_at: Option<(String, u64)>,
}

struct Segment {
    seq: u64,
    name: String,
    /// Highest entry index of each group in this segment: the segment may go once durable
    /// snapshots cover them all.
    max_index: BTreeMap<GroupId, Index>,
    /// Where its valid frames end (known for recovered segments; appends go there).
    end: u64,
}

pub struct Wal {
    disk: Arc<dyn Disk>,
    opts: WalOptions,
    segments: Vec<Segment>,
    active: Box<dyn DiskFile>,
    active_offset: u64,
    /// Where the active segment's first data batch starts (after header and checkpoint).
    active_start: u64,
    /// Bytes reserved in the active segment.
    active_allocated: u64,
    next_batch: u64,
    /// Set after a write error of unknown extent: no more appends until a restart.
    failed: Option<String>,
    /// Every group's hard state and snapshot marker: the checkpoint written into new segments.
    checkpoint: BTreeMap<GroupId, (HardState, Option<SnapshotMeta>)>,
    /// The checkpoint as of the last sync: only durable snapshot markers may make a segment
    /// obsolete (else a crash could lose both the marker and the entries it covered).
    durable_checkpoint: BTreeMap<GroupId, (HardState, Option<SnapshotMeta>)>,
    /// Bytes appended since the last sync (0 = nothing to sync).
    unsynced_bytes: u64,
    /// Retired segments (`.wal.old`), oldest first: covered by snapshots, kept only for the
    /// retention count, never read.
    retired: Vec<String>,
}

fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

fn retired_name(name: &str) -> String {
    format!("{name}.old")
}

fn parse_retired_name(name: &str) -> Option<u64> {
    parse_segment_name(name.strip_suffix(".old")?)
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".wal")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

fn encode_header(seq: u64) -> Vec<u8> {
    let mut w = Writer::new();
    w.buf.extend_from_slice(SEGMENT_MAGIC);
    w.u32(SEGMENT_VERSION).u64(seq);
    let mut out = Vec::new();
    encode_frame(&mut out, &w.into_vec());
    out
}

fn decode_header(data: &[u8]) -> Result<(u64, usize), String> {
    let (payload, next) = decode_frame(data, 0, 64).map_err(|e| e.to_string())?;
    if payload.len() != 20 || &payload[..8] != SEGMENT_MAGIC {
        return Err("not a keel WAL segment".to_string());
    }
    let mut r = Reader::new(&payload[8..]);
    let version = r.u32("segment version").map_err(|e| e.to_string())?;
    if version != SEGMENT_VERSION {
        return Err(format!("unsupported segment version {version}"));
    }
    Ok((r.u64("segment seq").map_err(|e| e.to_string())?, next))
}

/// Encodes records as one batch of frames.
fn encode_batch(batch: u64, records: &[Record], max_record_bytes: usize) -> Result<Vec<u8>, WalError> {
    let mut out = Vec::new();
    for (i, record) in records.iter().enumerate() {
        let mut w = Writer::new();
        w.u64(batch).u8(if i + 1 == records.len() { END_OF_BATCH } else { 0 });
        record.encode_into(&mut w);
        if w.len() > max_record_bytes {
            return Err(WalError::RecordTooLarge { bytes: w.len(), limit: max_record_bytes });
        }
        encode_frame(&mut out, &w.into_vec());
    }
    Ok(out)
}

/// One decoded frame: its batch, whether it ends the batch, and its record.
fn decode_payload(payload: &[u8]) -> Result<(u64, bool, Record), String> {
    let mut r = Reader::new(payload);
    let batch = r.u64("batch").map_err(|e| e.to_string())?;
    let flags = r.u8("flags").map_err(|e| e.to_string())?;
    let record = Record::decode(&payload[r.offset()..]).map_err(|e| e.to_string())?;
    Ok((batch, flags & END_OF_BATCH != 0, record))
}

/// Where a segment's frames lie, read the way recovery reads them: for tools that damage durable
/// bytes on purpose (the simulator's bit rot) and must know which bytes recovery can tell apart
/// from a torn write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentLayout {
    /// The first byte after the segment header.
    pub body: usize,
    /// Where the last batch whose every frame is valid starts, if there is one.
    pub last_complete_batch: Option<usize>,
    /// Where the valid frames end.
    pub end: usize,
}

/// The layout of the segment `data` (`None` if its header is not valid).
pub fn segment_layout(data: &[u8], max_record_bytes: usize) -> Option<SegmentLayout> {
    let (_, body) = decode_header(data).ok()?;
    let (mut end, mut batch_start, mut last_complete_batch) = (body, body, None);
    while let Ok((payload, next)) = decode_frame(data, end, max_record_bytes) {
        let Ok((_, ended, _)) = decode_payload(payload) else { break };
        if ended {
            last_complete_batch = Some(batch_start);
            batch_start = next;
        }
        end = next;
    }
    Some(SegmentLayout { body, last_complete_batch, end })
}

/// Whether `name` is a live segment (read at recovery), not a retired one or another file.
pub fn is_live_segment(name: &str) -> bool {
    parse_segment_name(name).is_some()
}

/// The batch sequence as recovery sees it: the last complete batch.
#[derive(Clone, Copy, Debug)]
struct BatchCursor {
    last: Option<u64>,
}

/// A batch whose frames are being read.
struct OpenBatch {
    number: u64,
    /// Offset of its first frame: where a torn batch is cut.
    start: usize,
    records: Vec<(usize, Record)>,
}

/// Applies a complete batch to the recovered groups.
fn apply_batch(
    batch: OpenBatch,
    path: &str,
    segment: &mut Segment,
    recovery: &mut Recovery,
    gap_at: &mut BTreeMap<GroupId, (String, u64)>,
) {
    for (offset, record) in batch.records {
        let group = record.group();
        let log = recovery.groups.entry(group).or_default();
        let had_gap = log.has_gap();
        log.apply(&record);
        if log.has_gap() && !had_gap {
            gap_at.insert(group, (path.to_string(), offset as u64));
        }
        if let Record::Entries { entries, .. } = &record {
            if let Some(last) = entries.last() {
                segment.max_index.insert(group, last.index);
            }
        }
        recovery.records += 1;
    }
}

impl Wal {
    /// Opens (or creates) the WAL and recovers every group's log from it.
    pub fn open(disk: Arc<dyn Disk>, opts: WalOptions) -> Result<(Wal, Recovery), WalError> {
        disk.create_dir_all(&opts.dir).map_err(|e| io_error(&opts.dir, e))?;
        let names = disk.list(&opts.dir).map_err(|e| io_error(&opts.dir, e))?;
        let mut seqs: Vec<(u64, String)> =
            names.iter().filter_map(|n| parse_segment_name(n).map(|s| (s, n.clone()))).collect();
        seqs.sort();
        let mut retired: Vec<(u64, String)> =
            names.iter().filter_map(|n| parse_retired_name(n).map(|s| (s, n.clone()))).collect();
        retired.sort();
        let mut recovery = Recovery::default();
        let mut segments = Vec::new();
        let mut cursor = BatchCursor { last: None };
        let mut cut = false;
        let mut gap_at: BTreeMap<GroupId, (String, u64)> = BTreeMap::new();
        for (position, (seq, name)) in seqs.iter().enumerate() {
            let path = join(&opts.dir, name);
            if cut {
                tracing::warn!(file = %path, "repair: removing a segment after the cut");
                disk.remove(&path).map_err(|e| io_error(&path, e))?;
                continue;
            }
            if let Some(prev) = segments.last() {
                let prev: &Segment = prev;
                if prev.seq.checked_add(1) != Some(*seq) {
                    if !opts.repair {
                        return Err(WalError::MissingSegment { before: prev.name.clone(), after: name.clone() });
                    }
                    tracing::warn!(before = %prev.name, after = %name, "repair: cutting the WAL at a missing segment");
                    recovery.repaired_at = Some((path.clone(), 0));
                    cut = true;
                    disk.remove(&path).map_err(|e| io_error(&path, e))?;
                    continue;
                }
            }
            let is_last = position + 1 == seqs.len();
            let outcome =
                Self::recover_segment(&*disk, &opts, &path, *seq, is_last, &mut cursor, &mut recovery, &mut gap_at)?;
            match outcome {
                SegmentOutcome::Kept(segment) => segments.push(Segment { name: name.clone(), ..segment }),
                SegmentOutcome::Discarded => {}
                SegmentOutcome::Cut(segment) => {
                    segments.push(Segment { name: name.clone(), ..segment });
                    cut = true;
                }
            }
        }
        if cut {
            disk.sync_dir(&opts.dir).map_err(|e| io_error(&opts.dir, e))?;
        }
        for (group, log) in recovery.groups.iter_mut() {
            if let Some(after) = log.gap_after {
                let (file, offset) = gap_at.get(group).cloned().unwrap_or_default();
                if !opts.repair {
                    return Err(WalError::Corrupt {
                        file,
                        offset,
                        detail: format!(
                            "group {group}: entries from {} do not follow index {after}",
                            log.entries.first().map_or(0, |e| e.index)
                        ),
                    });
                }
                tracing::warn!(group, %file, offset, "repair: dropping entries that follow a gap");
                log.entries.clear();
                log.gap_after = None;
            }
        }
        let next_batch = cursor.last.map_or(1, |batch| batch.saturating_add(1));
        let checkpoint: BTreeMap<GroupId, (HardState, Option<SnapshotMeta>)> =
            recovery.groups.iter().map(|(g, log)| (*g, (log.hard_state, log.snapshot.clone()))).collect();
        let next_seq = segments.last().map_or(1, |s| s.seq.saturating_add(1));
        let (active, active_offset, segments) = match segments.pop() {
            Some(last) => {
                let path = join(&opts.dir, &last.name);
                let file = disk.open(&path, false).map_err(|e| io_error(&path, e))?;
                let end = last.end;
                segments.push(last);
                (file, end, segments)
            }
            None => {
                let placeholder: Box<dyn DiskFile> = Box::new(NoFile);
                (placeholder, 0, segments)
            }
        };
        let active_allocated = active.len().unwrap_or(0).max(active_offset);
        let mut wal = Wal {
            disk,
            opts,
            segments,
            active,
            active_offset,
            // A recovered segment may roll at the first append that does not fit.
            active_start: (encode_header(0).len() as u64).min(active_offset),
            active_allocated,
            next_batch,
            failed: None,
            durable_checkpoint: checkpoint.clone(),
            checkpoint,
            unsynced_bytes: 0,
            retired: retired.into_iter().map(|(_, name)| name).collect(),
        };
        if wal.segments.is_empty() {
            wal.roll(next_seq)?;
        }
        recovery.segments = wal.segments.len();
        Ok((wal, recovery))
    }

    #[allow(clippy::too_many_arguments)]
    fn recover_segment(
        disk: &dyn Disk,
        opts: &WalOptions,
        path: &str,
        seq: u64,
        is_last: bool,
        cursor: &mut BatchCursor,
        recovery: &mut Recovery,
        gap_at: &mut BTreeMap<GroupId, (String, u64)>,
    ) -> Result<SegmentOutcome, WalError> {
        let mut file = disk.open(path, false).map_err(|e| io_error(path, e))?;
        let mut data = SegmentBytes::new(&*file, opts.max_record_bytes).map_err(|e| io_error(path, e))?;
        data.ensure_frame(0).map_err(|e| io_error(path, e))?;
        let start = match decode_header(&data.bytes) {
            Ok((header_seq, next)) if header_seq == seq => next,
            Ok((header_seq, _)) => {
                return Err(WalError::Corrupt {
                    file: path.to_string(),
                    offset: 0,
                    detail: format!("header says segment {header_seq}"),
                })
            }
            Err(detail)
                if is_last && {
                    data.read_rest().map_err(|e| io_error(path, e))?;
                    find_later_batch(&data.bytes, 1, 0, opts.max_record_bytes).is_none()
                } =>
            {
                // The crash hit while the segment was being created (its header and checkpoint are
                // synced before any batch goes in): nothing in it was acknowledged. If valid
                // frames follow a bad header, it is corruption, handled below.
                tracing::warn!(file = %path, %detail, "discarding a WAL segment whose creation was interrupted");
                disk.remove(path).map_err(|e| io_error(path, e))?;
                return Ok(SegmentOutcome::Discarded);
            }
            Err(detail) => return Err(WalError::Corrupt { file: path.to_string(), offset: 0, detail }),
        };
        let mut segment = Segment { seq, name: String::new(), max_index: BTreeMap::new(), end: 0 };
        let mut offset = start;
        let mut progress_mark = recovery.bytes;
        // The batch being read: applied only once its last frame is seen, so that a batch the
        // crash cut short leaves no trace (none of it was acknowledged).
        let mut open: Option<OpenBatch> = None;
        loop {
            data.ensure_frame(offset).map_err(|e| io_error(path, e))?;
            let problem = match decode_frame(&data.bytes, offset, opts.max_record_bytes) {
                Err(FrameError::End) => match &open {
                    None => {
                        segment.end = offset as u64;
                        break;
                    }
                    Some(_) => "the log ends in the middle of a batch".to_string(),
                },
                Err(error) => error.to_string(),
                Ok((payload, next)) => match decode_payload(payload) {
                    Err(detail) => detail,
                    Ok((batch, ended, record)) => {
                        let expected = match &open {
                            Some(batch) => Some(batch.number),
                            None => cursor.last.map(|last| last.saturating_add(1)),
                        };
                        match expected {
                            Some(expected) if batch != expected => {
                                format!("frame of batch {batch} where batch {expected} was expected")
                            }
                            _ => {
                                let current = open.get_or_insert_with(|| OpenBatch {
                                    number: batch,
                                    start: offset,
                                    records: Vec::new(),
                                });
                                current.records.push((offset, record));
                                recovery.bytes += (next - offset) as u64;
                                offset = next;
                                if ended {
                                    let complete = open.take().expect("just inserted");
                                    apply_batch(complete, path, &mut segment, recovery, gap_at);
                                    cursor.last = Some(batch);
                                }
                                if recovery.bytes - progress_mark >= PROGRESS_EVERY_BYTES {
                                    progress_mark = recovery.bytes;
                                    tracing::info!(file = %path, bytes = recovery.bytes, records = recovery.records, "WAL recovery in progress");
                                }
                                continue;
                            }
                        }
                    }
                },
            };
            // Corruption: the frame at `offset` is bad, or the batch that started at `cut` ends badly.
            // Deciding between a torn tail and lost data needs the rest of the file.
            data.read_rest().map_err(|e| io_error(path, e))?;
            let data = &data.into_bytes();
            let cut = open.as_ref().map_or(offset, |batch| batch.start);
            segment.end = cut as u64;
            let open_batch = open
                .as_ref()
                .map_or_else(|| cursor.last.map_or(0, |last| last.saturating_add(1)), |batch| batch.number);
            let later_batch = find_later_batch(data, offset + 1, open_batch, opts.max_record_bytes);
            let torn_anywhere = opts.plants.is(keel_raft::Plant::TornTailAnywhere);
            if is_last && (later_batch.is_none() || torn_anywhere) {
                tracing::warn!(file = %path, offset = cut, %problem, "truncating a torn WAL tail (a write the crash interrupted)");
                truncate_segment(&mut *file, data, cut, path)?;
                recovery.torn_tail = Some((path.to_string(), cut as u64));
                return Ok(SegmentOutcome::Kept(segment));
            }
            if opts.repair {
                tracing::warn!(file = %path, offset = cut, %problem, "repair: cutting the WAL at mid-log corruption; later records are discarded");
                truncate_segment(&mut *file, data, cut, path)?;
                recovery.repaired_at = Some((path.to_string(), cut as u64));
                return Ok(SegmentOutcome::Cut(segment));
            }
            let detail = match later_batch {
                Some(batch) => format!(
                    "{problem}; valid records of later batch {batch} follow, so acknowledged data would be lost"
                ),
                None => format!("{problem}; later segments follow"),
            };
            return Err(WalError::Corrupt { file: path.to_string(), offset: offset as u64, detail });
        }
        Ok(SegmentOutcome::Kept(segment))
    }

    /// Appends one batch of records; they are durable only after [`Wal::sync`].
    ///
    /// Space is reserved before anything is written, so a full disk fails the call cleanly
    /// ([`WalError::NoSpace`], nothing written, retry later). Any other write error leaves the
    /// segment in an unknown state: the WAL refuses further appends until the node restarts and
    /// recovery decides what is on disk.
    pub fn append(&mut self, records: &[Record]) -> Result<(), WalError> {
        if let Some(reason) = &self.failed {
            return Err(WalError::Io { file: self.active_path(), source: io::Error::other(reason.clone()) });
        }
        if records.is_empty() {
            return Ok(());
        }
        let mut bytes = encode_batch(self.next_batch, records, self.opts.max_record_bytes)?;
        if self.active_offset + bytes.len() as u64 > self.opts.segment_bytes && self.active_offset > self.active_start {
            let next = self.segments.last().map_or(1, |s| s.seq.saturating_add(1));
            self.roll(next)?;
            bytes = encode_batch(self.next_batch, records, self.opts.max_record_bytes)?;
        }
        let end = self.active_offset + bytes.len() as u64;
        if end > self.active_allocated {
            // Only a batch larger than a whole segment gets here.
            let path = self.active_path();
            self.active.allocate(end).map_err(|e| io_error(&path, e))?;
            self.active_allocated = end;
        }
        if let Err(error) = self.active.write_all_at(self.active_offset, &bytes) {
            self.failed = Some(format!("an earlier write failed: {error}"));
            return Err(io_error(&self.active_path(), error));
        }
        self.next_batch += 1;
        self.active_offset = end;
        self.unsynced_bytes += bytes.len() as u64;
        self.note_records(records);
        Ok(())
    }

    fn active_path(&self) -> String {
        self.segments.last().map(|s| join(&self.opts.dir, &s.name)).unwrap_or_default()
    }

    /// Bookkeeping of what the appended records mean for checkpoints and segment removal.
    fn note_records(&mut self, records: &[Record]) {
        for record in records {
            let group = record.group();
            match record {
                Record::Entries { entries, .. } => {
                    if let Some(last) = entries.last() {
                        let segment = self.segments.last_mut().expect("an active segment exists");
                        segment.max_index.insert(group, last.index);
                    }
                }
                Record::HardState { hard_state, .. } => {
                    self.checkpoint.entry(group).or_default().0 = *hard_state;
                }
                Record::Snapshot { meta, replaces_log, .. } => {
                    let entry = self.checkpoint.entry(group).or_default();
                    if *replaces_log || entry.1.as_ref().is_none_or(|s| s.index < meta.index) {
                        entry.1 = Some(meta.clone());
                    }
                }
            }
        }
    }

    /// Makes everything appended so far durable (one fdatasync for every group's records).
    pub fn sync(&mut self) -> Result<(), WalError> {
        if let Some(reason) = &self.failed {
            return Err(WalError::Io { file: self.active_path(), source: io::Error::other(reason.clone()) });
        }
        if self.unsynced_bytes == 0 {
            return Ok(());
        }
        let name = self.segments.last().map(|s| join(&self.opts.dir, &s.name)).unwrap_or_default();
        if let Err(error) = self.active.sync_data() {
            // After a failed fsync the kernel may have dropped the dirty pages and report the
            // next fsync as a success: nothing written since the last good sync can be trusted.
            self.failed = Some(format!("an fsync failed: {error}"));
            return Err(io_error(&name, error));
        }
        self.unsynced_bytes = 0;
        self.durable_checkpoint = self.checkpoint.clone();
        Ok(())
    }

    /// Starts segment `seq`: create, preallocate, header, checkpoint, sync file and directory.
    fn roll(&mut self, seq: u64) -> Result<(), WalError> {
        self.sync()?; // the old segment's tail must be durable before anything lands after it
        let name = segment_name(seq);
        let path = join(&self.opts.dir, &name);
        let mut file = self.disk.open(&path, true).map_err(|e| io_error(&path, e))?;
        if let Err(error) = file.allocate(self.opts.segment_bytes) {
            let _ = self.disk.remove(&path);
            return Err(io_error(&path, error));
        }
        let mut bytes = encode_header(seq);
        let checkpoint: Vec<Record> = self
            .checkpoint
            .iter()
            .flat_map(|(&group, (hard_state, snapshot))| {
                let snapshot = snapshot.clone().map(|meta| Record::Snapshot { group, meta, replaces_log: false });
                snapshot.into_iter().chain(std::iter::once(Record::HardState { group, hard_state: *hard_state }))
            })
            .collect();
        if !checkpoint.is_empty() {
            bytes.extend(encode_batch(self.next_batch, &checkpoint, self.opts.max_record_bytes)?);
        }
        file.write_all_at(0, &bytes).map_err(|e| io_error(&path, e))?;
        file.sync_data().map_err(|e| io_error(&path, e))?;
        self.disk.sync_dir(&self.opts.dir).map_err(|e| io_error(&self.opts.dir, e))?;
        if !checkpoint.is_empty() {
            self.next_batch += 1;
        }
        self.segments.push(Segment { seq, name, max_index: BTreeMap::new(), end: 0 });
        self.active = file;
        self.active_offset = bytes.len() as u64;
        self.active_start = self.active_offset;
        self.active_allocated = self.opts.segment_bytes.max(self.active_offset);
        tracing::debug!(file = %path, "started WAL segment");
        Ok(())
    }

    /// Deletes the oldest segments whose entries durable snapshots cover. Recovery then starts in
    /// the middle of a group's log; the snapshot marker (in a later segment, or repeated in the
    /// checkpoint at the start of one) closes the gap.
    pub fn remove_obsolete_segments(&mut self) -> Result<usize, WalError> {
        self.remove_obsolete_segments_keeping(1)
    }

    /// Like [`Wal::remove_obsolete_segments`], but keeps at least `keep` segments (etcd's
    /// `--max-wals`: old segments help an operator look back; 0 or 1 keeps only what is needed).
    ///
    /// Every covered segment but the active one is retired (renamed, never read again); then
    /// the oldest retired ones are deleted while more than `keep` WAL files remain in all.
    /// Returns how many were deleted.
    pub fn remove_obsolete_segments_keeping(&mut self, keep: usize) -> Result<usize, WalError> {
        while self.segments.len() > 1 {
            let oldest = &self.segments[0];
            let covered = oldest.max_index.iter().all(|(group, max)| {
                self.durable_checkpoint
                    .get(group)
                    .and_then(|(_, snapshot)| snapshot.as_ref())
                    .is_some_and(|s| s.index >= *max)
            });
            if !covered {
                break;
            }
            let path = join(&self.opts.dir, &oldest.name);
            let retired = retired_name(&oldest.name);
            self.disk.rename(&path, &join(&self.opts.dir, &retired)).map_err(|e| io_error(&path, e))?;
            // One segment at a time, oldest first, each rename made durable: a crash must leave
            // a contiguous run of live segments, never a hole.
            self.disk.sync_dir(&self.opts.dir).map_err(|e| io_error(&self.opts.dir, e))?;
            self.segments.remove(0);
            self.retired.push(retired);
        }
        let mut removed = 0;
        while !self.retired.is_empty() && self.segments.len() + self.retired.len() > keep.max(1) {
            let path = join(&self.opts.dir, &self.retired.remove(0));
            self.disk.remove(&path).map_err(|e| io_error(&path, e))?;
            removed += 1;
        }
        if removed > 0 {
            self.disk.sync_dir(&self.opts.dir).map_err(|e| io_error(&self.opts.dir, e))?;
        }
        Ok(removed)
    }

    /// Retired segments kept for the retention count.
    pub fn retired_count(&self) -> usize {
        self.retired.len()
    }

    /// The active segment and the offset the next batch will be written at.
    pub fn position(&self) -> (String, u64) {
        (self.active_path(), self.active_offset)
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

enum SegmentOutcome {
    Kept(Segment),
    Discarded,
    /// Kept up to a repair cut; later segments are removed.
    Cut(Segment),
}

/// A segment's bytes, read from the start only as far as recovery asks. Segments are
/// preallocated (64 MiB by default) and the live one is mostly zeros: reading it whole cost a
/// restart a page fault per 4 KiB of zeros (about 250 ms per 64 MiB here), beside the store's
/// threads. Frames are read as they are decoded; only a corruption needs the rest of the file
/// (to tell a torn tail from lost data).
struct SegmentBytes<'a> {
    file: &'a dyn DiskFile,
    len: usize,
    max_record_bytes: usize,
    bytes: Vec<u8>,
}

/// Bytes read per step beyond what the next frame needs.
const SEGMENT_READ_CHUNK: usize = 1 << 20;

impl<'a> SegmentBytes<'a> {
    fn new(file: &'a dyn DiskFile, max_record_bytes: usize) -> io::Result<Self> {
        let len = usize::try_from(file.len()?).map_err(|_| io::Error::other("file too large"))?;
        Ok(SegmentBytes { file, len, max_record_bytes, bytes: Vec::new() })
    }

    /// Reads on until the frame at `offset` (as its header describes it) is in memory, or the
    /// file ends. The frame's checksum is left to the decoder.
    fn ensure_frame(&mut self, offset: usize) -> io::Result<()> {
        let header_end = offset.saturating_add(keel_codec::frame::FRAME_HEADER_BYTES);
        self.read_to(header_end)?;
        if header_end > self.bytes.len() {
            return Ok(());
        }
        let len = u32::from_le_bytes(self.bytes[offset..offset + 4].try_into().expect("4 bytes")) as usize;
        if len <= self.max_record_bytes {
            self.read_to(header_end + len)?;
        }
        Ok(())
    }

    fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The whole file.
    fn read_rest(&mut self) -> io::Result<()> {
        self.read_to(self.len)
    }

    /// Holds at least `end` bytes (or the whole file), reading in steps of at least
    /// [`SEGMENT_READ_CHUNK`].
    fn read_to(&mut self, end: usize) -> io::Result<()> {
        let have = self.bytes.len();
        if end <= have || have >= self.len {
            return Ok(());
        }
        let target = end.max(have + SEGMENT_READ_CHUNK).min(self.len);
        self.bytes.resize(target, 0);
        self.file.read_exact_at(have as u64, &mut self.bytes[have..])
    }
}

/// Looks for a valid frame after a corruption whose batch is later than the open one: proof
/// that data written (and maybe acknowledged) after the corruption exists.
fn find_later_batch(data: &[u8], from: usize, open_batch: u64, max_record_bytes: usize) -> Option<u64> {
    let mut offset = from;
    while offset + keel_codec::frame::FRAME_HEADER_BYTES <= data.len() {
        if let Ok((payload, _)) = decode_frame(data, offset, max_record_bytes) {
            if let Ok((batch, _, _)) = decode_payload(payload) {
                if batch > open_batch {
                    return Some(batch);
                }
            }
        }
        offset += 1;
    }
    None
}

/// Zeroes a segment from `offset` to its last non-zero byte, durably, so leftovers of the torn
/// write can never be read back as records after new ones are appended.
fn truncate_segment(file: &mut dyn DiskFile, data: &[u8], offset: usize, path: &str) -> Result<(), WalError> {
    let last_nonzero = data.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    if last_nonzero > offset {
        file.write_all_at(offset as u64, &vec![0u8; last_nonzero - offset]).map_err(|e| io_error(path, e))?;
        file.sync_data().map_err(|e| io_error(path, e))?;
    }
    Ok(())
}

/// Stands in for the active file until the first segment is created in `open`.
struct NoFile;

impl DiskFile for NoFile {
    fn len(&self) -> io::Result<u64> {
        Ok(0)
    }
    fn read_exact_at(&self, _: u64, _: &mut [u8]) -> io::Result<()> {
        Err(io::Error::other("no active segment"))
    }
    fn write_all_at(&mut self, _: u64, _: &[u8]) -> io::Result<()> {
        Err(io::Error::other("no active segment"))
    }
    fn allocate(&mut self, _: u64) -> io::Result<()> {
        Err(io::Error::other("no active segment"))
    }
    fn sync_data(&mut self) -> io::Result<()> {
        Ok(())
    }
}
