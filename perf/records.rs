//! Kafka record batch v2 (magic 2) encoding and a light-weight decoder.
//!
//! Layout (big endian):
//! baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 | magic i8 |
//! crc u32 | attributes i16 | lastOffsetDelta i32 | baseTimestamp i64 |
//! maxTimestamp i64 | producerId i64 | producerEpoch i16 | baseSequence i32 |
//! recordCount i32 | records...
//! The CRC-32C covers attributes..end.

use anyhow::{Result, bail};

pub const HEADER_LEN: usize = 61;
const BATCH_LENGTH_OFFSET: usize = 8;
const MAGIC_OFFSET: usize = 16;
const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;
const LAST_OFFSET_DELTA_OFFSET: usize = 23;
const BASE_TIMESTAMP_OFFSET: usize = 27;
const MAX_TIMESTAMP_OFFSET: usize = 35;
const RECORD_COUNT_OFFSET: usize = 57;

/// Magic prefix of values written by corelog-perf, followed by a u64 (BE)
/// of microseconds since the UNIX epoch: end-to-end latency at µs precision.
pub const STAMP_MAGIC: &[u8; 4] = b"CLP1";
pub const STAMP_LEN: usize = 12;

pub fn zigzag64(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub fn unzigzag64(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

pub fn put_uvarint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Signed (zigzag) varint / varlong.
pub fn put_varint(buf: &mut Vec<u8>, v: i64) {
    put_uvarint(buf, zigzag64(v));
}

pub fn varint_len(v: i64) -> usize {
    let mut u = zigzag64(v);
    let mut n = 1;
    while u >= 0x80 {
        u >>= 7;
        n += 1;
    }
    n
}

/// Reads a zigzag varint from `data[*pos..]`.
pub fn get_varint(data: &[u8], pos: &mut usize) -> Result<i64> {
    let mut result: u64 = 0;
    let mut shift = 0;
    loop {
        let Some(&b) = data.get(*pos) else {
            bail!("truncated varint");
        };
        *pos += 1;
        result |= ((b & 0x7f) as u64) << shift;
        if b & 0x80 == 0 {
            return Ok(unzigzag64(result));
        }
        shift += 7;
        if shift > 63 {
            bail!("varint too long");
        }
    }
}

/// Accumulates records into one v2 batch for one partition.
pub struct BatchBuilder {
    buf: Vec<u8>,
    count: i32,
    base_ts: i64,
    max_ts: i64,
}

impl BatchBuilder {
    pub fn new(capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity.max(HEADER_LEN));
        buf.resize(HEADER_LEN, 0);
        BatchBuilder {
            buf,
            count: 0,
            base_ts: 0,
            max_ts: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn count(&self) -> i32 {
        self.count
    }

    /// Encoded size of one record (including its length prefix).
    pub fn record_size(&self, ts_ms: i64, key: Option<&[u8]>, value_len: usize) -> usize {
        let body = Self::body_size(
            ts_ms - if self.count == 0 { ts_ms } else { self.base_ts },
            self.count as i64,
            key,
            value_len,
        );
        varint_len(body as i64) + body
    }

    fn body_size(ts_delta: i64, offset_delta: i64, key: Option<&[u8]>, value_len: usize) -> usize {
        let key_len = match key {
            Some(k) => varint_len(k.len() as i64) + k.len(),
            None => varint_len(-1),
        };
        1 + varint_len(ts_delta)
            + varint_len(offset_delta)
            + key_len
            + varint_len(value_len as i64)
            + value_len
            + varint_len(0)
    }

    pub fn append(&mut self, ts_ms: i64, key: Option<&[u8]>, value: &[u8]) {
        if self.count == 0 {
            self.base_ts = ts_ms;
            self.max_ts = ts_ms;
        }
        self.max_ts = self.max_ts.max(ts_ms);
        let ts_delta = ts_ms - self.base_ts;
        let offset_delta = self.count as i64;
        let body = Self::body_size(ts_delta, offset_delta, key, value.len());
        let b = &mut self.buf;
        put_varint(b, body as i64);
        b.push(0); // record attributes
        put_varint(b, ts_delta);
        put_varint(b, offset_delta);
        match key {
            Some(k) => {
                put_varint(b, k.len() as i64);
                b.extend_from_slice(k);
            }
            None => put_varint(b, -1),
        }
        put_varint(b, value.len() as i64);
        b.extend_from_slice(value);
        put_varint(b, 0); // no headers
        self.count += 1;
    }

    /// Fills the header (baseOffset 0, no producer id, no compression,
    /// CreateTime) and the CRC; returns the encoded batch.
    pub fn finish(self) -> Vec<u8> {
        let mut b = self.buf;
        let len = b.len();
        b[0..8].copy_from_slice(&0i64.to_be_bytes());
        b[BATCH_LENGTH_OFFSET..12].copy_from_slice(&((len - 12) as i32).to_be_bytes());
        b[12..16].copy_from_slice(&(-1i32).to_be_bytes()); // partitionLeaderEpoch
        b[MAGIC_OFFSET] = 2;
        b[ATTRIBUTES_OFFSET..23].copy_from_slice(&0i16.to_be_bytes());
        b[LAST_OFFSET_DELTA_OFFSET..27].copy_from_slice(&(self.count - 1).to_be_bytes());
        b[BASE_TIMESTAMP_OFFSET..35].copy_from_slice(&self.base_ts.to_be_bytes());
        b[MAX_TIMESTAMP_OFFSET..43].copy_from_slice(&self.max_ts.to_be_bytes());
        b[43..51].copy_from_slice(&(-1i64).to_be_bytes()); // producerId
        b[51..53].copy_from_slice(&(-1i16).to_be_bytes()); // producerEpoch
        b[53..57].copy_from_slice(&(-1i32).to_be_bytes()); // baseSequence
        b[RECORD_COUNT_OFFSET..61].copy_from_slice(&self.count.to_be_bytes());
        let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
        b[CRC_OFFSET..21].copy_from_slice(&crc.to_be_bytes());
        b
    }
}

/// Header of one decoded batch.
#[derive(Debug, Clone)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub record_count: i32,
    pub crc_ok: bool,
}

impl BatchHeader {
    pub fn compression(&self) -> i16 {
        self.attributes & 0x7
    }
    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }
    pub fn next_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64 + 1
    }
}

/// Walks the complete batches in `data` (a fetch response's records; a
/// trailing partial batch is ignored). Calls `f(header, records_bytes)`.
pub fn for_each_batch(data: &[u8], mut f: impl FnMut(&BatchHeader, &[u8])) -> Result<()> {
    let mut pos = 0;
    while data.len() - pos >= 17 {
        let d = &data[pos..];
        let batch_len = i32::from_be_bytes(d[8..12].try_into().unwrap());
        if batch_len < 0 {
            bail!("negative batch length");
        }
        let total = 12 + batch_len as usize;
        if d.len() < total {
            break; // partial batch at the end of a fetch
        }
        let d = &d[..total];
        let magic = d[MAGIC_OFFSET] as i8;
        if magic != 2 {
            bail!("unsupported record batch magic {magic}");
        }
        if total < HEADER_LEN {
            bail!("record batch too short");
        }
        let rd_i64 = |o: usize| i64::from_be_bytes(d[o..o + 8].try_into().unwrap());
        let rd_i32 = |o: usize| i32::from_be_bytes(d[o..o + 4].try_into().unwrap());
        let crc = u32::from_be_bytes(d[CRC_OFFSET..21].try_into().unwrap());
        let h = BatchHeader {
            base_offset: rd_i64(0),
            attributes: i16::from_be_bytes(d[ATTRIBUTES_OFFSET..23].try_into().unwrap()),
            last_offset_delta: rd_i32(LAST_OFFSET_DELTA_OFFSET),
            base_timestamp: rd_i64(BASE_TIMESTAMP_OFFSET),
            record_count: rd_i32(RECORD_COUNT_OFFSET),
            crc_ok: crc32c::crc32c(&d[ATTRIBUTES_OFFSET..]) == crc,
        };
        f(&h, &d[HEADER_LEN..]);
        pos += total;
    }
    Ok(())
}

/// One decoded (uncompressed) record.
pub struct RecordView<'a> {
    pub timestamp_delta: i64,
    pub offset_delta: i64,
    #[cfg_attr(not(test), allow(dead_code))]
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

/// Walks `count` uncompressed records.
pub fn for_each_record<'a>(
    data: &'a [u8],
    count: i32,
    mut f: impl FnMut(RecordView<'a>),
) -> Result<()> {
    let mut pos = 0;
    for _ in 0..count.max(0) {
        let len = get_varint(data, &mut pos)?;
        if len < 0 || pos + len as usize > data.len() {
            bail!("bad record length {len}");
        }
        let end = pos + len as usize;
        let rec = &data[..end];
        let mut p = pos + 1; // attributes
        let timestamp_delta = get_varint(rec, &mut p)?;
        let offset_delta = get_varint(rec, &mut p)?;
        let bytes_field = |p: &mut usize| -> Result<Option<&'a [u8]>> {
            let l = get_varint(rec, p)?;
            if l < 0 {
                return Ok(None);
            }
            let s = *p;
            let e = s + l as usize;
            if e > end {
                bail!("record field overflows record");
            }
            *p = e;
            Ok(Some(&data[s..e]))
        };
        let key = bytes_field(&mut p)?;
        let value = bytes_field(&mut p)?;
        f(RecordView {
            timestamp_delta,
            offset_delta,
            key,
            value,
        });
        pos = end;
    }
    Ok(())
}

/// Writes the latency stamp into the start of `value` (if it is long enough).
pub fn stamp_value(value: &mut [u8], unix_micros: u64) {
    if value.len() >= STAMP_LEN {
        value[..4].copy_from_slice(STAMP_MAGIC);
        value[4..12].copy_from_slice(&unix_micros.to_be_bytes());
    }
}

/// Reads a stamp written by [`stamp_value`].
pub fn read_stamp(value: &[u8]) -> Option<u64> {
    if value.len() >= STAMP_LEN && &value[..4] == STAMP_MAGIC {
        Some(u64::from_be_bytes(value[4..12].try_into().unwrap()))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_match_kafka_encoding() {
        let cases: [(i64, &[u8]); 7] = [
            (0, &[0x00]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (63, &[0x7e]),
            (-64, &[0x7f]),
            (64, &[0x80, 0x01]),
            (300, &[0xd8, 0x04]),
        ];
        for (v, enc) in cases {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b, enc, "{v}");
            assert_eq!(varint_len(v), enc.len());
            let mut p = 0;
            assert_eq!(get_varint(&b, &mut p).unwrap(), v);
            assert_eq!(p, enc.len());
        }
        for v in [i64::MIN, i64::MAX, i32::MIN as i64, 123_456_789] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v));
            let mut p = 0;
            assert_eq!(get_varint(&b, &mut p).unwrap(), v);
        }
        assert!(get_varint(&[0x80], &mut 0).is_err());
    }

    fn sample_batch() -> Vec<u8> {
        let mut b = BatchBuilder::new(1024);
        b.append(1_700_000_000_000, Some(b"key-0"), b"hello");
        b.append(1_700_000_000_005, None, b"");
        let mut v = vec![7u8; 40];
        stamp_value(&mut v, 42);
        b.append(1_700_000_000_002, Some(b""), &v);
        b.finish()
    }

    #[test]
    fn batch_header_and_crc() {
        let b = sample_batch();
        assert_eq!(&b[0..8], &0i64.to_be_bytes());
        assert_eq!(
            i32::from_be_bytes(b[8..12].try_into().unwrap()) as usize,
            b.len() - 12
        );
        assert_eq!(b[16], 2);
        let crc = u32::from_be_bytes(b[17..21].try_into().unwrap());
        assert_eq!(crc, crc32c::crc32c(&b[21..]));
        assert_ne!(crc, crc32c::crc32c(&b[17..]));
        assert_eq!(i32::from_be_bytes(b[23..27].try_into().unwrap()), 2); // lastOffsetDelta
        assert_eq!(
            i64::from_be_bytes(b[27..35].try_into().unwrap()),
            1_700_000_000_000
        );
        assert_eq!(
            i64::from_be_bytes(b[35..43].try_into().unwrap()),
            1_700_000_000_005
        );
        assert_eq!(i64::from_be_bytes(b[43..51].try_into().unwrap()), -1);
        assert_eq!(i32::from_be_bytes(b[57..61].try_into().unwrap()), 3);
    }

    #[test]
    fn record_size_predicts_growth() {
        let mut b = BatchBuilder::new(64);
        for i in 0..50i64 {
            let key = format!("k{i}");
            let before = b.len();
            let predicted = b.record_size(1000 + i * 7, Some(key.as_bytes()), 100 + i as usize);
            b.append(
                1000 + i * 7,
                Some(key.as_bytes()),
                &vec![1u8; 100 + i as usize],
            );
            assert_eq!(b.len() - before, predicted);
        }
    }

    #[test]
    fn roundtrip_through_own_decoder() {
        let mut data = sample_batch();
        data.extend_from_slice(&sample_batch());
        data.extend_from_slice(&sample_batch()[..30]); // partial trailing batch
        let mut batches = 0;
        for_each_batch(&data, |h, recs| {
            batches += 1;
            assert!(h.crc_ok);
            assert_eq!(h.record_count, 3);
            assert_eq!(h.next_offset(), 3);
            let mut seen = Vec::new();
            for_each_record(recs, h.record_count, |r| {
                seen.push((
                    r.timestamp_delta,
                    r.offset_delta,
                    r.key.map(|k| k.to_vec()),
                    r.value.map(|v| v.len()),
                    r.value.and_then(read_stamp),
                ));
            })
            .unwrap();
            assert_eq!(
                seen,
                vec![
                    (0, 0, Some(b"key-0".to_vec()), Some(5), None),
                    (5, 1, None, Some(0), None),
                    (2, 2, Some(vec![]), Some(40), Some(42)),
                ]
            );
        })
        .unwrap();
        assert_eq!(batches, 2);
    }

    #[test]
    fn corrupted_batch_fails_crc() {
        let mut data = sample_batch();
        let n = data.len();
        data[n - 3] ^= 0xff;
        for_each_batch(&data, |h, _| assert!(!h.crc_ok)).unwrap();
    }

    #[test]
    fn decodes_with_kafka_protocol_crate() {
        use kafka_protocol::records::RecordBatchDecoder;
        let data = sample_batch();
        let mut buf = bytes::Bytes::from(data);
        let set = RecordBatchDecoder::decode(&mut buf).unwrap();
        assert_eq!(set.records.len(), 3);
        let r = &set.records[0];
        assert_eq!(r.timestamp, 1_700_000_000_000);
        assert_eq!(r.key.as_deref(), Some(&b"key-0"[..]));
        assert_eq!(r.value.as_deref(), Some(&b"hello"[..]));
        assert_eq!(set.records[1].timestamp, 1_700_000_000_005);
        assert_eq!(set.records[1].key, None);
        assert_eq!(set.records[2].offset, 2);
    }
}
