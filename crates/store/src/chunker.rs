//! Where files are cut into chunks: the one place that decides chunk boundaries, for whole
//! files ([`Chunker::ranges`]) and for bytes arriving as a stream ([`Chunker::cut`]).
//!
//! Today the cut is fixed-size: every chunk holds the configured number of bytes, the last one
//! what is left (docs/format.md). Readers never assume this — every reference lists each
//! chunk's length — so changing the strategy touches only this module, the repository
//! config and docs/format.md.

use std::ops::Range;

use crate::RepoConfig;

/// Cuts files into chunks of at most `size` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunker {
    size: usize,
}

impl Chunker {
    /// Chunks of `size` bytes (at least one).
    pub fn new(size: u32) -> Chunker {
        Chunker {
            size: (size as usize).max(1),
        }
    }

    /// The chunker for files of a backup (`chunk_size`).
    pub fn for_files(config: &RepoConfig) -> Chunker {
        Chunker::new(config.chunk_size)
    }

    /// The chunker for archived WAL files (`wal_chunk_size`).
    pub fn for_wal(config: &RepoConfig) -> Chunker {
        Chunker::new(config.wal_chunk_size)
    }

    /// The largest chunk this chunker cuts: what a buffer for one chunk must hold.
    pub fn max_len(&self) -> usize {
        self.size
    }

    /// The byte ranges of the chunks of a file of `len` bytes, in order.
    pub fn ranges(&self, len: u64) -> impl Iterator<Item = Range<u64>> + Send + 'static {
        let size = self.size as u64;
        (0..len.div_ceil(size)).map(move |i| i * size..len.min((i + 1) * size))
    }

    /// For a stream: the chunk being filled holds `current`, and `data` arrives next. `Some(n)`
    /// when the chunk ends after `data[..n]` (cut it there and go on with `data[n..]`), `None`
    /// when all of `data` belongs to it and it continues. The end of the stream ends the last
    /// chunk, whatever its length.
    pub fn cut(&self, current: &[u8], data: &[u8]) -> Option<usize> {
        let room = self.size.saturating_sub(current.len());
        (data.len() >= room).then_some(room)
    }
}
