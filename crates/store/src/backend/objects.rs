//! [`ObjectStoreBackend`]: chunks and documents in any `object_store` backend (S3, GCS,
//! Azure, memory), reached through the repository's [`Location`].

use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::{blocking, same_as_known, too_large, ChunkBackend, ChunkRemoval, Codec, Listed};
use crate::chunk::{ChunkId, Fingerprint};
use crate::repo::{BackupChunk, ChunkRef, KnownChunk};
use crate::{Location, Result, StoreError};

/// On object stores garbage collection (`pitr_core::expire`) starts a deletion at most 1 s
/// after it last looked at the markers; this bound leaves that a margin for the HEAD and
/// DELETE themselves, and a backup waits twice it after writing its marker.
pub(crate) const OBJECT_MARKER_RECHECK: Duration = Duration::from_secs(2);

/// Chunks in any `object_store` backend: a completed PUT is durable, so `sync` has nothing
/// to do.
#[derive(Debug)]
pub(crate) struct ObjectStoreBackend {
    location: Location,
    codec: Codec,
}

impl ObjectStoreBackend {
    pub fn new(location: Location, codec: Codec) -> Self {
        ObjectStoreBackend { location, codec }
    }

    async fn head(&self, id: &ChunkId) -> Result<bool> {
        let key = id.key();
        match self.location.store.head(&self.location.path(&key)).await {
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
            .location
            .store
            .put_opts(&self.location.path(&key), PutPayload::from(body), opts)
            .await
        {
            Ok(_) => Ok((chunk, stored)),
            // Same key means same content: another writer got there first. The caller is
            // about to rely on it, so it is written again (the same bytes) to refresh its
            // modification time: garbage collection keeps chunks refreshed after its listing.
            Err(object_store::Error::AlreadyExists { .. }) => {
                self.location
                    .store
                    .put(&self.location.path(&key), PutPayload::from(body_again))
                    .await
                    .map_err(|e| StoreError::backend(&key, e))?;
                Ok((chunk, 0))
            }
            Err(e) => Err(StoreError::backend(key, e)),
        }
    }
}

impl ChunkBackend for ObjectStoreBackend {
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
                .location
                .store
                .get(&self.location.path(&key))
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
            let path = self.location.path(&key);
            match self
                .location
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
            let got = match self.location.store.get(&self.location.path(&key)).await {
                Ok(g) => g,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(StoreError::backend(key, e)),
            };
            too_large(&key, got.meta.size, crate::layout::max_doc_len(&key))?;
            got.bytes()
                .await
                .map(Some)
                .map_err(|e| StoreError::backend(key, e))
        }
        .boxed()
    }

    fn list_objects(&self, prefix: String) -> BoxFuture<'_, Result<Vec<Listed>>> {
        async move {
            let path = self.location.path(prefix.trim_end_matches('/'));
            let mut out = Vec::new();
            let mut stream = self.location.store.list(Some(&path));
            while let Some(meta) = stream.next().await {
                let meta = meta.map_err(|e| StoreError::backend(&prefix, e))?;
                let key = self.location.key_of(&meta.location).to_string();
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
            match self.location.store.delete(&self.location.path(&key)).await {
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
            let path = self.location.path(&key);
            let meta = match self.location.store.head(&path).await {
                Ok(m) => m,
                Err(object_store::Error::NotFound { .. }) => return Ok(ChunkRemoval::Absent),
                Err(e) => return Err(StoreError::backend(key, e)),
            };
            if meta.last_modified >= fresh_since {
                return Ok(ChunkRemoval::Fresh);
            }
            match self.location.store.delete(&path).await {
                Ok(()) => Ok(ChunkRemoval::Deleted(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(ChunkRemoval::Absent),
                Err(e) => Err(StoreError::backend(key, e)),
            }
        }
        .boxed()
    }

    fn clear_staging(&self, key: String) -> BoxFuture<'_, Result<u64>> {
        async move {
            let path = self.location.path(&key);
            let size = match self.location.store.head(&path).await {
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
