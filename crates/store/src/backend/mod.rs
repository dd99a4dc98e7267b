//! The one seam between the repository logic and where objects live: [`ChunkBackend`], the
//! whole-chunk operations (store, fetch, exists, sync) and whole-document ones (create-only
//! write, read, delete, list), so that `Repo` never branches on the backend. Two
//! implementations: [`ObjectStoreBackend`] over any `object_store` backend (`objects.rs`) and
//! [`LocalBackend`] for local directories (`local.rs`), which does each chunk's hashing,
//! compression and file I/O in one blocking step. Which one a repository gets is decided from
//! its [`crate::Location`] in `Repo::new`.
//!
//! Whole chunks, not bytes, cross the seam so that an implementation may choose how many
//! thread hops a chunk costs: on two cores that was measured to matter.

use std::fmt;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;

use crate::chunk::{ChunkId, Fingerprint};
use crate::repo::{BackupChunk, ChunkRef, KnownChunk};
use crate::{Result, StoreError};

pub(crate) mod local;
mod objects;

pub(crate) use crate::codec::Codec;
pub(crate) use local::LocalBackend;
pub(crate) use objects::ObjectStoreBackend;

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
