//! Chunks and the files made of them: storing, fetching and hashing chunks, and whole files
//! split into chunks (`put_file`), hashed along an existing chunk list (`hash_file`) or
//! reassembled (`get_file`, `get_bytes`).

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::backend::OutFile;
use crate::chunk::{ChunkId, Fingerprint};
use crate::{Chunker, Repo, Result, StoreError};

/// One chunk of a file, in order.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkRef {
    pub id: ChunkId,
    pub len: u32,
}

/// A chunk an earlier backup stored at the same place, with its fingerprint: when the new
/// bytes have the same fingerprint they are that chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownChunk {
    pub chunk: ChunkRef,
    pub fingerprint: Fingerprint,
}

/// What storing one chunk of a backup did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupChunk {
    pub chunk: ChunkRef,
    pub fingerprint: Fingerprint,
    /// Bytes of a new chunk body written (0 when the repository had the chunk).
    pub stored: u64,
    /// Recognised by its fingerprint as the known chunk, without a SHA-256 pass.
    pub recognised: bool,
}

impl BackupChunk {
    /// The known chunk, recognised by its fingerprint: nothing hashed or written.
    pub(crate) fn recognised(chunk: ChunkRef, fingerprint: Fingerprint) -> Self {
        BackupChunk {
            chunk,
            fingerprint,
            stored: 0,
            recognised: true,
        }
    }

    /// A chunk hashed with SHA-256 and stored unless the repository had it.
    pub(crate) fn hashed(chunk: ChunkRef, fingerprint: Fingerprint, stored: u64) -> Self {
        BackupChunk {
            chunk,
            fingerprint,
            stored,
            recognised: false,
        }
    }
}

/// What storing a file cost.
#[derive(Clone, Debug, Default)]
pub struct PutSummary {
    pub chunks: Vec<ChunkRef>,
    pub raw_bytes: u64,
    /// Bytes of new chunk bodies written (0 for chunks the repository already had).
    pub stored_bytes: u64,
    pub new_chunks: usize,
}

impl Repo {
    /// Store one chunk, nothing known about it: [`Repo::put_backup_chunk`] without its
    /// fingerprint. Returns its reference and the bytes written (0 when it already existed).
    pub async fn put_chunk(&self, data: Bytes) -> Result<(ChunkRef, u64)> {
        let b = self.put_backup_chunk(data, None).await?;
        Ok((b.chunk, b.stored))
    }

    /// Store one chunk of a backup and take its fingerprint. When `known` (the chunk an earlier
    /// backup had at the same place) has the same fingerprint and length and is still in the
    /// repository, it is the answer without a SHA-256 pass: on an unchanged cluster that pass
    /// was half of a backup's CPU. Otherwise the bytes are hashed with SHA-256, looked up,
    /// and compressed and written only when new. The bytes are durable on return; the chunk's
    /// name is after [`Repo::sync`] (which every `put_doc` runs first), so write the document
    /// that names it through this handle.
    pub async fn put_backup_chunk(
        &self,
        data: Bytes,
        known: Option<KnownChunk>,
    ) -> Result<BackupChunk> {
        self.chunks.put_backup(data, known).await
    }

    /// Store one chunk that is most likely new (WAL): hash and compress in one step, no
    /// existence check first; a chunk that already exists is still not written twice.
    pub async fn put_new_chunk(&self, data: Bytes) -> Result<(ChunkRef, u64)> {
        self.chunks.put_new(data).await
    }

    /// Read one chunk, re-hashing it; a mismatch is `Corrupt` naming the key.
    pub async fn get_chunk(&self, chunk: &ChunkRef) -> Result<Bytes> {
        self.chunks.get(*chunk).await
    }

    /// Whether a chunk is present (no content check).
    pub async fn has_chunk(&self, id: &ChunkId) -> Result<bool> {
        self.chunks.exists(*id).await
    }

    /// Split `len` bytes of `file` into chunks (the WAL [`Chunker`]) and store them,
    /// `concurrency` chunks at a time, assuming they are new (WAL). Durability as for
    /// [`Repo::put_backup_chunk`]: the bytes on return, the names by the `put_doc` that names
    /// them. Each chunk is read with `pread` into its own buffer: a file that shrinks
    /// meanwhile (or a read error) is an error naming `what`, never a signal, as it would be
    /// with a memory map.
    pub async fn put_file(
        &self,
        file: Arc<std::fs::File>,
        len: u64,
        what: &str,
    ) -> Result<PutSummary> {
        let results: Vec<(ChunkRef, u64)> =
            futures::stream::iter(Chunker::for_wal(&self.config).ranges(len))
                .map(|range| {
                    let file = Arc::clone(&file);
                    let what = what.to_string();
                    async move {
                        let _permit = self.limiter.acquire().await.expect("limiter never closed");
                        let (off, n) = (range.start, (range.end - range.start) as usize);
                        let data = tokio::task::spawn_blocking(move || {
                            read_range(&file, off, n, len, &what)
                        })
                        .await
                        .map_err(|source| StoreError::Task {
                            what: format!("read {} bytes at offset {off}", n),
                            source,
                        })??;
                        self.put_new_chunk(data).await
                    }
                })
                .buffered(self.concurrency)
                .try_collect()
                .await?;
        let mut summary = PutSummary {
            raw_bytes: len,
            ..Default::default()
        };
        for (chunk, stored) in results {
            summary.chunks.push(chunk);
            summary.stored_bytes += stored;
            summary.new_chunks += usize::from(stored > 0);
        }
        Ok(summary)
    }

    /// The chunk list of `file` cut along the lengths of `like` (an archived or backed-up copy
    /// of it), without storing anything: equal to `like` exactly when the content is the same.
    /// The file must hold at least the sum of their lengths (callers compare sizes first);
    /// anything beyond is not read.
    pub async fn hash_file(
        &self,
        file: Arc<std::fs::File>,
        like: &[ChunkRef],
        what: &str,
    ) -> Result<Vec<ChunkRef>> {
        let lens: Vec<u32> = like.iter().map(|c| c.len).collect();
        let what = what.to_string();
        let codec = self.codec.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(lens.len());
            let mut buf = vec![0u8; lens.iter().copied().max().unwrap_or(0) as usize];
            let mut off = 0u64;
            for len in lens {
                let data = &mut buf[..len as usize];
                file.read_exact_at(data, off)
                    .map_err(|source| StoreError::Io {
                        key: format!("{what} at offset {off}"),
                        source,
                    })?;
                out.push(ChunkRef {
                    id: codec.id(data),
                    len,
                });
                off += u64::from(len);
            }
            Ok(out)
        })
        .await
        .expect("hashing does not panic")
    }

    /// Fetch `chunks` in parallel and write them, in order, at their offsets in `file`.
    pub async fn get_file(
        &self,
        chunks: &[ChunkRef],
        file: Arc<std::fs::File>,
        what: &str,
    ) -> Result<u64> {
        let mut offsets = Vec::with_capacity(chunks.len());
        let mut off = 0u64;
        for c in chunks {
            offsets.push((*c, off));
            off += u64::from(c.len);
        }
        let out = Arc::new(OutFile::new(file, what));
        futures::stream::iter(offsets)
            .map(|(chunk, off)| {
                let out = Arc::clone(&out);
                async move {
                    let _permit = self.limiter.acquire().await.expect("limiter never closed");
                    self.chunks.get_into(chunk, out, off).await
                }
            })
            .buffer_unordered(self.concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(off)
    }

    /// Fetch a small file's chunks into memory, in order.
    pub async fn get_bytes(&self, chunks: &[ChunkRef]) -> Result<Vec<u8>> {
        let parts: Vec<Bytes> = futures::stream::iter(chunks)
            .map(|c| self.get_chunk(c))
            .buffered(self.concurrency)
            .try_collect()
            .await?;
        Ok(parts.concat())
    }
}

/// `n` bytes of `file` at `off`, one `pread` loop into a fresh buffer (`readbuf.rs`: huge
/// pages where the kernel allows). Reading short of `n` means the file (meant to be `len`
/// bytes) shrank under us.
fn read_range(file: &std::fs::File, off: u64, n: usize, len: u64, what: &str) -> Result<Bytes> {
    match crate::readbuf::ReadBuf::read_exact_at(file, off, n) {
        Ok(buf) => Ok(Bytes::from_owner(buf)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(StoreError::Io {
            key: what.to_string(),
            source: std::io::Error::new(
                e.kind(),
                format!(
                    "the file shrank while it was read: {len} bytes expected, \
                     fewer than {} there",
                    off + n as u64
                ),
            ),
        }),
        Err(source) => Err(StoreError::Io {
            key: format!("read {what} at offset {off}"),
            source,
        }),
    }
}
