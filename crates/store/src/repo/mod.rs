//! The repository: a [`Location`] plus its versioned configuration, with the chunk and document
//! operations everything else is built from. One type, [`Repo`], its operations in one file
//! per concern:
//! - `config.rs`: `config.json` ([`RepoConfig`]) and its checks;
//! - `open.rs`: `init`, `init_encrypted`, `open` and unlocking an encrypted repository;
//! - `documents.rs`: create-only documents, sealed when encrypted, and listing;
//! - `chunk_io.rs`: chunks and files made of chunks;
//! - `gc.rs`: what `pitr expire` lists and deletes;
//! - `key_slots.rs`: key slots (`pitr key …`).

use std::sync::Arc;

use object_store::ObjectStore;
use tokio::sync::Semaphore;

use crate::backend::{ChunkBackend, Codec, LocalBackend, ObjectStoreBackend};
use crate::chunk::ChunkId;
use crate::crypto::{Keys, MasterKey};
use crate::Location;

mod chunk_io;
mod config;
mod documents;
mod gc;
mod key_slots;
mod open;

pub use chunk_io::{BackupChunk, ChunkRef, KnownChunk, PutSummary};
pub use config::{EncryptionConfig, RepoConfig, ENCRYPTED_FORMAT_VERSION, FORMAT_VERSION};
pub use documents::DocWrite;
pub use open::InitOutcome;

/// An unlocked encrypted repository's keys.
#[derive(Debug)]
pub(crate) struct Unlocked {
    keys: Arc<Keys>,
    master: MasterKey,
    /// The slot that opened it (`None`: an exported master key).
    slot: Option<String>,
}

/// An opened repository.
#[derive(Clone, Debug)]
pub struct Repo {
    location: Location,
    config: RepoConfig,
    unlocked: Option<Arc<Unlocked>>,
    /// Chunk IDs and bodies, and (its keys) document sealing: what the backends were given.
    codec: Codec,
    /// Chunks in flight at once, shared by every file this handle is storing (bounds memory
    /// at about twice this times the chunk size).
    concurrency: usize,
    limiter: Arc<Semaphore>,
    /// Where the chunks and documents live (see `backend/`), shared by clones.
    chunks: Arc<dyn ChunkBackend>,
}

impl Repo {
    fn new(
        location: Location,
        config: RepoConfig,
        unlocked: Option<Arc<Unlocked>>,
        jobs: usize,
    ) -> Repo {
        let codec = Codec {
            level: config.compression_level,
            keys: unlocked.as_ref().map(|u| Arc::clone(&u.keys)),
        };
        // The one place that looks at the kind of backend.
        let chunks: Arc<dyn ChunkBackend> = match &location.local_root {
            Some(root) => Arc::new(LocalBackend::new(root.clone(), codec.clone())),
            None => Arc::new(ObjectStoreBackend::new(location.clone(), codec.clone())),
        };
        Repo {
            location,
            config,
            unlocked,
            codec,
            concurrency: jobs,
            limiter: Arc::new(Semaphore::new(jobs)),
            chunks,
        }
    }

    /// Create the repository at `url` (reached with `options`; its secret is not used: an
    /// encrypted repository is made by [`Repo::init_encrypted`]). Running it again with the
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }
    /// The cipher of an encrypted repository (`None`: unencrypted).
    pub fn cipher(&self) -> Option<&str> {
        self.config.encryption.as_ref().map(|e| e.cipher.as_str())
    }
    /// A chunk's ID: the SHA-256 of `data`, or its keyed BLAKE3 in an encrypted repository.
    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        self.codec.id(data)
    }
    pub fn location(&self) -> &Location {
        &self.location
    }
    pub fn url(&self) -> &str {
        &self.location.url
    }
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self.limiter = Arc::new(Semaphore::new(self.concurrency));
        self
    }
    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.location.store
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RepoOptions;
    use bytes::Bytes;

    /// A new local repository at `dir`, with its chunk backend at hand to look into.
    async fn local_repo(dir: &std::path::Path) -> (Repo, Arc<LocalBackend>) {
        let url = dir.display().to_string();
        let (repo, _) = Repo::init(&url, RepoConfig::default(), &RepoOptions::default())
            .await
            .unwrap();
        let codec = Codec {
            level: repo.config.compression_level,
            keys: None,
        };
        let local = Arc::new(LocalBackend::new(dir.to_path_buf(), codec));
        let chunks: Arc<dyn ChunkBackend> = local.clone();
        (Repo { chunks, ..repo }, local)
    }

    /// On a local repository a chunk's directory is fsynced at the latest before the next
    /// document: put_doc runs the pending batch first, on every clone of the handle.
    #[tokio::test]
    async fn documents_wait_for_the_chunks_directories() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, local) = local_repo(dir.path()).await;
        assert!(local.pending().is_empty());
        let clone = repo.clone();
        let (c, n) = clone.put_chunk(Bytes::from(vec![7u8; 5000])).await.unwrap();
        assert!(n > 0);
        let chunk_dir = dir.path().join(c.id.key()).parent().unwrap().to_path_buf();
        assert_eq!(local.pending(), std::slice::from_ref(&chunk_dir));
        repo.put_doc("docs/a.json", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert!(local.pending().is_empty());
        // relying on a chunk that exists already puts its directory in the next batch too
        let (_, n) = repo.put_chunk(Bytes::from(vec![7u8; 5000])).await.unwrap();
        assert_eq!(n, 0);
        assert_eq!(local.pending(), [chunk_dir]);
        repo.sync().await.unwrap();
        assert!(local.pending().is_empty());
        // and the chunk reads back through both paths
        assert_eq!(repo.get_chunk(&c).await.unwrap().len(), 5000);
        let remote_path = Repo {
            chunks: Arc::new(ObjectStoreBackend::new(
                repo.location.clone(),
                Codec {
                    level: 1,
                    keys: None,
                },
            )),
            ..repo.clone()
        };
        assert_eq!(remote_path.get_chunk(&c).await.unwrap().len(), 5000);
    }

    #[tokio::test]
    async fn a_failed_directory_sync_names_the_directory_and_stays_pending() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, local) = local_repo(dir.path()).await;
        let (c, _) = repo.put_chunk(Bytes::from(vec![1u8; 100])).await.unwrap();
        let chunk_dir = dir.path().join(c.id.key()).parent().unwrap().to_path_buf();
        std::fs::remove_dir_all(dir.path().join("chunks")).unwrap();
        let e = repo.sync().await.unwrap_err();
        assert!(
            e.to_string().contains(&chunk_dir.display().to_string()),
            "{e}"
        );
        assert_eq!(local.pending(), std::slice::from_ref(&chunk_dir));
        // and no document is written while it is pending
        let e = repo
            .put_doc("docs/b.json", Bytes::from_static(b"{}"))
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains(&chunk_dir.display().to_string()),
            "{e}"
        );
        assert_eq!(repo.get_doc("docs/b.json").await.unwrap(), None);
    }

    /// A WAL file that shrinks while archive-wal reads it is an error naming the file (with
    /// a memory map it was SIGBUS, which PostgreSQL's archiver reads as a crash).
    #[tokio::test]
    async fn put_file_of_a_file_that_shrank_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, _) = local_repo(&dir.path().join("repo")).await;
        let path = dir.path().join("000000010000000000000001");
        std::fs::write(&path, vec![3u8; 16 << 20]).unwrap();
        let file = Arc::new(std::fs::File::open(&path).unwrap());
        // Truncated right after open, as by a concurrent writer.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(8192)
            .unwrap();
        let what = path.display().to_string();
        let e = repo.put_file(file, 16 << 20, &what).await.unwrap_err();
        let text = e.to_string();
        assert!(text.contains(&what) && text.contains("shrank"), "{text}");
    }
}
