//! The repository: a backend plus its versioned configuration, with the chunk and document
//! operations everything else is built from.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::chunk::{decode_chunk, encode_chunk, ChunkId, Fingerprint};
use crate::local::LocalChunks;
use crate::{Backend, Result, StoreError};

pub const FORMAT_VERSION: u32 = 1;
const CONFIG_KEY: &str = "config.json";

/// `config.json`, written once by `pitr init`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RepoConfig {
    pub format_version: u32,
    /// Bytes per chunk when files are split (a multiple of PostgreSQL's 8 KiB page).
    pub chunk_size: u32,
    /// Bytes per chunk for archived WAL files: WAL never dedups against itself, so fewer,
    /// larger chunks mean fewer objects and syncs, while a 16 MiB segment still splits into
    /// enough pieces to hash and compress on every core.
    #[serde(default = "default_wal_chunk_size")]
    pub wal_chunk_size: u32,
    /// zstd level for new chunks.
    pub compression_level: i32,
}

fn default_wal_chunk_size() -> u32 {
    4 << 20
}

impl Default for RepoConfig {
    fn default() -> Self {
        RepoConfig {
            format_version: FORMAT_VERSION,
            chunk_size: 1 << 20,
            wal_chunk_size: default_wal_chunk_size(),
            compression_level: 1,
        }
    }
}

impl RepoConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.format_version != FORMAT_VERSION {
            return Err(format!(
                "format version {} (this pitr reads version {FORMAT_VERSION})",
                self.format_version
            ));
        }
        for (what, size) in [
            ("chunk size", self.chunk_size),
            ("WAL chunk size", self.wal_chunk_size),
        ] {
            if !(8192..=(64 << 20)).contains(&size) || !size.is_multiple_of(8192) {
                return Err(format!(
                    "{what} {size} is not a multiple of 8 KiB between 8 KiB and 64 MiB"
                ));
            }
        }
        if !(-7..=22).contains(&self.compression_level) {
            return Err(format!(
                "compression level {} is outside zstd's -7..=22",
                self.compression_level
            ));
        }
        Ok(())
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum InitOutcome {
    Created,
    AlreadyInitialized,
}

/// Result of a create-only document write.
#[derive(Debug, PartialEq, Eq)]
pub enum DocWrite {
    Created,
    /// A document already had this key; its bytes are returned for the caller to compare.
    Exists(Bytes),
}

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

/// What storing a file cost.
#[derive(Clone, Debug, Default)]
pub struct PutSummary {
    pub chunks: Vec<ChunkRef>,
    pub raw_bytes: u64,
    /// Bytes of new chunk bodies written (0 for chunks the repository already had).
    pub stored_bytes: u64,
    pub new_chunks: usize,
}

/// An opened repository.
#[derive(Clone, Debug)]
pub struct Repo {
    backend: Backend,
    config: RepoConfig,
    /// Chunks in flight at once, shared by every file this handle is storing (bounds memory
    /// at about twice this times the chunk size).
    concurrency: usize,
    limiter: Arc<Semaphore>,
    /// Direct file access for local repositories (see `local.rs`), shared by clones.
    local: Option<Arc<LocalChunks>>,
}

/// Chunks in flight by default: enough to overlap every fsync or network round trip of a
/// 16 MiB WAL segment in 1 MiB chunks; `PITR_JOBS` overrides.
fn default_concurrency() -> usize {
    std::env::var("PITR_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(16)
}

/// `config.json`'s bytes as a configuration this pitr can use.
fn parse_config(url: &str, body: &[u8]) -> Result<RepoConfig> {
    let config: RepoConfig = serde_json::from_slice(body).map_err(|e| StoreError::Corrupt {
        key: CONFIG_KEY.into(),
        detail: e.to_string(),
    })?;
    validate(url, &config)?;
    Ok(config)
}

fn validate(url: &str, config: &RepoConfig) -> Result<()> {
    config
        .validate()
        .map_err(|detail| StoreError::ConfigMismatch {
            url: url.to_string(),
            detail,
        })
}

impl Repo {
    fn new(backend: Backend, config: RepoConfig) -> Repo {
        let local = backend
            .local_root
            .clone()
            .map(|root| Arc::new(LocalChunks::new(root)));
        Repo {
            backend,
            config,
            concurrency: default_concurrency(),
            limiter: Arc::new(Semaphore::new(default_concurrency())),
            local,
        }
    }

    /// Create the repository at `url`. Running it again with the same settings is fine.
    pub async fn init(url: &str, config: RepoConfig) -> Result<(Repo, InitOutcome)> {
        validate(url, &config)?;
        let backend = Backend::connect(url, true)?;
        let body = serde_json::to_vec_pretty(&config).expect("config serializes");
        let repo = Repo::new(backend, config.clone());
        match repo.put_doc(CONFIG_KEY, body.into()).await? {
            DocWrite::Created => Ok((repo, InitOutcome::Created)),
            DocWrite::Exists(existing) => {
                let found: RepoConfig =
                    serde_json::from_slice(&existing).map_err(|e| StoreError::Corrupt {
                        key: CONFIG_KEY.into(),
                        detail: e.to_string(),
                    })?;
                if found == config {
                    Ok((repo, InitOutcome::AlreadyInitialized))
                } else {
                    Err(StoreError::ConfigMismatch {
                        url: url.to_string(),
                        detail: format!(
                            "it has chunk size {}, WAL chunk size {}, compression level {}, format {}; asked for {}, {}, {}, {}",
                            found.chunk_size,
                            found.wal_chunk_size,
                            found.compression_level,
                            found.format_version,
                            config.chunk_size,
                            config.wal_chunk_size,
                            config.compression_level,
                            config.format_version
                        ),
                    })
                }
            }
        }
    }

    /// Open an existing repository, reading its configuration.
    pub async fn open(url: &str) -> Result<Repo> {
        let backend = Backend::connect(url, false)?;
        let mut repo = Repo::new(backend, RepoConfig::default());
        let body = match repo.get_doc(CONFIG_KEY).await? {
            Some(b) => b,
            None => {
                return Err(StoreError::NotInitialized {
                    url: url.to_string(),
                })
            }
        };
        repo.config = parse_config(url, &body)?;
        Ok(repo)
    }

    pub fn config(&self) -> &RepoConfig {
        &self.config
    }
    pub fn backend(&self) -> &Backend {
        &self.backend
    }
    pub fn url(&self) -> &str {
        &self.backend.url
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
        &self.backend.store
    }

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
        let len = data.len() as u32;
        let done = |chunk, fingerprint, stored, recognised| BackupChunk {
            chunk,
            fingerprint,
            stored,
            recognised,
        };
        let same =
            move |fp: &Fingerprint| known.filter(|k| k.fingerprint == *fp && k.chunk.len == len);
        if let Some(local) = &self.local {
            let local = Arc::clone(local);
            let level = self.config.compression_level;
            return blocking(move || {
                let fp = Fingerprint::of(&data);
                if let Some(k) = same(&fp) {
                    let key = k.chunk.id.key();
                    let found = local
                        .exists(&key)
                        .map_err(|source| StoreError::Io { key, source })?;
                    if found {
                        return Ok(done(k.chunk, fp, 0, true));
                    }
                }
                let (chunk, n) = local_put(&local, &data, level, true)?;
                Ok(done(chunk, fp, n, false))
            })
            .await;
        }
        let (fp, data) = tokio::task::spawn_blocking(move || (Fingerprint::of(&data), data))
            .await
            .expect("hashing does not panic");
        if let Some(k) = same(&fp) {
            if self.has_chunk(&k.chunk.id).await? {
                return Ok(done(k.chunk, fp, 0, true));
            }
        }
        let (chunk, n) = self.put_chunk_remote(data, len).await?;
        Ok(done(chunk, fp, n, false))
    }

    async fn put_chunk_remote(&self, data: Bytes, len: u32) -> Result<(ChunkRef, u64)> {
        let (id, data) = tokio::task::spawn_blocking(move || (ChunkId::of(&data), data))
            .await
            .expect("hashing does not panic");
        // A HEAD is far cheaper than compressing and uploading a chunk we already have.
        if self.has_chunk(&id).await? {
            return Ok((ChunkRef { id, len }, 0));
        }
        let level = self.config.compression_level;
        let body = tokio::task::spawn_blocking(move || encode_chunk(&data, level))
            .await
            .expect("compression does not panic");
        self.write_chunk(ChunkRef { id, len }, body).await
    }

    /// Store one chunk that is most likely new (WAL): hash and compress in one step, no
    /// existence check first; a chunk that already exists is still not written twice.
    pub async fn put_new_chunk(&self, data: Bytes) -> Result<(ChunkRef, u64)> {
        let len = data.len() as u32;
        let level = self.config.compression_level;
        if let Some(local) = &self.local {
            let local = Arc::clone(local);
            return blocking(move || local_put(&local, &data, level, false)).await;
        }
        let (id, body) =
            tokio::task::spawn_blocking(move || (ChunkId::of(&data), encode_chunk(&data, level)))
                .await
                .expect("hashing and compression do not panic");
        self.write_chunk(ChunkRef { id, len }, body).await
    }

    /// Write an encoded chunk body create-only; returns the bytes written (0 if it existed).
    async fn write_chunk(&self, chunk: ChunkRef, body: Vec<u8>) -> Result<(ChunkRef, u64)> {
        let key = chunk.id.key();
        let stored = body.len() as u64;
        let opts = PutOptions::from(PutMode::Create);
        match self
            .store()
            .put_opts(&self.backend.path(&key), PutPayload::from(body), opts)
            .await
        {
            Ok(_) => Ok((chunk, stored)),
            // Same key means same content: another writer got there first.
            Err(object_store::Error::AlreadyExists { .. }) => Ok((chunk, 0)),
            Err(e) => Err(StoreError::backend(key, e)),
        }
    }

    /// Read one chunk, re-hashing it; a mismatch is `Corrupt` naming the key.
    pub async fn get_chunk(&self, chunk: &ChunkRef) -> Result<Bytes> {
        let key = chunk.id.key();
        if let Some(local) = &self.local {
            let local = Arc::clone(local);
            let chunk = *chunk;
            return blocking(move || local_get(&local, &chunk).map(Bytes::from)).await;
        }
        let body = self
            .store()
            .get(&self.backend.path(&key))
            .await
            .map_err(|e| StoreError::backend(&key, e))?
            .bytes()
            .await
            .map_err(|e| StoreError::backend(&key, e))?;
        let chunk = *chunk;
        blocking(move || decode_checked(&chunk, &body).map(Bytes::from)).await
    }

    /// Whether a chunk is present (no content check).
    pub async fn has_chunk(&self, id: &ChunkId) -> Result<bool> {
        let key = id.key();
        if let Some(local) = &self.local {
            let local = Arc::clone(local);
            return blocking(move || {
                local
                    .exists(&key)
                    .map_err(|source| StoreError::Io { key, source })
            })
            .await;
        }
        match self.store().head(&self.backend.path(&key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(StoreError::backend(key, e)),
        }
    }

    /// Split `len` bytes of `file` into chunks and store them, `concurrency` chunks at a time,
    /// assuming they are new (WAL). Durability as for [`Repo::put_backup_chunk`]: the bytes on
    /// return, the names by the `put_doc` that names them. The file must not shrink meanwhile
    /// (WAL segments marked ready never do): it is memory-mapped, which saves a copy and the
    /// page faults of fresh read buffers.
    pub async fn put_file(
        &self,
        file: Arc<std::fs::File>,
        len: u64,
        what: &str,
    ) -> Result<PutSummary> {
        let chunk_size = u64::from(self.config.wal_chunk_size);
        let offsets: Vec<u64> = (0..len.div_ceil(chunk_size))
            .map(|i| i * chunk_size)
            .collect();
        let mapped = (len > 0).then(|| map_file(&file, len)).flatten();
        let results: Vec<(ChunkRef, u64)> = futures::stream::iter(offsets)
            .map(|off| {
                let file = Arc::clone(&file);
                let mapped = mapped.clone();
                let n = chunk_size.min(len - off) as usize;
                let what = what.to_string();
                async move {
                    let _permit = self.limiter.acquire().await.expect("limiter never closed");
                    let data = match mapped {
                        Some(m) => m.slice(off as usize..off as usize + n),
                        None => tokio::task::spawn_blocking(move || {
                            let mut buf = vec![0u8; n];
                            file.read_exact_at(&mut buf, off).map(|_| Bytes::from(buf))
                        })
                        .await
                        .expect("reading does not panic")
                        .map_err(|source| StoreError::Io {
                            key: format!("{what} at offset {off}"),
                            source,
                        })?,
                    };
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

    /// The chunk list of `file` cut into `chunk_size` pieces, without storing anything.
    pub async fn hash_file(
        &self,
        file: Arc<std::fs::File>,
        len: u64,
        chunk_size: u32,
        what: &str,
    ) -> Result<Vec<ChunkRef>> {
        let chunk_size = u64::from(chunk_size.max(1));
        let what = what.to_string();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let mut buf = vec![0u8; chunk_size as usize];
            let mut off = 0;
            while off < len {
                let n = chunk_size.min(len - off) as usize;
                file.read_exact_at(&mut buf[..n], off)
                    .map_err(|source| StoreError::Io {
                        key: format!("{what} at offset {off}"),
                        source,
                    })?;
                out.push(ChunkRef {
                    id: ChunkId::of(&buf[..n]),
                    len: n as u32,
                });
                off += n as u64;
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
        // One writer at a time per file: concurrent buffered writes to one file contend for
        // its inode lock, and the kernel spins on it while the holder runs — CPU the other
        // chunks need for decompression and hashing. A waiter here sleeps instead.
        let one_writer = Arc::new(std::sync::Mutex::new(()));
        futures::stream::iter(offsets)
            .map(|(chunk, off)| {
                let file = Arc::clone(&file);
                let what = what.to_string();
                let one_writer = Arc::clone(&one_writer);
                async move {
                    let _permit = self.limiter.acquire().await.expect("limiter never closed");
                    if let Some(local) = &self.local {
                        // Read, check and write in one blocking step.
                        let local = Arc::clone(local);
                        return blocking(move || {
                            let data = local_get(&local, &chunk)?;
                            write_at(&one_writer, &file, &data, off, what)
                        })
                        .await;
                    }
                    let data = self.get_chunk(&chunk).await?;
                    blocking(move || write_at(&one_writer, &file, &data, off, what)).await
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

    /// Write a small document create-only. Callers write documents only after every chunk they
    /// name is durable.
    pub async fn put_doc(&self, key: &str, body: Bytes) -> Result<DocWrite> {
        self.sync().await?;
        let path = self.backend.path(key);
        let opts = PutOptions::from(PutMode::Create);
        match self
            .store()
            .put_opts(&path, PutPayload::from(body), opts)
            .await
        {
            Ok(_) => Ok(DocWrite::Created),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let existing = self
                    .get_doc(key)
                    .await?
                    .ok_or_else(|| StoreError::NotFound {
                        key: key.to_string(),
                    })?;
                Ok(DocWrite::Exists(existing))
            }
            Err(e) => Err(StoreError::backend(key, e)),
        }
    }

    /// Make every chunk this handle (or a clone) stored or relied on durable under its name.
    /// Chunk bytes are durable when `put_*` returns; on a local repository the directory
    /// entries are fsynced here, in one batch. `put_doc` runs this first.
    pub async fn sync(&self) -> Result<()> {
        let Some(local) = &self.local else {
            return Ok(());
        };
        local
            .sync_dirs(self.concurrency)
            .await
            .map_err(|(dir, source)| StoreError::Io {
                key: dir.display().to_string(),
                source,
            })
    }

    /// Read a document; `None` when absent.
    pub async fn get_doc(&self, key: &str) -> Result<Option<Bytes>> {
        let path = self.backend.path(key);
        let got = match self.store().get(&path).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(StoreError::backend(key, e)),
        };
        got.bytes()
            .await
            .map(Some)
            .map_err(|e| StoreError::backend(key, e))
    }

    /// Keys and sizes of every object below `prefix` (a key prefix such as `wal/`).
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let path = self.backend.path(prefix.trim_end_matches('/'));
        let mut out = Vec::new();
        let mut stream = self.store().list(Some(&path));
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|e| StoreError::backend(prefix, e))?;
            let key = self.backend.key_of(&meta.location).to_string();
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

/// Write `data` at `off` of `file` (named `what` in errors), holding the file's one-writer
/// lock, and start its writeback now, so the disk works while the rest of the file is still
/// being fetched and the caller's final sync has little left to wait for.
fn write_at(
    one_writer: &std::sync::Mutex<()>,
    file: &std::fs::File,
    data: &[u8],
    off: u64,
    what: String,
) -> Result<()> {
    use std::os::fd::AsRawFd;
    let _w = one_writer.lock().unwrap_or_else(|p| p.into_inner());
    file.write_all_at(data, off)
        .map_err(|source| StoreError::Io { key: what, source })?;
    // SAFETY: a plain syscall on an open descriptor; failure only means no early writeback.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            off as libc::off64_t,
            data.len() as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .expect("repository I/O does not panic")
}

/// Hash, look for (with `look_first`), compress and write one chunk of a local repository.
fn local_put(
    local: &LocalChunks,
    data: &[u8],
    level: i32,
    look_first: bool,
) -> Result<(ChunkRef, u64)> {
    let chunk = ChunkRef {
        id: ChunkId::of(data),
        len: data.len() as u32,
    };
    let key = chunk.id.key();
    let io = |source| StoreError::Io {
        key: key.clone(),
        source,
    };
    if look_first && local.exists(&key).map_err(io)? {
        return Ok((chunk, 0));
    }
    let body = encode_chunk(data, level);
    let created = local.create(&key, &body).map_err(io)?;
    Ok((chunk, if created { body.len() as u64 } else { 0 }))
}

/// Read and check one chunk of a local repository.
fn local_get(local: &LocalChunks, chunk: &ChunkRef) -> Result<Vec<u8>> {
    let key = chunk.id.key();
    match local.read(&key) {
        Ok(Some(body)) => decode_checked(chunk, &body),
        Ok(None) => Err(StoreError::NotFound { key }),
        Err(source) => Err(StoreError::Io { key, source }),
    }
}

/// Decode a chunk body, checking its hash and its length against the reference.
fn decode_checked(chunk: &ChunkRef, body: &[u8]) -> Result<Vec<u8>> {
    let data = decode_chunk(&chunk.id, body).map_err(|detail| StoreError::Corrupt {
        key: chunk.id.key(),
        detail,
    })?;
    if data.len() != chunk.len as usize {
        return Err(StoreError::Corrupt {
            key: chunk.id.key(),
            detail: format!("{} bytes, the reference says {}", data.len(), chunk.len),
        });
    }
    Ok(data)
}

/// Map `len` bytes of `file` read-only and pre-faulted; `None` where mapping is not possible
/// (the caller then reads).
fn map_file(file: &std::fs::File, len: u64) -> Option<Bytes> {
    let len = usize::try_from(len).ok()?;
    // SAFETY: the map is read-only and the caller guarantees the file is not truncated while
    // it is in use (PostgreSQL never shrinks a WAL segment that is ready for archiving).
    let map = unsafe { memmap2::MmapOptions::new().len(len).populate().map(file) }.ok()?;
    Some(Bytes::from_owner(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(repo: &Repo) -> Vec<std::path::PathBuf> {
        repo.local.as_ref().expect("local repository").pending()
    }

    /// On a local repository a chunk's directory is fsynced at the latest before the next
    /// document: put_doc runs the pending batch first, on every clone of the handle.
    #[tokio::test]
    async fn documents_wait_for_the_chunks_directories() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().display().to_string();
        let (repo, _) = Repo::init(&url, RepoConfig::default()).await.unwrap();
        assert!(pending(&repo).is_empty());
        let clone = repo.clone();
        let (c, n) = clone.put_chunk(Bytes::from(vec![7u8; 5000])).await.unwrap();
        assert!(n > 0);
        let chunk_dir = dir.path().join(c.id.key()).parent().unwrap().to_path_buf();
        assert_eq!(pending(&repo), [chunk_dir.clone()]);
        repo.put_doc("docs/a.json", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        assert!(pending(&repo).is_empty());
        // relying on a chunk that exists already puts its directory in the next batch too
        let (_, n) = repo.put_chunk(Bytes::from(vec![7u8; 5000])).await.unwrap();
        assert_eq!(n, 0);
        assert_eq!(pending(&repo), [chunk_dir]);
        repo.sync().await.unwrap();
        assert!(pending(&repo).is_empty());
        // and the chunk reads back through both paths
        assert_eq!(repo.get_chunk(&c).await.unwrap().len(), 5000);
        let remote_path = Repo {
            local: None,
            ..repo.clone()
        };
        assert_eq!(remote_path.get_chunk(&c).await.unwrap().len(), 5000);
    }

    #[tokio::test]
    async fn a_failed_directory_sync_names_the_directory_and_stays_pending() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().display().to_string();
        let (repo, _) = Repo::init(&url, RepoConfig::default()).await.unwrap();
        let (c, _) = repo.put_chunk(Bytes::from(vec![1u8; 100])).await.unwrap();
        let chunk_dir = dir.path().join(c.id.key()).parent().unwrap().to_path_buf();
        std::fs::remove_dir_all(dir.path().join("chunks")).unwrap();
        let e = repo.sync().await.unwrap_err();
        assert!(
            e.to_string().contains(&chunk_dir.display().to_string()),
            "{e}"
        );
        assert_eq!(pending(&repo), [chunk_dir.clone()]);
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
}
