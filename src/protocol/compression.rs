//! Bounded decompression of a compressed v2 batch's records (codecs 1-4), so that the
//! produce path can walk them as Kafka's LogValidator does.
//!
//! Nothing here allocates what a peer claims: every codec is read as a stream into a buffer
//! that grows only as bytes are actually produced, and stops one byte past `limit`.
//! zstd's window (the memory its decoder reserves, announced by the frame header) is capped
//! at [`ZSTD_WINDOW_LOG_MAX`].

use std::io::Read;

/// Largest zstd window accepted: 2^24 = 16 MiB (zstd's own default maximum is 128 MiB).
pub const ZSTD_WINDOW_LOG_MAX: u32 = 24;

/// Codec ids of the batch attributes' low 3 bits.
pub const GZIP: i16 = 1;
pub const SNAPPY: i16 = 2;
pub const LZ4: i16 = 3;
pub const ZSTD: i16 = 4;

/// The framing Kafka's Java clients put around snappy blocks (xerial's `SnappyOutputStream`):
/// this magic, a 4-byte version and a 4-byte compatible version, then blocks each prefixed
/// by their 4-byte big-endian compressed length. librdkafka may send a raw snappy block.
const XERIAL_MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
const XERIAL_HEADER_LEN: usize = 16;

/// Why a batch's records could not be decompressed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecompressError {
    /// The bytes are not a valid stream of the codec.
    #[error("invalid {codec} data: {reason}")]
    Corrupt { codec: &'static str, reason: String },
    /// The records decompress to more than the limit.
    #[error("decompresses to more than {limit} bytes")]
    TooLarge { limit: usize },
}

fn codec_name(codec: i16) -> &'static str {
    match codec {
        GZIP => "gzip",
        SNAPPY => "snappy",
        LZ4 => "lz4",
        ZSTD => "zstd",
        _ => "unknown",
    }
}

/// Decompresses `input` (codec 1-4) into `out` (cleared first), refusing more than `limit`
/// bytes of output.
pub fn decompress(
    codec: i16,
    input: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<(), DecompressError> {
    out.clear();
    let name = codec_name(codec);
    let corrupt = |reason: String| DecompressError::Corrupt {
        codec: name,
        reason,
    };
    match codec {
        GZIP => read_bounded(flate2::read::MultiGzDecoder::new(input), limit, out),
        SNAPPY => return snappy(input, limit, out),
        LZ4 => read_bounded(lz4_flex::frame::FrameDecoder::new(input), limit, out),
        ZSTD => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(input)
                .map_err(|e| corrupt(e.to_string()))?;
            decoder
                .window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(|e| corrupt(e.to_string()))?;
            read_bounded(decoder, limit, out)
        }
        _ => return Err(corrupt(format!("codec id {codec}"))),
    }
    .map_err(|e| corrupt(e.to_string()))?;
    if out.len() > limit {
        return Err(DecompressError::TooLarge { limit });
    }
    Ok(())
}

/// Reads at most `limit + 1` bytes, so that an over-limit stream is seen without reading on.
fn read_bounded(reader: impl Read, limit: usize, out: &mut Vec<u8>) -> std::io::Result<()> {
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader.take(cap).read_to_end(out).map(drop)
}

/// Raw snappy, or xerial-framed blocks (what Kafka's Java producer sends).
fn snappy(input: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), DecompressError> {
    let Some(mut blocks) = input
        .strip_prefix(&XERIAL_MAGIC)
        .and_then(|_| input.get(XERIAL_HEADER_LEN..))
    else {
        return snappy_block(input, limit, out);
    };
    while !blocks.is_empty() {
        let (len, rest) = blocks
            .split_first_chunk::<4>()
            .ok_or_else(|| snappy_corrupt("truncated block length".into()))?;
        let len = u32::from_be_bytes(*len) as usize;
        let block = rest
            .get(..len)
            .ok_or_else(|| snappy_corrupt(format!("block of {len} bytes is truncated")))?;
        snappy_block(block, limit, out)?;
        blocks = &rest[len..];
    }
    Ok(())
}

/// Appends one raw snappy block to `out`. Its claimed length is checked against what is
/// left of `limit` before anything is allocated.
fn snappy_block(block: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), DecompressError> {
    let claimed = snap::raw::decompress_len(block).map_err(|e| snappy_corrupt(e.to_string()))?;
    let start = out.len();
    if claimed > limit - start {
        return Err(DecompressError::TooLarge { limit });
    }
    out.resize(start + claimed, 0);
    let written = snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|e| snappy_corrupt(e.to_string()))?;
    out.truncate(start + written);
    Ok(())
}

fn snappy_corrupt(reason: String) -> DecompressError {
    DecompressError::Corrupt {
        codec: "snappy",
        reason,
    }
}

/// Compresses `data` with `codec` as a producer would, for tests and benches: the broker
/// itself never compresses (batches are stored as received).
pub fn compress(codec: i16, data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    match codec {
        GZIP => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).expect("write to a Vec");
            e.finish().expect("write to a Vec")
        }
        SNAPPY => {
            let mut out = XERIAL_MAGIC.to_vec();
            out.extend_from_slice(&1i32.to_be_bytes());
            out.extend_from_slice(&1i32.to_be_bytes());
            for chunk in data.chunks(32 * 1024) {
                let block = snap::raw::Encoder::new()
                    .compress_vec(chunk)
                    .expect("snappy block");
                out.extend_from_slice(&(block.len() as u32).to_be_bytes());
                out.extend_from_slice(&block);
            }
            out
        }
        LZ4 => {
            let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
            e.write_all(data).expect("write to a Vec");
            e.finish().expect("write to a Vec")
        }
        ZSTD => zstd::bulk::compress(data, 3).expect("zstd"),
        _ => data.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODECS: [i16; 4] = [GZIP, SNAPPY, LZ4, ZSTD];

    #[test]
    fn round_trips_every_codec() {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for codec in CODECS {
            let mut out = Vec::new();
            decompress(codec, &compress(codec, &data), data.len(), &mut out).unwrap();
            assert_eq!(out, data, "codec {codec}");
        }
        // Raw (unframed) snappy, as librdkafka may send it.
        let raw = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        let mut out = Vec::new();
        decompress(SNAPPY, &raw, data.len(), &mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn refuses_output_over_the_limit() {
        let bomb = vec![0u8; 4 << 20];
        for codec in CODECS {
            let packed = compress(codec, &bomb);
            assert!(packed.len() < bomb.len() / 20, "codec {codec}");
            let mut out = Vec::new();
            assert_eq!(
                decompress(codec, &packed, 1 << 20, &mut out),
                Err(DecompressError::TooLarge { limit: 1 << 20 }),
                "codec {codec}"
            );
            assert!(out.len() <= (1 << 20) + 1);
        }
        // A raw snappy block that merely claims 2^31 bytes allocates nothing.
        let mut out = Vec::new();
        let claim = [0x80, 0x80, 0x80, 0x80, 0x08, 0x00];
        assert!(matches!(
            decompress(SNAPPY, &claim, 1 << 20, &mut out),
            Err(DecompressError::TooLarge { .. })
        ));
        assert_eq!(out.capacity(), 0);
    }

    #[test]
    fn refuses_a_zstd_window_over_16_mib() {
        let data = vec![7u8; 1000];
        let mut encoder = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
        encoder.window_log(ZSTD_WINDOW_LOG_MAX + 2).unwrap();
        // A frame without a content size announces its window.
        encoder.include_contentsize(false).unwrap();
        encoder.set_pledged_src_size(None).unwrap();
        std::io::Write::write_all(&mut encoder, &data).unwrap();
        let packed = encoder.finish().unwrap();
        let mut out = Vec::new();
        let got = decompress(ZSTD, &packed, 1 << 30, &mut out);
        assert!(
            matches!(got, Err(DecompressError::Corrupt { .. })),
            "{got:?}"
        );
    }

    #[test]
    fn garbage_and_truncation_are_corrupt() {
        let data = vec![42u8; 10_000];
        for codec in CODECS {
            let mut out = Vec::new();
            // (For snappy: a 16-byte block whose first tag is invalid.)
            let got = decompress(codec, &[0x10, 0xff, 0x13, 0x37, 1, 2, 3], 1 << 20, &mut out);
            assert!(
                matches!(got, Err(DecompressError::Corrupt { .. })),
                "codec {codec}: {got:?}"
            );
            let packed = compress(codec, &data);
            let cut = &packed[..packed.len() / 2];
            let got = decompress(codec, cut, 1 << 20, &mut out);
            assert!(
                matches!(got, Err(DecompressError::Corrupt { .. })),
                "codec {codec} truncated: {got:?}"
            );
        }
    }
}
