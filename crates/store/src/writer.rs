//! Turning byte streams into stored chunks with bounded memory: bytes are cut by the
//! repository's file [`Chunker`] as they arrive, each chunk hashed, compressed and uploaded by
//! its own task (the receiving thread only copies: hashing there made it the bottleneck on two
//! cores), with at most `repo.concurrency()` chunks alive at once. Backpressure reaches the
//! producer through [`ChunkedFile::push`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::{ChunkRef, Chunker, Fingerprint, KnownChunk, Repo, Result, StoreError};

/// Stores the files of one backup, sharing one bound on chunks in flight and the totals.
#[derive(Clone)]
pub struct Uploader {
    repo: Repo,
    chunker: Chunker,
    permits: Arc<Semaphore>,
    stored: Arc<AtomicU64>,
    recognised: Arc<AtomicU64>,
}

impl Uploader {
    pub fn new(repo: Repo) -> Self {
        let chunker = Chunker::for_files(repo.config());
        let permits = Arc::new(Semaphore::new(repo.concurrency()));
        Uploader {
            repo,
            chunker,
            permits,
            stored: Arc::default(),
            recognised: Arc::default(),
        }
    }

    /// A new file. `known` are the chunks an earlier backup stored for the same file, in
    /// order, with their fingerprints: a chunk whose bytes have the same fingerprint as the
    /// known chunk at its place is that chunk (`None`: nothing known).
    pub fn file(&self, known: Option<Arc<[KnownChunk]>>) -> ChunkedFile {
        ChunkedFile {
            buf: BytesMut::with_capacity(self.chunker.max_len()),
            pending: Vec::new(),
            size: 0,
            known,
        }
    }

    /// The largest chunk a file is cut into.
    pub fn chunk_size(&self) -> usize {
        self.chunker.max_len()
    }

    /// New chunk bytes written so far.
    pub fn stored_bytes(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    /// Chunks recognised by fingerprint as known ones so far.
    pub fn recognised_chunks(&self) -> u64 {
        self.recognised.load(Ordering::Relaxed)
    }

    /// Start storing one chunk; waits while too many are in flight.
    async fn submit(&self, data: Bytes, known: Option<KnownChunk>) -> JoinHandle<Result<Stored>> {
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
    pending: Vec<JoinHandle<Result<Stored>>>,
    /// Bytes pushed so far.
    pub size: u64,
    known: Option<Arc<[KnownChunk]>>,
}

impl ChunkedFile {
    /// Append bytes, submitting every chunk the chunker cuts.
    pub async fn push(&mut self, up: &Uploader, mut data: &[u8]) {
        self.size += data.len() as u64;
        while let Some(n) = up.chunker.cut(&self.buf, data) {
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            self.submit(up).await;
            self.buf.reserve(up.chunker.max_len());
        }
        self.buf.extend_from_slice(data);
    }

    /// Submit the last chunk, if any bytes are left; the returned handles resolve to the
    /// chunk list.
    pub async fn finish(mut self, up: &Uploader) -> PendingChunks {
        if !self.buf.is_empty() {
            self.submit(up).await;
        }
        PendingChunks(self.pending)
    }

    /// Submit the buffered bytes as the next chunk.
    async fn submit(&mut self, up: &Uploader) {
        let data = self.buf.split().freeze();
        let index = self.pending.len();
        let known = self.known.as_ref().and_then(|k| k.get(index).copied());
        self.pending.push(up.submit(data, known).await);
    }
}

/// Chunks still being stored, in file order.
pub struct PendingChunks(Vec<JoinHandle<Result<Stored>>>);

impl PendingChunks {
    /// The chunk list and, in the same order, each chunk's fingerprint.
    pub async fn wait(self) -> Result<(Vec<ChunkRef>, Vec<Fingerprint>)> {
        let mut chunks = Vec::with_capacity(self.0.len());
        let mut fingerprints = Vec::with_capacity(self.0.len());
        for (index, h) in self.0.into_iter().enumerate() {
            let (c, f) = h.await.map_err(|source| StoreError::Task {
                what: format!("store chunk {index} of a file"),
                source,
            })??;
            chunks.push(c);
            fingerprints.push(f);
        }
        Ok((chunks, fingerprints))
    }
}
