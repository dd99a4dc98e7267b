//! Garbage collection's side of the repository: listing objects with their modification
//! times, deleting documents (in parallel or in order) and chunks, clearing staging files.

use futures::{StreamExt, TryStreamExt};

use crate::backend::{ChunkRemoval, Listed};
use crate::chunk::ChunkId;
use crate::{Repo, Result};

/// Garbage collection's operations. Deleting is only ever done by `pitr expire`, in the order
/// and under the rules of docs/format.md ("Garbage collection").
impl Repo {
    /// Every object below `prefix` with its size and modification time (staging files
    /// flagged), in key order.
    pub async fn list_objects(&self, prefix: &str) -> Result<Vec<Listed>> {
        self.chunks.list_objects(prefix.to_string()).await
    }

    /// Delete documents (manifests, refs, pins, markers), `concurrency` at a time, and make
    /// the deletions durable before returning: a chunk must never go while a document that
    /// names it could come back after a crash. Returns how many were there.
    pub async fn delete_docs(&self, keys: &[String]) -> Result<usize> {
        let deleted: Vec<bool> = futures::stream::iter(keys.iter().cloned())
            .map(|key| self.chunks.delete(key))
            .buffer_unordered(self.concurrency)
            .try_collect()
            .await?;
        self.sync().await?;
        Ok(deleted.into_iter().filter(|&d| d).count())
    }

    /// Delete documents one after the other, in the order given, then make the deletions
    /// durable: a process killed in the middle leaves a prefix deleted and the rest intact
    /// (expired WAL goes oldest first, so no hole opens in the archive). Returns how many
    /// were there.
    pub async fn delete_docs_in_order(&self, keys: &[String]) -> Result<usize> {
        let mut deleted = 0;
        for key in keys {
            deleted += usize::from(self.chunks.delete(key.clone()).await?);
        }
        self.sync().await?;
        Ok(deleted)
    }

    /// Delete chunk `id` unless it was written or refreshed at or after `fresh_since` (a
    /// writer relies on it). Durable after [`Repo::sync`].
    pub async fn remove_chunk_unless_fresh(
        &self,
        id: &ChunkId,
        fresh_since: chrono::DateTime<chrono::Utc>,
    ) -> Result<ChunkRemoval> {
        self.chunks
            .remove_chunk_unless_fresh(*id, fresh_since)
            .await
    }

    /// Remove a staging file a killed process left (a [`Listed`] with `staging`); a chunk a
    /// killed garbage collection had set aside goes back. Returns the bytes freed.
    pub async fn clear_staging(&self, key: &str) -> Result<u64> {
        self.chunks.clear_staging(key.to_string()).await
    }

    /// How long a backup waits between writing its marker and relying on any existing chunk
    /// (zero where relying refreshes the chunk and deletion re-checks atomically).
    pub fn marker_settle(&self) -> std::time::Duration {
        self.chunks.marker_settle()
    }
}
