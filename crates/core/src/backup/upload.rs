//! Turning byte streams into stored chunks with bounded memory: bytes are cut into
//! chunk-size pieces, each hashed, compressed and uploaded by its own task (the receiving
//! thread only copies: hashing there made it the bottleneck on two cores), with at most
//! `permits` pieces alive at once. Backpressure reaches the network reader through `push`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use pitr_store::{ChunkRef, Fingerprint, KnownChunk, Repo};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Where a file lives in a backup: tablespace OID (none for the data directory) and path.
pub type FileKey = (Option<u32>, String);

/// The chunks of the previous backup's files, with their fingerprints, by file.
pub type KnownFiles = HashMap<FileKey, Arc<[KnownChunk]>>;

#[derive(Clone)]
pub struct Uploader {
    repo: Repo,
    permits: Arc<Semaphore>,
    stored: Arc<AtomicU64>,
    recognised: Arc<AtomicU64>,
    chunk_size: usize,
    known: Arc<KnownFiles>,
}

impl Uploader {
    pub fn new(repo: Repo, known: KnownFiles) -> Self {
        let chunk_size = repo.config().chunk_size as usize;
        let permits = Arc::new(Semaphore::new(repo.concurrency()));
        Uploader {
            repo,
            permits,
            stored: Arc::default(),
            recognised: Arc::default(),
            chunk_size,
            known: Arc::new(known),
        }
    }

    /// A new file with nothing known about its chunks (WAL, the server's manifest).
    pub fn new_file(&self) -> ChunkedFile {
        ChunkedFile {
            buf: BytesMut::with_capacity(self.chunk_size),
            pending: Vec::new(),
            size: 0,
            known: None,
        }
    }

    /// A file of the data directory or a tablespace: its chunks are compared with the ones
    /// the previous backup stored for the same file.
    pub fn file(&self, key: &FileKey) -> ChunkedFile {
        let mut f = self.new_file();
        f.known = self.known.get(key).cloned();
        f
    }

    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// New chunk bytes written so far.
    pub fn stored_bytes(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    /// Chunks recognised by fingerprint as the previous backup's so far.
    pub fn recognised_chunks(&self) -> u64 {
        self.recognised.load(Ordering::Relaxed)
    }

    /// Files the previous backup's fingerprints are known for.
    pub fn known_files(&self) -> usize {
        self.known.len()
    }

    /// Start storing one chunk; waits while too many are in flight.
    async fn submit(
        &self,
        data: Bytes,
        known: Option<KnownChunk>,
    ) -> JoinHandle<anyhow::Result<Stored>> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        let repo = self.repo.clone();
        let (stored, recognised) = (Arc::clone(&self.stored), Arc::clone(&self.recognised));
        tokio::spawn(async move {
            let b = repo.put_backup_chunk(data, known).await?;
            stored.fetch_add(b.stored, Ordering::Relaxed);
            recognised.fetch_add(u64::from(b.recognised), Ordering::Relaxed);
            drop(permit);
            Ok((b.chunk, b.fingerprint))
        })
    }
}

type Stored = (ChunkRef, Fingerprint);

/// A file being cut into chunks as its bytes arrive.
pub struct ChunkedFile {
    buf: BytesMut,
    pending: Vec<JoinHandle<anyhow::Result<Stored>>>,
    pub size: u64,
    known: Option<Arc<[KnownChunk]>>,
}

impl ChunkedFile {
    fn known_at(&self, index: usize) -> Option<KnownChunk> {
        self.known.as_ref().and_then(|k| k.get(index).copied())
    }

    /// Append bytes, submitting every chunk that fills up.
    pub async fn push(&mut self, up: &Uploader, mut data: &[u8]) {
        self.size += data.len() as u64;
        while !data.is_empty() {
            let room = up.chunk_size - self.buf.len();
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == up.chunk_size {
                let full = self.buf.split().freeze();
                let known = self.known_at(self.pending.len());
                self.pending.push(up.submit(full, known).await);
                self.buf.reserve(up.chunk_size);
            }
        }
    }

    /// Submit the last partial chunk; the returned handles resolve to the chunk list.
    pub async fn finish(mut self, up: &Uploader) -> PendingChunks {
        if !self.buf.is_empty() {
            let rest = self.buf.split().freeze();
            let known = self.known_at(self.pending.len());
            self.pending.push(up.submit(rest, known).await);
        }
        PendingChunks(self.pending)
    }
}

/// Chunks still being stored, in file order.
pub struct PendingChunks(Vec<JoinHandle<anyhow::Result<Stored>>>);

impl PendingChunks {
    /// The chunk list and, in the same order, each chunk's fingerprint.
    pub async fn wait(self) -> anyhow::Result<(Vec<ChunkRef>, Vec<Fingerprint>)> {
        let mut chunks = Vec::with_capacity(self.0.len());
        let mut fingerprints = Vec::with_capacity(self.0.len());
        for h in self.0 {
            let (c, f) = h.await??;
            chunks.push(c);
            fingerprints.push(f);
        }
        Ok((chunks, fingerprints))
    }
}
