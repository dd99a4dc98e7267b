//! The content-addressed repository: write-once chunks named by the SHA-256 of their bytes,
//! zstd-compressed behind a small versioned header, plus small JSON documents that name them.
//! It knows nothing about PostgreSQL; it runs over any `object_store` backend.
//!
//! Ordering rules (see docs/format.md): a chunk is durable before any document names it; a
//! document is written create-only, so once visible it never changes.

mod backend;
mod chunk;
mod chunker;
mod chunks;
mod error;
pub mod keys;
mod local;
mod repo;
mod writer;

pub use backend::Backend;
pub use chunk::{decode_chunk, encode_chunk, ChunkId, Fingerprint, CHUNK_HEADER_LEN};
pub use chunker::Chunker;
pub use chunks::{ChunkRemoval, Listed};
pub use error::StoreError;
pub use repo::{
    ChunkRef, DocWrite, InitOutcome, KnownChunk, PutSummary, Repo, RepoConfig, FORMAT_VERSION,
};
pub use writer::{ChunkedFile, PendingChunks, Uploader};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
