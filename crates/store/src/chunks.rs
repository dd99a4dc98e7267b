//! The one seam between the repository logic and where objects live: [`ChunkBackend`], the
//! whole-chunk operations (store, fetch, exists, sync) and whole-document ones (create-only
//! write, read), so that `Repo` never branches on the backend. Two implementations: [`ObjectChunks`] over any `object_store` backend (below) and
//! `LocalBackend` for local directories (`local.rs`), which does each chunk's hashing,
//! compression and file I/O in one blocking step.
//!
//! Whole chunks, not bytes, cross the seam so that an implementation may choose how many
//! thread hops a chunk costs: on two cores that was measured to matter.

use std::fmt;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::chunk::{
    decode_chunk_with, encode_chunk, encode_chunk_into, encoded_len_bound, ChunkId, Fingerprint,
};
use crate::crypto::Keys;
use crate::repo::{BackupChunk, ChunkRef, KnownChunk};
use crate::{Backend, Result, StoreError};

/// An object as a listing shows it, with the time it was last written (or refreshed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    pub modified: chrono::DateTime<chrono::Utc>,
    /// Not an object but what a killed process left: a staging file `<key>#<n>`, or a chunk
    /// a killed garbage collection had set aside (`<key>#gc<pid>`, put back by
    /// [`crate::Repo::clear_staging`]).
    pub staging: bool,
}

/// What [`crate::Repo::remove_chunk_unless_fresh`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkRemoval {
    /// Deleted; its stored size.
    Deleted(u64),
    /// Written or refreshed since the cut-off: a writer relies on it, so it stays.
    Fresh,
    /// Not there (another expire took it).
    Absent,
}

/// Whole-chunk operations of one kind of backend. Chunk bytes are durable when a `put_*`
/// returns; their names once [`ChunkBackend::sync`] has run.
pub(crate) trait ChunkBackend: Send + Sync + fmt::Debug {
    /// Store a chunk that is most likely new (WAL): hash and compress, write create-only
    /// without looking first. Returns its reference and the bytes written (0 if it existed).
    fn put_new(&self, data: Bytes) -> BoxFuture<'_, Result<(ChunkRef, u64)>>;

    /// Store a chunk of a backup: take its fingerprint; when `known` has the same fingerprint
    /// and length and is still stored, that is the chunk, without a SHA-256 pass. Otherwise
    /// hash, look for the chunk, and compress and write it only when new.
    fn put_backup(
        &self,
        data: Bytes,
        known: Option<KnownChunk>,
    ) -> BoxFuture<'_, Result<BackupChunk>>;

    /// Read a chunk, decompress it and check its hash and length against `chunk`.
    fn get(&self, chunk: ChunkRef) -> BoxFuture<'_, Result<Bytes>>;

    /// Fetch a chunk as [`ChunkBackend::get`] does and write it at `off` of `out`.
    fn get_into(&self, chunk: ChunkRef, out: Arc<OutFile>, off: u64) -> BoxFuture<'_, Result<()>> {
        async move {
            let data = self.get(chunk).await?;
            blocking(move || out.write_at(&data, off)).await
        }
        .boxed()
    }

    /// Whether a chunk is present (no content check).
    fn exists(&self, id: ChunkId) -> BoxFuture<'_, Result<bool>>;

    /// Make the names of every chunk stored or relied on through this backend durable,
    /// `concurrency` operations at a time.
    fn sync(&self, concurrency: usize) -> BoxFuture<'_, Result<()>>;

    /// Write a small document create-only, durable (name included) on return; true when this
    /// call created it, false when the key already held a document.
    fn put_doc(&self, key: String, body: Bytes, concurrency: usize) -> BoxFuture<'_, Result<bool>>;

    /// A document's bytes, `None` when absent.
    fn get_doc(&self, key: String) -> BoxFuture<'_, Result<Option<Bytes>>>;

    /// Every object below `prefix` with its size and modification time, staging files
    /// flagged, in key order.
    fn list_objects(&self, prefix: String) -> BoxFuture<'_, Result<Vec<Listed>>>;

    /// Delete a document (or marker); false when it was not there. Durable once
    /// [`ChunkBackend::sync`] has run.
    fn delete(&self, key: String) -> BoxFuture<'_, Result<bool>>;

    /// Delete chunk `id` unless it was written or refreshed at or after `fresh_since`: a
    /// writer that relies on an existing chunk refreshes it first (`put_*`), so a chunk it
    /// relied on after garbage collection listed it is kept. The check and the deletion are
    /// one step where the backend allows (local: rename aside, look, delete or put back).
    fn remove_chunk_unless_fresh(
        &self,
        id: ChunkId,
        fresh_since: chrono::DateTime<chrono::Utc>,
    ) -> BoxFuture<'_, Result<ChunkRemoval>>;

    /// Remove a staging file a killed process left; a chunk a killed garbage collection set
    /// aside is put back under its name instead. Returns the bytes freed.
    fn clear_staging(&self, key: String) -> BoxFuture<'_, Result<u64>>;

    /// How long a backup waits after writing its marker before relying on any existing
    /// chunk: longer than garbage collection takes from its last look at the markers to a
    /// deletion, where a relied-on chunk is not refreshed (object stores).
    fn marker_settle(&self) -> Duration;
}

/// On object stores garbage collection (`pitr_core::expire`) starts a deletion at most 1 s
/// after it last looked at the markers; this bound leaves that a margin for the HEAD and
/// DELETE themselves, and a backup waits twice it after writing its marker.
pub(crate) const OBJECT_MARKER_RECHECK: Duration = Duration::from_secs(2);

/// Chunks in any `object_store` backend: a completed PUT is durable, so `sync` has nothing
/// to do.
#[derive(Debug)]
pub(crate) struct ObjectChunks {
    backend: Backend,
    codec: Codec,
}

impl ObjectChunks {
    pub fn new(backend: Backend, codec: Codec) -> Self {
        ObjectChunks { backend, codec }
    }

    async fn head(&self, id: &ChunkId) -> Result<bool> {
        let key = id.key();
        match self.backend.store.head(&self.backend.path(&key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(StoreError::backend(key, e)),
        }
    }

    /// Hash, look for, compress and write a chunk, each step only when still needed.
    async fn put_looking_first(&self, data: Bytes) -> Result<(ChunkRef, u64)> {
        let len = data.len() as u32;
        let codec = self.codec.clone();
        let (id, data) = tokio::task::spawn_blocking(move || (codec.id(&data), data))
            .await
            .expect("hashing does not panic");
        // A HEAD is far cheaper than compressing and uploading a chunk we already have.
        if self.head(&id).await? {
            return Ok((ChunkRef { id, len }, 0));
        }
        let codec = self.codec.clone();
        let body = tokio::task::spawn_blocking(move || codec.encode(&id, &data))
            .await
            .expect("compression does not panic");
        self.write(ChunkRef { id, len }, body).await
    }

    /// Write an encoded chunk body create-only; returns the bytes written (0 if it existed).
    async fn write(&self, chunk: ChunkRef, body: Vec<u8>) -> Result<(ChunkRef, u64)> {
        let key = chunk.id.key();
        let stored = body.len() as u64;
        let opts = PutOptions::from(PutMode::Create);
        let body = Bytes::from(body);
        let body_again = body.clone();
        match self
            .backend
            .store
            .put_opts(&self.backend.path(&key), PutPayload::from(body), opts)
            .await
        {
            Ok(_) => Ok((chunk, stored)),
            // Same key means same content: another writer got there first. The caller is
            // about to rely on it, so it is written again (the same bytes) to refresh its
            // modification time: garbage collection keeps chunks refreshed after its listing.
            Err(object_store::Error::AlreadyExists { .. }) => {
                self.backend
                    .store
                    .put(&self.backend.path(&key), PutPayload::from(body_again))
                    .await
                    .map_err(|e| StoreError::backend(&key, e))?;
                Ok((chunk, 0))
            }
            Err(e) => Err(StoreError::backend(key, e)),
        }
    }
}

impl ChunkBackend for ObjectChunks {
    fn put_new(&self, data: Bytes) -> BoxFuture<'_, Result<(ChunkRef, u64)>> {
        async move {
            let len = data.len() as u32;
            let codec = self.codec.clone();
            let (id, body) = tokio::task::spawn_blocking(move || {
                let id = codec.id(&data);
                (id, codec.encode(&id, &data))
            })
            .await
            .expect("hashing and compression do not panic");
            self.write(ChunkRef { id, len }, body).await
        }
        .boxed()
    }

    fn put_backup(
        &self,
        data: Bytes,
        known: Option<KnownChunk>,
    ) -> BoxFuture<'_, Result<BackupChunk>> {
        async move {
            let len = data.len() as u32;
            let (fingerprint, data) =
                tokio::task::spawn_blocking(move || (Fingerprint::of(&data), data))
                    .await
                    .expect("hashing does not panic");
            if let Some(k) = same_as_known(known, &fingerprint, len) {
                if self.head(&k.chunk.id).await? {
                    return Ok(BackupChunk::recognised(k.chunk, fingerprint));
                }
            }
            let (chunk, stored) = self.put_looking_first(data).await?;
            Ok(BackupChunk::hashed(chunk, fingerprint, stored))
        }
        .boxed()
    }

    fn get(&self, chunk: ChunkRef) -> BoxFuture<'_, Result<Bytes>> {
        async move {
            let key = chunk.id.key();
            let got = self
                .backend
                .store
                .get(&self.backend.path(&key))
                .await
                .map_err(|e| StoreError::backend(&key, e))?;
            too_large(&key, got.meta.size, self.codec.max_stored_len(&chunk))?;
            let body = got
                .bytes()
                .await
                .map_err(|e| StoreError::backend(&key, e))?;
            let codec = self.codec.clone();
            blocking(move || codec.decode(&chunk, body.into()).map(Bytes::from)).await
        }
        .boxed()
    }

    fn exists(&self, id: ChunkId) -> BoxFuture<'_, Result<bool>> {
        async move { self.head(&id).await }.boxed()
    }

    fn sync(&self, _concurrency: usize) -> BoxFuture<'_, Result<()>> {
        async { Ok(()) }.boxed()
    }

    fn put_doc(&self, key: String, body: Bytes, _: usize) -> BoxFuture<'_, Result<bool>> {
        async move {
            let opts = PutOptions::from(PutMode::Create);
            let path = self.backend.path(&key);
            match self
                .backend
                .store
                .put_opts(&path, PutPayload::from(body), opts)
                .await
            {
                Ok(_) => Ok(true),
                Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
                Err(e) => Err(StoreError::backend(key, e)),
            }
        }
        .boxed()
    }

    fn get_doc(&self, key: String) -> BoxFuture<'_, Result<Option<Bytes>>> {
        async move {
            let got = match self.backend.store.get(&self.backend.path(&key)).await {
                Ok(g) => g,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(StoreError::backend(key, e)),
            };
            too_large(&key, got.meta.size, crate::keys::max_doc_len(&key))?;
            got.bytes()
                .await
                .map(Some)
                .map_err(|e| StoreError::backend(key, e))
        }
        .boxed()
    }

    fn list_objects(&self, prefix: String) -> BoxFuture<'_, Result<Vec<Listed>>> {
        async move {
            let path = self.backend.path(prefix.trim_end_matches('/'));
            let mut out = Vec::new();
            let mut stream = self.backend.store.list(Some(&path));
            while let Some(meta) = stream.next().await {
                let meta = meta.map_err(|e| StoreError::backend(&prefix, e))?;
                let key = self.backend.key_of(&meta.location).to_string();
                out.push(Listed {
                    staging: key.contains('#'),
                    key,
                    size: meta.size,
                    modified: meta.last_modified,
                });
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        }
        .boxed()
    }

    fn delete(&self, key: String) -> BoxFuture<'_, Result<bool>> {
        async move {
            match self.backend.store.delete(&self.backend.path(&key)).await {
                Ok(()) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(StoreError::backend(key, e)),
            }
        }
        .boxed()
    }

    /// A HEAD, then the DELETE: the one window left is a refresh landing between the two
    /// (docs/format.md, "Garbage collection").
    fn remove_chunk_unless_fresh(
        &self,
        id: ChunkId,
        fresh_since: chrono::DateTime<chrono::Utc>,
    ) -> BoxFuture<'_, Result<ChunkRemoval>> {
        async move {
            let key = id.key();
            let path = self.backend.path(&key);
            let meta = match self.backend.store.head(&path).await {
                Ok(m) => m,
                Err(object_store::Error::NotFound { .. }) => return Ok(ChunkRemoval::Absent),
                Err(e) => return Err(StoreError::backend(key, e)),
            };
            if meta.last_modified >= fresh_since {
                return Ok(ChunkRemoval::Fresh);
            }
            match self.backend.store.delete(&path).await {
                Ok(()) => Ok(ChunkRemoval::Deleted(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(ChunkRemoval::Absent),
                Err(e) => Err(StoreError::backend(key, e)),
            }
        }
        .boxed()
    }

    fn clear_staging(&self, key: String) -> BoxFuture<'_, Result<u64>> {
        async move {
            let path = self.backend.path(&key);
            let size = match self.backend.store.head(&path).await {
                Ok(m) => m.size,
                Err(object_store::Error::NotFound { .. }) => return Ok(0),
                Err(e) => return Err(StoreError::backend(key, e)),
            };
            self.delete(key).await?;
            Ok(size)
        }
        .boxed()
    }

    fn marker_settle(&self) -> Duration {
        2 * OBJECT_MARKER_RECHECK
    }
}

/// `known`, when it has `fingerprint` and `len`: then the new bytes are that chunk.
pub(crate) fn same_as_known(
    known: Option<KnownChunk>,
    fingerprint: &Fingerprint,
    len: u32,
) -> Option<KnownChunk> {
    known.filter(|k| k.fingerprint == *fingerprint && k.chunk.len == len)
}

/// A file being filled with chunks at their offsets, named `what` in errors.
#[derive(Debug)]
pub(crate) struct OutFile {
    file: Arc<std::fs::File>,
    what: String,
    /// One writer at a time per file: concurrent buffered writes to one file contend for its
    /// inode lock, and the kernel spins on it while the holder runs — CPU the other chunks
    /// need for decompression and hashing. A waiter here sleeps instead.
    one_writer: Mutex<()>,
}

impl OutFile {
    pub fn new(file: Arc<std::fs::File>, what: &str) -> Self {
        OutFile {
            file,
            what: what.to_string(),
            one_writer: Mutex::new(()),
        }
    }

    /// Write `data` at `off`, holding the file's one-writer lock, and start its writeback
    /// now, so the disk works while the rest of the file is still being fetched and the
    /// caller's final sync has little left to wait for.
    pub fn write_at(&self, data: &[u8], off: u64) -> Result<()> {
        use std::os::fd::AsRawFd;
        let _w = self.one_writer.lock().unwrap_or_else(|p| p.into_inner());
        self.file
            .write_all_at(data, off)
            .map_err(|source| StoreError::Io {
                key: self.what.clone(),
                source,
            })?;
        // SAFETY: a plain syscall on an open descriptor; failure only means no early writeback.
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                off as libc::off64_t,
                data.len() as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        Ok(())
    }
}

/// Run repository I/O or CPU work on a blocking thread.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .expect("repository I/O does not panic")
}

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

/// An object `size` bytes long where at most `max` can be (what its reference or its kind
/// allows) is refused, naming it, before its body is read.
pub(crate) fn too_large(key: &str, size: u64, max: u64) -> Result<()> {
    if size > max {
        return Err(StoreError::Corrupt {
            key: key.to_string(),
            detail: format!("{size} bytes stored, more than the {max} it can take; not read"),
        });
    }
    Ok(())
}
