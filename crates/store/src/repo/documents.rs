//! Documents: small create-only JSON objects (config, refs, manifests, pins, markers), sealed
//! in an encrypted repository, and listing keys below a prefix.

use bytes::Bytes;
use futures::StreamExt;

use crate::{layout, Repo, Result, StoreError};

/// Result of a create-only document write.
#[derive(Debug, PartialEq, Eq)]
pub enum DocWrite {
    Created,
    /// A document already had this key; its bytes are returned for the caller to compare.
    Exists(Bytes),
}

impl Repo {
    /// Write a small document create-only. Callers write documents only after every chunk they
    /// name is durable.
    pub async fn put_doc(&self, key: &str, body: Bytes) -> Result<DocWrite> {
        self.sync().await?;
        let body = match &self.codec.keys {
            Some(k) if !layout::is_unsealed(key) => Bytes::from(k.seal(key, &body)),
            _ => body,
        };
        if self
            .chunks
            .put_doc(key.to_string(), body, self.concurrency)
            .await?
        {
            return Ok(DocWrite::Created);
        }
        let existing = self
            .get_doc(key)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                key: key.to_string(),
            })?;
        Ok(DocWrite::Exists(existing))
    }

    /// Make every chunk this handle (or a clone) stored or relied on durable under its name.
    /// Chunk bytes are durable when `put_*` returns; on a local repository the directory
    /// entries are fsynced here, in one batch. `put_doc` runs this first.
    pub async fn sync(&self) -> Result<()> {
        self.chunks.sync(self.concurrency).await
    }

    /// Read a document; `None` when absent.
    pub async fn get_doc(&self, key: &str) -> Result<Option<Bytes>> {
        let body = self.chunks.get_doc(key.to_string()).await?;
        match (&self.codec.keys, body) {
            (Some(k), Some(body)) if !layout::is_unsealed(key) => k
                .open(key, &body)
                .map(|b| Some(Bytes::from(b)))
                .map_err(|detail| StoreError::Corrupt {
                    key: key.to_string(),
                    detail,
                }),
            (_, body) => Ok(body),
        }
    }

    /// Keys and sizes of every object below `prefix` (a key prefix such as `wal/`).
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let path = self.location.path(prefix.trim_end_matches('/'));
        let mut out = Vec::new();
        let mut stream = self.store().list(Some(&path));
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|e| StoreError::backend(prefix, e))?;
            let key = self.location.key_of(&meta.location).to_string();
            // The local store stages uploads as `<dest>#<n>`; never report those.
            if key.contains('#') {
                continue;
            }
            out.push((key, meta.size));
        }
        out.sort();
        Ok(out)
    }
}
