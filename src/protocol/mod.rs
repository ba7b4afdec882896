//! Kafka wire protocol: framing, request headers, the API version table and decoding.
//!
//! Architecture invariant: this module knows nothing about shards, partitions or storage.
//! Message codecs come from the `kafka-protocol` crate; record batches (`record_batch`,
//! with bounded decompression in `compression`) are ours, because the broker validates
//! them without decoding them into records.

pub mod buffer_pool;
pub mod codec;
pub mod compression;
pub mod frame;
pub mod mutate;
pub mod pieces;
pub mod versions;

pub use codec::{
    DecodeError, Request, decode_request, encode_response, unsupported_version_response,
};
pub use frame::{FrameError, read_frame, read_frame_blocking};
pub use kafka_protocol::error::ResponseError as ErrorCode;
pub mod record_batch;
