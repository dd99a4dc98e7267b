//! Turning byte streams into stored chunks with bounded memory: bytes are cut into
//! chunk-size pieces, each hashed, compressed and uploaded by its own task (the receiving
//! thread only copies: hashing there made it the bottleneck on two cores), with at most
//! `permits` pieces alive at once. Backpressure reaches the network reader through `push`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use pitr_store::{ChunkRef, Repo};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

#[derive(Clone)]
pub struct Uploader {
    repo: Repo,
    permits: Arc<Semaphore>,
    stored: Arc<AtomicU64>,
    chunk_size: usize,
}

impl Uploader {
    pub fn new(repo: Repo) -> Self {
        let chunk_size = repo.config().chunk_size as usize;
        let permits = Arc::new(Semaphore::new(repo.concurrency()));
        Uploader {
            repo,
            permits,
            stored: Arc::default(),
            chunk_size,
        }
    }

    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// New chunk bytes written so far.
    pub fn stored_bytes(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    /// Start storing one chunk; waits while too many are in flight.
    pub async fn submit(&self, data: Bytes) -> JoinHandle<anyhow::Result<ChunkRef>> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        let repo = self.repo.clone();
        let stored = Arc::clone(&self.stored);
        tokio::spawn(async move {
            let (chunk, n) = repo.put_chunk(data).await?;
            stored.fetch_add(n, Ordering::Relaxed);
            drop(permit);
            Ok(chunk)
        })
    }
}

/// A file being cut into chunks as its bytes arrive.
pub struct ChunkedFile {
    buf: BytesMut,
    pending: Vec<JoinHandle<anyhow::Result<ChunkRef>>>,
    pub size: u64,
}

impl ChunkedFile {
    pub fn new(chunk_size: usize) -> Self {
        ChunkedFile {
            buf: BytesMut::with_capacity(chunk_size),
            pending: Vec::new(),
            size: 0,
        }
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
                self.pending.push(up.submit(full).await);
                self.buf.reserve(up.chunk_size);
            }
        }
    }

    /// Submit the last partial chunk; the returned handles resolve to the chunk list.
    pub async fn finish(mut self, up: &Uploader) -> PendingChunks {
        if !self.buf.is_empty() {
            let rest = self.buf.split().freeze();
            self.pending.push(up.submit(rest).await);
        }
        PendingChunks(self.pending)
    }
}

/// Chunks still being stored, in file order.
pub struct PendingChunks(Vec<JoinHandle<anyhow::Result<ChunkRef>>>);

impl PendingChunks {
    pub async fn wait(self) -> anyhow::Result<Vec<ChunkRef>> {
        let mut out = Vec::with_capacity(self.0.len());
        for h in self.0 {
            out.push(h.await??);
        }
        Ok(out)
    }
}
