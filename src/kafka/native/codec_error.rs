//! Why a compressed records section did not decompress: the one error of
//! every codec's reader (gzip, snappy and zstd in `records.rs`, lz4 in
//! `lz4.rs`), which `records.rs` turns into a [`super::records::BatchError`].

use std::fmt;

/// Why a section did not decompress.
#[derive(Debug, PartialEq, Eq)]
pub enum CodecError {
    /// More than the limit would come out.
    TooLarge,
    /// The bytes are not the codec's; what its reader said.
    Failed(String),
}

impl<E: fmt::Display> From<E> for CodecError {
    fn from(e: E) -> Self {
        Self::Failed(e.to_string())
    }
}
