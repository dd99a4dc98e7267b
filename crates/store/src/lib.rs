//! The content-addressed repository: write-once chunks named by the SHA-256 of their bytes,
//! zstd-compressed behind a small versioned header, plus small JSON documents that name them.
//! It knows nothing about PostgreSQL; it runs over any `object_store` backend.
//!
//! Ordering rules (see docs/format.md): a chunk is durable before any document names it; a
//! document is written create-only, so once visible it never changes.

mod backend;
mod chunk;
mod chunker;
mod codec;
mod crypto;
mod error;
mod keyslot;
pub mod layout;
mod location;
mod options;
mod readbuf;
pub mod remote;
mod repo;
mod writer;

pub use backend::local::user_name;
pub use backend::{ChunkRemoval, Listed};
pub use chunk::{decode_chunk, encode_chunk, ChunkId, Fingerprint, CHUNK_HEADER_LEN};
pub use chunker::Chunker;
pub use crypto::{CHUNK_ID, CIPHER};
pub use error::StoreError;
pub use keyslot::{KdfCost, Secret, SlotInfo, MAX_PASSPHRASE_SLOTS};
pub use location::Location;
pub use options::{RepoOptions, UnlockCache, DEFAULT_JOBS};
pub use repo::{
    ChunkRef, DocWrite, EncryptionConfig, InitOutcome, KnownChunk, PutSummary, Repo, RepoConfig,
    ENCRYPTED_FORMAT_VERSION, FORMAT_VERSION,
};
pub use writer::{ChunkedFile, PendingChunks, Uploader};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
