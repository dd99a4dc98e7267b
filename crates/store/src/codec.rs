//! [`Codec`]: how a repository turns chunk bytes into stored bodies and back: the chunk ID
//! (SHA-256, or keyed BLAKE3 when encrypted), compression (`chunk.rs`'s format) and, in an
//! encrypted repository, sealing (`crypto.rs`).

use std::sync::Arc;

use crate::chunk::{
    decode_chunk_with, encode_chunk, encode_chunk_into, encoded_len_bound, ChunkId,
};
use crate::crypto::Keys;
use crate::repo::ChunkRef;
use crate::{Result, StoreError};

/// How chunk bodies are made and read: the compression level and, in an encrypted
/// repository, the keys (keyed chunk IDs, sealed bodies).
#[derive(Clone, Debug)]
pub(crate) struct Codec {
    pub level: i32,
    pub keys: Option<Arc<Keys>>,
}

impl Codec {
    /// A chunk's ID: SHA-256, or the keyed BLAKE3 in an encrypted repository.
    pub fn id(&self, data: &[u8]) -> ChunkId {
        match &self.keys {
            None => ChunkId::of(data),
            Some(k) => k.chunk_id(data),
        }
    }

    /// The body stored for chunk `id`: compressed, then sealed under its key when encrypted.
    pub fn encode(&self, id: &ChunkId, data: &[u8]) -> Vec<u8> {
        match &self.keys {
            None => encode_chunk(data, self.level),
            Some(k) => {
                let bound = crate::crypto::SEAL_OVERHEAD + encoded_len_bound(data.len());
                let mut out = Vec::with_capacity(bound);
                k.seal_with(&id.key(), &mut out, |o| {
                    encode_chunk_into(o, data, self.level)
                });
                out
            }
        }
    }

    /// The most bytes chunk `chunk` can take as stored: its length compressed at worst (or
    /// stored raw), plus the header and, when encrypted, the seal. A stored body larger than
    /// this is refused before it is read.
    pub fn max_stored_len(&self, chunk: &ChunkRef) -> u64 {
        let seal = if self.keys.is_some() {
            crate::crypto::SEAL_OVERHEAD
        } else {
            0
        };
        (encoded_len_bound(chunk.len as usize) + seal) as u64
    }

    /// Open (when encrypted) and decode a chunk body, checking its ID and its length against
    /// the reference. Any mismatch is corruption naming the chunk's key.
    pub fn decode(&self, chunk: &ChunkRef, mut body: Vec<u8>) -> Result<Vec<u8>> {
        let key = chunk.id.key();
        let corrupt = |detail| StoreError::Corrupt {
            key: key.clone(),
            detail,
        };
        let data = match &self.keys {
            None => decode_chunk_with(&chunk.id, &body, ChunkId::of),
            Some(k) => {
                let range = k.open_in_place(&key, &mut body).map_err(corrupt)?;
                decode_chunk_with(&chunk.id, &body[range], |d| k.chunk_id(d))
            }
        }
        .map_err(corrupt)?;
        if data.len() != chunk.len as usize {
            return Err(corrupt(format!(
                "{} bytes, the reference says {}",
                data.len(),
                chunk.len
            )));
        }
        Ok(data)
    }
}
