//! Sparse offset index and time index of one segment, kept in memory and persisted when
//! the segment is sealed and on close.
//!
//! On-disk format (both files, big endian, zero padded to the O_DIRECT alignment):
//! a 64-byte header `magic u32, version u32, count u32, crc32c(entries) u32, log_size u64,
//! next_offset i64, max_timestamp i64` then `count` entries: offset index `(relative
//! offset u32, position u32)`, time index `(max timestamp so far i64, relative offset u32)`.
//! A file whose header or CRC does not check out is ignored and rebuilt by scanning.

/// Header size of both index files.
pub const INDEX_HEADER_LEN: usize = 64;
const OFFSET_MAGIC: u32 = u32::from_be_bytes(*b"CLOI");
const TIME_MAGIC: u32 = u32::from_be_bytes(*b"CLTI");
const VERSION: u32 = 1;

/// Segment facts stored in the index header so a sealed segment opens without a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSummary {
    pub log_size: u64,
    pub next_offset: i64,
    pub max_timestamp: i64,
}

/// Relative offset -> file position of a batch start, one entry per `index.interval.bytes`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OffsetIndex {
    entries: Vec<(u32, u32)>,
}

impl OffsetIndex {
    pub fn push(&mut self, rel_offset: u32, pos: u32) {
        assert!(
            self.entries
                .last()
                .is_none_or(|&(o, p)| o < rel_offset && p < pos),
            "offset index entry ({rel_offset}, {pos}) does not ascend"
        );
        self.entries.push((rel_offset, pos));
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// Position of the last indexed batch starting at or before `rel_offset` (0 if none):
    /// the batch containing `rel_offset` starts at or after it.
    pub fn lookup(&self, rel_offset: u32) -> u32 {
        let i = self.entries.partition_point(|&(o, _)| o <= rel_offset);
        if i == 0 { 0 } else { self.entries[i - 1].1 }
    }
    pub fn encode(&self, summary: SegmentSummary) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.entries.len() * 8);
        for &(o, p) in &self.entries {
            body.extend_from_slice(&o.to_be_bytes());
            body.extend_from_slice(&p.to_be_bytes());
        }
        with_header(OFFSET_MAGIC, self.entries.len(), summary, body)
    }
    /// Parses a persisted index; None if it is not consistent with a log of `log_size`.
    pub fn decode(buf: &[u8]) -> Option<(OffsetIndex, SegmentSummary)> {
        let (count, summary, body) = parse_header(buf, OFFSET_MAGIC, 8)?;
        let mut entries = Vec::with_capacity(count);
        for e in body.chunks_exact(8).take(count) {
            let o = u32::from_be_bytes(e[0..4].try_into().ok()?);
            let p = u32::from_be_bytes(e[4..8].try_into().ok()?);
            if let Some(&(lo, lp)) = entries.last()
                && (o <= lo || p <= lp)
            {
                return None;
            }
            if u64::from(p) >= summary.log_size {
                return None;
            }
            entries.push((o, p));
        }
        Some((OffsetIndex { entries }, summary))
    }
}

/// Max timestamp so far -> relative offset of the batch that was indexed at that point.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimeIndex {
    entries: Vec<(i64, u32)>,
}

impl TimeIndex {
    /// Adds an entry if it raises the max timestamp (entries stay sorted on both keys).
    pub fn maybe_push(&mut self, max_ts_so_far: i64, rel_offset: u32) {
        if self
            .entries
            .last()
            .is_none_or(|&(t, o)| max_ts_so_far > t && rel_offset > o)
        {
            self.entries.push((max_ts_so_far, rel_offset));
        }
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// A relative offset from which a scan finds the first batch with max timestamp >= `ts`:
    /// every batch up to the last entry below `ts` has max timestamp < `ts`.
    pub fn lookup(&self, ts: i64) -> u32 {
        let i = self.entries.partition_point(|&(t, _)| t < ts);
        if i == 0 { 0 } else { self.entries[i - 1].1 }
    }
    pub fn encode(&self, summary: SegmentSummary) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.entries.len() * 12);
        for &(t, o) in &self.entries {
            body.extend_from_slice(&t.to_be_bytes());
            body.extend_from_slice(&o.to_be_bytes());
        }
        with_header(TIME_MAGIC, self.entries.len(), summary, body)
    }
    pub fn decode(buf: &[u8]) -> Option<(TimeIndex, SegmentSummary)> {
        let (count, summary, body) = parse_header(buf, TIME_MAGIC, 12)?;
        let mut idx = TimeIndex::default();
        for e in body.chunks_exact(12).take(count) {
            let t = i64::from_be_bytes(e[0..8].try_into().ok()?);
            let o = u32::from_be_bytes(e[8..12].try_into().ok()?);
            let before = idx.entries.len();
            idx.maybe_push(t, o);
            if idx.entries.len() == before {
                return None;
            }
        }
        Some((idx, summary))
    }
}

fn with_header(magic: u32, count: usize, s: SegmentSummary, body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(INDEX_HEADER_LEN + body.len());
    out.extend_from_slice(&magic.to_be_bytes());
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&(count as u32).to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
    out.extend_from_slice(&s.log_size.to_be_bytes());
    out.extend_from_slice(&s.next_offset.to_be_bytes());
    out.extend_from_slice(&s.max_timestamp.to_be_bytes());
    out.resize(INDEX_HEADER_LEN, 0);
    out.extend_from_slice(&body);
    out
}

fn parse_header(
    buf: &[u8],
    magic: u32,
    entry_len: usize,
) -> Option<(usize, SegmentSummary, &[u8])> {
    let h = buf.get(..INDEX_HEADER_LEN)?;
    let word = |i: usize| {
        h.get(i..i + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
    };
    let dword = |i: usize| {
        h.get(i..i + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
    };
    if word(0)? != magic || word(4)? != VERSION {
        return None;
    }
    let count = word(8)? as usize;
    let body =
        buf.get(INDEX_HEADER_LEN..INDEX_HEADER_LEN.checked_add(count.checked_mul(entry_len)?)?)?;
    if crc32c::crc32c(body) != word(12)? {
        return None;
    }
    let summary = SegmentSummary {
        log_size: dword(16)?,
        next_offset: dword(24)? as i64,
        max_timestamp: dword(32)? as i64,
    };
    Some((count, summary, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: SegmentSummary = SegmentSummary {
        log_size: 100_000,
        next_offset: 500,
        max_timestamp: 42,
    };

    #[test]
    fn offset_lookup() {
        let mut idx = OffsetIndex::default();
        assert_eq!(idx.lookup(7), 0);
        idx.push(10, 4096);
        idx.push(20, 8200);
        idx.push(35, 12300);
        assert_eq!(idx.lookup(0), 0);
        assert_eq!(idx.lookup(9), 0);
        assert_eq!(idx.lookup(10), 4096);
        assert_eq!(idx.lookup(19), 4096);
        assert_eq!(idx.lookup(20), 8200);
        assert_eq!(idx.lookup(1000), 12300);
    }

    #[test]
    fn time_lookup() {
        let mut idx = TimeIndex::default();
        idx.maybe_push(100, 5);
        idx.maybe_push(100, 9); // not an increase: skipped
        idx.maybe_push(200, 12);
        assert_eq!(idx.len(), 2);
        assert_eq!(idx.lookup(50), 0);
        assert_eq!(idx.lookup(100), 0);
        assert_eq!(idx.lookup(101), 5);
        assert_eq!(idx.lookup(1000), 12);
    }

    #[test]
    fn roundtrip_and_corruption() {
        let mut idx = OffsetIndex::default();
        idx.push(3, 10);
        idx.push(9, 5000);
        let mut bytes = idx.encode(S);
        bytes.resize(4096, 0); // O_DIRECT padding
        assert_eq!(OffsetIndex::decode(&bytes), Some((idx.clone(), S)));
        let mut bad = bytes.clone();
        bad[INDEX_HEADER_LEN + 3] ^= 1;
        assert_eq!(OffsetIndex::decode(&bad), None);
        assert_eq!(OffsetIndex::decode(&bytes[..20]), None);
        assert_eq!(OffsetIndex::decode(&[0u8; 4096]), None);
        // Positions beyond the log are inconsistent.
        let small = SegmentSummary { log_size: 100, ..S };
        assert_eq!(OffsetIndex::decode(&idx.encode(small)), None);

        let mut t = TimeIndex::default();
        t.maybe_push(5, 1);
        t.maybe_push(9, 4);
        assert_eq!(TimeIndex::decode(&t.encode(S)), Some((t, S)));
    }
}
