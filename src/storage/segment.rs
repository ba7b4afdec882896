//! One segment: `<base>.log` plus its indexes. In-memory metadata is updated synchronously
//! by `append`; the file is written only by the log's flusher task (single writer), through
//! O_DIRECT: the last partial aligned block is kept in memory and rewritten, zero padded,
//! together with the next pending data.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;

use super::disk::{Disk, DiskFile, OpenMode, read_small_file, write_small_file};
use super::index::{OffsetIndex, SegmentSummary, TimeIndex};
use super::staging::{self, MAX_IO_BYTES, STAGING_UNIT};
use super::{ReadBatches, StorageError};
use crate::protocol::record_batch::{BATCH_HEADER_LEN, BatchError, BatchHeader, scan_batches};

/// Default read window when scanning a segment file.
pub(crate) const SCAN_WINDOW: usize = 1 << 20;

/// Metadata of a segment, maintained at append time (covers unflushed batches too).
#[derive(Debug)]
pub(crate) struct SegmentMeta {
    /// Logical size: bytes of whole batches assigned to this segment.
    pub size: u64,
    /// Offset after the last batch.
    pub next_offset: i64,
    pub max_timestamp: i64,
    pub created_ms: i64,
    pub offset_index: OffsetIndex,
    pub time_index: TimeIndex,
    pub bytes_since_index: u64,
}

impl SegmentMeta {
    pub fn new(base_offset: i64, created_ms: i64) -> Self {
        SegmentMeta {
            size: 0,
            next_offset: base_offset,
            max_timestamp: -1,
            created_ms,
            offset_index: OffsetIndex::default(),
            time_index: TimeIndex::default(),
            bytes_since_index: 0,
        }
    }

    /// Records a batch placed at `pos` (== `self.size`) in the segment of `seg_base`.
    pub fn on_batch(&mut self, seg_base: i64, h: BatchFacts, pos: u64, interval: u32) {
        let rel = (h.base_offset - seg_base) as u32;
        self.max_timestamp = self.max_timestamp.max(h.max_timestamp);
        if self.bytes_since_index >= u64::from(interval) && pos <= u64::from(u32::MAX) {
            self.offset_index.push(rel, pos as u32);
            self.time_index.maybe_push(self.max_timestamp, rel);
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += h.len;
        self.size = pos + h.len;
        self.next_offset = h.last_offset + 1;
    }

    pub fn summary(&self) -> SegmentSummary {
        SegmentSummary {
            log_size: self.size,
            next_offset: self.next_offset,
            max_timestamp: self.max_timestamp,
        }
    }
}

/// What segment metadata needs to know about one batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchFacts {
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    pub len: u64,
}

impl BatchFacts {
    pub fn of(h: &BatchHeader, len: usize) -> Self {
        BatchFacts {
            base_offset: h.base_offset(),
            last_offset: h.last_offset(),
            max_timestamp: h.max_timestamp.get(),
            len: len as u64,
        }
    }
}

/// State owned by the flusher (and recovery).
#[derive(Debug, Default)]
pub(crate) struct WriterState {
    /// Bytes of this segment on disk (not counting zero padding).
    pub flushed_size: u64,
    /// Copy of the bytes of the last partial aligned block, `[align_down(flushed), flushed)`.
    pub tail_block: Vec<u8>,
    /// Sealed: file truncated to its logical size and indexes persisted.
    pub sealed: bool,
}

pub(crate) struct Segment {
    pub base_offset: i64,
    disk: Rc<dyn Disk>,
    dir: PathBuf,
    pub file: RefCell<Option<Rc<dyn DiskFile>>>,
    pub meta: RefCell<SegmentMeta>,
    pub writer: RefCell<WriterState>,
}

pub(crate) fn segment_path(dir: &Path, base_offset: i64, ext: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}.{ext}"))
}

impl Segment {
    pub fn new(disk: &Rc<dyn Disk>, dir: &Path, base_offset: i64, created_ms: i64) -> Self {
        Segment {
            base_offset,
            disk: disk.clone(),
            dir: dir.to_path_buf(),
            file: RefCell::new(None),
            meta: RefCell::new(SegmentMeta::new(base_offset, created_ms)),
            writer: RefCell::new(WriterState::default()),
        }
    }

    pub fn path(&self, ext: &str) -> PathBuf {
        segment_path(&self.dir, self.base_offset, ext)
    }

    pub fn file(&self) -> Option<Rc<dyn DiskFile>> {
        self.file.borrow().clone()
    }

    /// Opens the segment's file, creating it (empty) if needed. A new file's directory
    /// entry is made durable at once: its data is fdatasync'ed and acknowledged next, and
    /// fdatasync does not persist the name (a power loss would lose the whole segment).
    pub async fn ensure_file(&self) -> Result<Rc<dyn DiskFile>, StorageError> {
        if let Some(f) = self.file() {
            return Ok(f);
        }
        let path = self.path("log");
        let created = !self.disk.exists(&path);
        let f = self.disk.open(&path, OpenMode::ReadWrite).await?;
        if created {
            // Once per segment (a roll): a blocking metadata call is fine.
            self.disk.sync_dir(&self.dir)?;
        }
        *self.file.borrow_mut() = Some(f.clone());
        Ok(f)
    }

    /// Appends `data` after the flushed bytes: one aligned DMA write starting at the last
    /// partial block. Returns the file (to fdatasync).
    pub async fn write(&self, data: &[Bytes]) -> Result<Rc<dyn DiskFile>, StorageError> {
        let file = self.ensure_file().await?;
        let (flushed, tail) = {
            let w = self.writer.borrow();
            (w.flushed_size, w.tail_block.clone())
        };
        let start = file.align_down(flushed);
        let sources: Vec<&[u8]> = std::iter::once(&tail[..])
            .chain(data.iter().map(|d| &d[..]))
            .collect();
        let total: usize = sources.iter().map(|s| s.len()).sum();
        // Padded to at least STAGING_UNIT so the pieces come in few lengths (reusable).
        let unit = STAGING_UNIT.max(file.alignment() as usize);
        let padded = total.next_multiple_of(unit);
        let new_flushed = start + total as u64;
        let new_tail = last_bytes(
            &sources,
            (new_flushed - file.align_down(new_flushed)) as usize,
        );
        // A few DMA writes, issued together: pieces of at most MAX_IO_BYTES keep each
        // request within the device's max_sectors (larger ones hang some kernels), and
        // their few lengths let the staging buffers be reused. Reused buffers hold stale
        // bytes: only the zero padding after the data is cleared.
        let mut cursor = SliceCursor {
            srcs: &sources,
            i: 0,
            at: 0,
        };
        let mut writes = Vec::new();
        let mut off = 0;
        for n in staging::write_pieces(padded, unit) {
            let mut buf = file.alloc_buffer(n);
            let filled = cursor.fill(buf.as_bytes_mut());
            buf.as_bytes_mut()[filled..].fill(0);
            writes.push(file.write_at(buf, start + off as u64));
            off += n;
        }
        let written: usize = futures::future::try_join_all(writes)
            .await?
            .into_iter()
            .sum();
        if written < padded {
            return Err(StorageError::Io(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("short DMA write: {written} of {padded} bytes"),
            )));
        }
        let mut w = self.writer.borrow_mut();
        w.flushed_size = new_flushed;
        w.tail_block = new_tail;
        Ok(file)
    }

    /// Makes the on-disk state final: truncates the zero padding and persists the indexes.
    /// Used when the segment is rolled and, for the active segment, on close.
    pub async fn seal(&self) -> Result<(), StorageError> {
        let Some(file) = self.file() else {
            return Ok(()); // never written: nothing on disk to finalize
        };
        let size = self.writer.borrow().flushed_size;
        file.truncate(size).await?;
        file.fdatasync().await?;
        self.persist_indexes().await?;
        self.writer.borrow_mut().sealed = true;
        Ok(())
    }

    pub async fn persist_indexes(&self) -> Result<(), StorageError> {
        let (oi, ti) = {
            let m = self.meta.borrow();
            let s = m.summary();
            (m.offset_index.encode(s), m.time_index.encode(s))
        };
        write_small_file(&*self.disk, &self.path("index"), &oi).await?;
        write_small_file(&*self.disk, &self.path("timeindex"), &ti).await?;
        Ok(())
    }

    /// Loads persisted indexes if both exist and agree with a log file of `file_size`.
    pub async fn load_indexes(
        &self,
        file_size: u64,
    ) -> Option<(OffsetIndex, TimeIndex, SegmentSummary)> {
        let disk = &*self.disk;
        let (oi, s1) = OffsetIndex::decode(&read_small_file(disk, &self.path("index")).await?)?;
        let (ti, s2) = TimeIndex::decode(&read_small_file(disk, &self.path("timeindex")).await?)?;
        let consistent = s1 == s2 && s1.log_size <= file_size && s1.next_offset >= self.base_offset;
        consistent.then_some((oi, ti, s1))
    }

    /// For a truncation at `offset` (at or above the base): the metadata of the batches
    /// that stay, and the position and base offset of the first batch to remove (the one
    /// holding `offset`). Scans the file up to it unless `offset` is the base.
    pub async fn scan_to_cut(
        &self,
        file: &dyn DiskFile,
        offset: i64,
        index_interval: u32,
    ) -> Result<(SegmentMeta, u64, i64), StorageError> {
        let base = self.base_offset;
        let mut meta = SegmentMeta::new(base, self.meta.borrow().created_ms);
        if offset == base {
            return Ok((meta, 0, offset));
        }
        let limit = self.writer.borrow().flushed_size;
        let mut cut = None;
        for_each_batch(file, 0, limit, false, SCAN_WINDOW, |pos, h, _| {
            if h.last_offset() >= offset {
                cut = Some((pos, h.base_offset()));
                return false;
            }
            let len = h.total_len().unwrap_or(0);
            meta.on_batch(base, BatchFacts::of(h, len), pos, index_interval);
            true
        })
        .await?;
        let Some((pos, end)) = cut else {
            return Err(StorageError::Corrupt(format!(
                "{:?}: no batch at offset {offset} to truncate",
                self.path("log")
            )));
        };
        Ok((meta, pos, end))
    }

    /// Deletes the segment's files (the open descriptor keeps in-flight reads working).
    pub fn delete_files(&self) -> Result<(), StorageError> {
        self.delete(&["log", "index", "timeindex"])
    }

    /// Deletes the persisted indexes: they no longer describe a segment that is written to
    /// again (the active segment after a reopen or a truncation). Returns whether a file was
    /// removed (the caller makes the directory durable).
    pub fn delete_index_files(&self) -> Result<bool, StorageError> {
        let existed =
            self.disk.exists(&self.path("index")) || self.disk.exists(&self.path("timeindex"));
        self.delete(&["index", "timeindex"])?;
        Ok(existed)
    }

    fn delete(&self, exts: &[&str]) -> Result<(), StorageError> {
        for ext in exts {
            match self.disk.remove_file(&self.path(ext)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    }
}

/// Copies successive slices into successive destination buffers.
struct SliceCursor<'a> {
    srcs: &'a [&'a [u8]],
    i: usize,
    at: usize,
}

impl SliceCursor<'_> {
    /// Fills `dst` from the remaining source bytes; returns how many were copied.
    fn fill(&mut self, dst: &mut [u8]) -> usize {
        let mut n = 0;
        while n < dst.len() && self.i < self.srcs.len() {
            let src = &self.srcs[self.i][self.at..];
            let k = src.len().min(dst.len() - n);
            dst[n..n + k].copy_from_slice(&src[..k]);
            n += k;
            self.at += k;
            if self.at == self.srcs[self.i].len() {
                self.i += 1;
                self.at = 0;
            }
        }
        n
    }
}

/// The last `n` bytes of the concatenation of `srcs` (fewer if it is shorter).
fn last_bytes(srcs: &[&[u8]], n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    for s in srcs.iter().rev() {
        let need = n - out.len();
        if need == 0 {
            break;
        }
        let k = need.min(s.len());
        let mut piece = s[s.len() - k..].to_vec();
        piece.extend_from_slice(&out);
        out = piece;
    }
    out
}

/// Reads `[pos, pos + len)` in requests of at most [`MAX_IO_BYTES`]; shorter at EOF.
async fn read_chunked(file: &dyn DiskFile, pos: u64, len: usize) -> Result<Bytes, StorageError> {
    let mut out = bytes::BytesMut::with_capacity(len);
    while out.len() < len {
        let n = MAX_IO_BYTES.min(len - out.len());
        let rr = file.read_at(pos + out.len() as u64, n).await?;
        let got = rr.len().min(n);
        out.extend_from_slice(&rr[..got]);
        if got < n {
            break;
        }
    }
    Ok(out.freeze())
}

/// Calls `f(position, header, whole batch)` for each whole, valid batch of `file` in
/// `[pos, limit)` until `f` returns false or the data ends (incomplete or invalid batch).
/// Returns the position after the last batch `f` accepted. Reads windows of
/// `window` bytes (reset to that after a larger batch forced a bigger read).
pub(crate) async fn for_each_batch<F>(
    file: &dyn DiskFile,
    pos: u64,
    limit: u64,
    verify_crc: bool,
    window: usize,
    f: F,
) -> Result<u64, StorageError>
where
    F: FnMut(u64, &BatchHeader, Bytes) -> bool,
{
    let limit = Cell::new(limit);
    for_each_batch_within(file, pos, &limit, verify_crc, window, f).await
}

/// [`for_each_batch`] with a `limit` that `f` may lower as it goes: no read reaches past
/// it, and the data ends there.
async fn for_each_batch_within<F>(
    file: &dyn DiskFile,
    mut pos: u64,
    limit: &Cell<u64>,
    verify_crc: bool,
    window: usize,
    mut f: F,
) -> Result<u64, StorageError>
where
    F: FnMut(u64, &BatchHeader, Bytes) -> bool,
{
    let base_window = window.max(BATCH_HEADER_LEN);
    let mut window = base_window;
    loop {
        let limit = limit.get();
        if pos >= limit {
            return Ok(pos);
        }
        let want = (window as u64).min(limit - pos) as usize;
        let buf = read_chunked(file, pos, want).await?;
        let window_at_end = pos + buf.len() as u64 >= limit || buf.len() < want;
        let mut scanner = scan_batches(&buf, verify_crc);
        for b in scanner.by_ref() {
            let batch = buf.slice(b.pos..b.pos + b.bytes.len());
            if !f(pos + b.pos as u64, b.header, batch) {
                return Ok(pos + b.pos as u64);
            }
        }
        let consumed = scanner.valid_end();
        let need = match scanner.stop_reason() {
            None => 0,
            Some(BatchError::TruncatedHeader { .. }) => BATCH_HEADER_LEN,
            Some(BatchError::TruncatedBody { need, .. }) => *need,
            Some(_) => return Ok(pos + consumed as u64), // invalid batch: end of data
        };
        if need > 0 && window_at_end {
            return Ok(pos + consumed as u64); // torn tail
        }
        if consumed == 0 && need > window {
            window = need; // one batch bigger than the window
        } else if consumed == 0 && need > 0 {
            return Ok(pos); // cannot make progress
        } else {
            window = base_window;
        }
        pos += consumed as u64;
    }
}

/// Whole batches of `file` starting with the one containing `offset`, scanning from
/// `pos` (an index hint) up to `limit`; at most `max_bytes` but at least one batch, none
/// starting at or after `max_offset`. Once the first batch is found nothing is read past
/// `max_bytes` from it (or its end, if larger).
pub(crate) async fn read_batches(
    file: &dyn DiskFile,
    pos: u64,
    limit: u64,
    offset: i64,
    max_bytes: usize,
    max_offset: i64,
    window: usize,
) -> Result<ReadBatches, StorageError> {
    let mut out = ReadBatches::default();
    let limit = Cell::new(limit);
    for_each_batch_within(file, pos, &limit, false, window, |at, h, batch| {
        if h.last_offset() < offset {
            return true;
        }
        if out.is_empty() {
            let budget_end = at.saturating_add(batch.len().max(max_bytes) as u64);
            limit.set(limit.get().min(budget_end));
        }
        if h.base_offset() >= max_offset
            || (!out.is_empty() && out.total_len + batch.len() > max_bytes)
        {
            return false;
        }
        out.push(batch);
        true
    })
    .await?;
    Ok(out)
}
