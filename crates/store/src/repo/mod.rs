//! The repository: a backend plus its versioned configuration, with the chunk and document
//! operations everything else is built from.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::chunk::{ChunkId, Fingerprint};
use crate::chunks::{ChunkBackend, ChunkRemoval, Codec, Listed, ObjectChunks, OutFile};
use crate::crypto::{Keys, MasterKey};
use crate::keyslot::{KdfCost, KeySlot, Secret, SecretKind, SlotInfo, MAX_PASSPHRASE_SLOTS};
use crate::local::LocalBackend;
use crate::{crypto, keys, Backend, Chunker, RepoOptions, Result, StoreError};

/// The format of an unencrypted repository (unchanged since the first release).
pub const FORMAT_VERSION: u32 = 1;
/// The format of an encrypted repository: a pitr that reads only version 1 refuses it by its
/// version instead of misreading sealed objects.
pub const ENCRYPTED_FORMAT_VERSION: u32 = 2;

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
    /// Present in an encrypted repository (format version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionConfig>,
}

/// `config.json`'s `encryption` object.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// [`crypto::CIPHER`].
    pub cipher: String,
    /// [`crypto::CHUNK_ID`].
    pub chunk_id: String,
    /// 32 random hex digits, bound into every key slot.
    pub repository_id: String,
    /// HMAC-SHA256 (hex) of the whole configuration with this field empty, under a key derived
    /// from the master key: no field can be changed without the key.
    pub mac: String,
}

impl RepoConfig {
    /// The bytes the configuration's tag covers: itself with an empty tag.
    fn canonical(&self) -> Vec<u8> {
        let mut c = self.clone();
        if let Some(e) = &mut c.encryption {
            e.mac.clear();
        }
        serde_json::to_vec(&c).expect("config serializes")
    }

    /// The same settings, encryption aside.
    fn same_settings(&self, other: &RepoConfig) -> bool {
        (self.chunk_size, self.wal_chunk_size, self.compression_level)
            == (
                other.chunk_size,
                other.wal_chunk_size,
                other.compression_level,
            )
    }
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
            encryption: None,
        }
    }
}

impl RepoConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        match (self.format_version, &self.encryption) {
            (FORMAT_VERSION, None) => {}
            (ENCRYPTED_FORMAT_VERSION, Some(e)) => {
                if (e.cipher.as_str(), e.chunk_id.as_str()) != (crypto::CIPHER, crypto::CHUNK_ID) {
                    return Err(format!(
                        "cipher {:?} with chunk IDs {:?} (this pitr knows {:?} with {:?})",
                        e.cipher,
                        e.chunk_id,
                        crypto::CIPHER,
                        crypto::CHUNK_ID
                    ));
                }
                if e.repository_id.len() != 32
                    || !e.repository_id.bytes().all(|b| b.is_ascii_hexdigit())
                    || e.mac.len() != 64
                    || hex::decode(&e.mac).is_err()
                {
                    return Err("encryption settings of the wrong form".into());
                }
            }
            (v, e) if v == FORMAT_VERSION || v == ENCRYPTED_FORMAT_VERSION => {
                return Err(format!(
                    "format version {v} {} encryption settings",
                    if e.is_some() { "with" } else { "without" }
                ))
            }
            (v, _) => {
                return Err(format!(
                    "format version {v} (this pitr reads versions {FORMAT_VERSION} and \
                     {ENCRYPTED_FORMAT_VERSION})"
                ))
            }
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

impl BackupChunk {
    /// The known chunk, recognised by its fingerprint: nothing hashed or written.
    pub(crate) fn recognised(chunk: ChunkRef, fingerprint: Fingerprint) -> Self {
        BackupChunk {
            chunk,
            fingerprint,
            stored: 0,
            recognised: true,
        }
    }

    /// A chunk hashed with SHA-256 and stored unless the repository had it.
    pub(crate) fn hashed(chunk: ChunkRef, fingerprint: Fingerprint, stored: u64) -> Self {
        BackupChunk {
            chunk,
            fingerprint,
            stored,
            recognised: false,
        }
    }
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
    backend: Backend,
    config: RepoConfig,
    unlocked: Option<Arc<Unlocked>>,
    /// Chunk IDs and bodies, and (its keys) document sealing: what the backends were given.
    codec: Codec,
    /// Chunks in flight at once, shared by every file this handle is storing (bounds memory
    /// at about twice this times the chunk size).
    concurrency: usize,
    limiter: Arc<Semaphore>,
    /// Where the chunks and documents live (see `chunks.rs`), shared by clones.
    chunks: Arc<dyn ChunkBackend>,
}

/// `config.json`'s bytes as a configuration this pitr can use.
fn parse_config(url: &str, body: &[u8]) -> Result<RepoConfig> {
    let config: RepoConfig = serde_json::from_slice(body).map_err(|e| StoreError::Corrupt {
        key: keys::CONFIG.into(),
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
    fn new(
        backend: Backend,
        config: RepoConfig,
        unlocked: Option<Arc<Unlocked>>,
        jobs: usize,
    ) -> Repo {
        let codec = Codec {
            level: config.compression_level,
            keys: unlocked.as_ref().map(|u| Arc::clone(&u.keys)),
        };
        // The one place that looks at the kind of backend.
        let chunks: Arc<dyn ChunkBackend> = match &backend.local_root {
            Some(root) => Arc::new(LocalBackend::new(root.clone(), codec.clone())),
            None => Arc::new(ObjectChunks::new(backend.clone(), codec.clone())),
        };
        Repo {
            backend,
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
    /// same settings is fine.
    pub async fn init(
        url: &str,
        config: RepoConfig,
        options: &RepoOptions,
    ) -> Result<(Repo, InitOutcome)> {
        validate(url, &config)?;
        let backend = Backend::connect(url, true, &options.remote)?;
        let body = serde_json::to_vec_pretty(&config).expect("config serializes");
        let repo = Repo::new(backend, config.clone(), None, options.jobs());
        match repo.put_doc(keys::CONFIG, body.into()).await? {
            DocWrite::Created => Ok((repo, InitOutcome::Created)),
            DocWrite::Exists(existing) => {
                let found: RepoConfig =
                    serde_json::from_slice(&existing).map_err(|e| StoreError::Corrupt {
                        key: keys::CONFIG.into(),
                        detail: e.to_string(),
                    })?;
                if found == config {
                    Ok((repo, InitOutcome::AlreadyInitialized))
                } else if found.encryption.is_some() {
                    Err(StoreError::ConfigMismatch {
                        url: url.to_string(),
                        detail: "it is encrypted; asked for an unencrypted one".into(),
                    })
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

    /// Create an encrypted repository at `url` with `config`'s settings: a new random master
    /// key, wrapped in a first key slot under `passphrase` (Argon2id at `cost`). Running it
    /// again with the same settings and a passphrase that opens the repository is fine.
    pub async fn init_encrypted(
        url: &str,
        mut config: RepoConfig,
        options: &RepoOptions,
        passphrase: &Secret,
        label: &str,
        cost: KdfCost,
    ) -> Result<(Repo, InitOutcome)> {
        let key_err = |detail: String| StoreError::Key {
            url: url.to_string(),
            detail,
        };
        if !matches!(passphrase.kind().map_err(key_err)?, SecretKind::Passphrase) {
            return Err(key_err(format!(
                "a new repository's first key slot needs a passphrase; {} holds a key file or \
                 an exported key",
                passphrase.origin()
            )));
        }
        cost.validate().map_err(key_err)?;
        let backend = Backend::connect(url, true, &options.remote)?;
        let jobs = options.jobs();
        let raw = Repo::new(backend.clone(), RepoConfig::default(), None, jobs);
        if let Some(existing) = raw.get_doc(keys::CONFIG).await? {
            let found = parse_config(url, &existing)?;
            let Some(enc) = &found.encryption else {
                return Err(StoreError::ConfigMismatch {
                    url: url.to_string(),
                    detail: "it is not encrypted; asked for an encrypted one".into(),
                });
            };
            let unlocked = unlock(&raw, url, &existing, &found, enc, passphrase, options).await?;
            if !found.same_settings(&config) {
                return Err(StoreError::ConfigMismatch {
                    url: url.to_string(),
                    detail: format!(
                        "it has chunk size {}, WAL chunk size {}, compression level {}; asked for {}, {}, {}",
                        found.chunk_size,
                        found.wal_chunk_size,
                        found.compression_level,
                        config.chunk_size,
                        config.wal_chunk_size,
                        config.compression_level
                    ),
                });
            }
            return Ok((
                Repo::new(backend, found, Some(unlocked), jobs),
                InitOutcome::AlreadyInitialized,
            ));
        }
        let master = MasterKey::generate();
        let keys = Arc::new(Keys::derive(&master));
        config.format_version = ENCRYPTED_FORMAT_VERSION;
        config.encryption = Some(EncryptionConfig {
            cipher: crypto::CIPHER.into(),
            chunk_id: crypto::CHUNK_ID.into(),
            repository_id: hex::encode(crypto::random::<16>()),
            mac: String::new(),
        });
        let mac = hex::encode(keys.config_mac(&config.canonical()));
        config.encryption.as_mut().expect("just set").mac = mac;
        validate(url, &config)?;
        let repository_id = config
            .encryption
            .as_ref()
            .expect("set")
            .repository_id
            .clone();
        let slot = {
            let (pass, label) = (passphrase.clone(), label.to_string());
            let master = master.clone();
            tokio::task::spawn_blocking(move || {
                KeySlot::passphrase(&repository_id, &label, pass.expose(), cost, &master)
            })
            .await
            .expect("key derivation does not panic")
            .map_err(key_err)?
        };
        // The slot first: a crash before the configuration leaves a slot nothing opens (a new
        // init makes a new key), never a configuration no slot opens.
        raw.put_slot(&slot).await?;
        let body = serde_json::to_vec_pretty(&config).expect("config serializes");
        if let DocWrite::Exists(_) = raw.put_doc(keys::CONFIG, body.into()).await? {
            return Err(StoreError::ConfigMismatch {
                url: url.to_string(),
                detail: "another pitr init created it at the same time; run init again".into(),
            });
        }
        let unlocked = Arc::new(Unlocked {
            keys,
            master,
            slot: Some(slot.id.clone()),
        });
        Ok((
            Repo::new(backend, config, Some(unlocked), jobs),
            InitOutcome::Created,
        ))
    }

    /// Open an existing repository, reading its configuration: reached with `options.remote`,
    /// an encrypted one unlocked with `options.secret` (`None`: it must be unencrypted; keys
    /// are derived once per `options` however often it is opened), `options.jobs` chunks in
    /// flight.
    pub async fn open(url: &str, options: &RepoOptions) -> Result<Repo> {
        let backend = Backend::connect(url, false, &options.remote)?;
        let jobs = options.jobs();
        let reader = Repo::new(backend, RepoConfig::default(), None, jobs);
        let body = match reader.get_doc(keys::CONFIG).await? {
            Some(b) => b,
            None => {
                return Err(StoreError::NotInitialized {
                    url: url.to_string(),
                })
            }
        };
        let config = parse_config(url, &body)?;
        let unlocked = match (&config.encryption, options.secret.as_ref()) {
            (None, None) => None,
            (None, Some(s)) => {
                return Err(StoreError::NotEncrypted {
                    url: url.to_string(),
                    origin: s.origin().to_string(),
                })
            }
            (Some(_), None) => {
                return Err(StoreError::KeyRequired {
                    url: url.to_string(),
                })
            }
            (Some(enc), Some(secret)) => {
                Some(unlock(&reader, url, &body, &config, enc, secret, options).await?)
            }
        };
        // Chunks are written with the configuration's compression level.
        Ok(Repo::new(reader.backend, config, unlocked, jobs))
    }

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
        self.chunks.put_backup(data, known).await
    }

    /// Store one chunk that is most likely new (WAL): hash and compress in one step, no
    /// existence check first; a chunk that already exists is still not written twice.
    pub async fn put_new_chunk(&self, data: Bytes) -> Result<(ChunkRef, u64)> {
        self.chunks.put_new(data).await
    }

    /// Read one chunk, re-hashing it; a mismatch is `Corrupt` naming the key.
    pub async fn get_chunk(&self, chunk: &ChunkRef) -> Result<Bytes> {
        self.chunks.get(*chunk).await
    }

    /// Whether a chunk is present (no content check).
    pub async fn has_chunk(&self, id: &ChunkId) -> Result<bool> {
        self.chunks.exists(*id).await
    }

    /// Split `len` bytes of `file` into chunks (the WAL [`Chunker`]) and store them,
    /// `concurrency` chunks at a time, assuming they are new (WAL). Durability as for
    /// [`Repo::put_backup_chunk`]: the bytes on return, the names by the `put_doc` that names
    /// them. Each chunk is read with `pread` into its own buffer: a file that shrinks
    /// meanwhile (or a read error) is an error naming `what`, never a signal, as it would be
    /// with a memory map.
    pub async fn put_file(
        &self,
        file: Arc<std::fs::File>,
        len: u64,
        what: &str,
    ) -> Result<PutSummary> {
        let results: Vec<(ChunkRef, u64)> =
            futures::stream::iter(Chunker::for_wal(&self.config).ranges(len))
                .map(|range| {
                    let file = Arc::clone(&file);
                    let what = what.to_string();
                    async move {
                        let _permit = self.limiter.acquire().await.expect("limiter never closed");
                        let (off, n) = (range.start, (range.end - range.start) as usize);
                        let data = tokio::task::spawn_blocking(move || {
                            read_range(&file, off, n, len, &what)
                        })
                        .await
                        .map_err(|source| StoreError::Task {
                            what: format!("read {} bytes at offset {off}", n),
                            source,
                        })??;
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

    /// The chunk list of `file` cut along the lengths of `like` (an archived or backed-up copy
    /// of it), without storing anything: equal to `like` exactly when the content is the same.
    /// The file must hold at least the sum of their lengths (callers compare sizes first);
    /// anything beyond is not read.
    pub async fn hash_file(
        &self,
        file: Arc<std::fs::File>,
        like: &[ChunkRef],
        what: &str,
    ) -> Result<Vec<ChunkRef>> {
        let lens: Vec<u32> = like.iter().map(|c| c.len).collect();
        let what = what.to_string();
        let codec = self.codec.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(lens.len());
            let mut buf = vec![0u8; lens.iter().copied().max().unwrap_or(0) as usize];
            let mut off = 0u64;
            for len in lens {
                let data = &mut buf[..len as usize];
                file.read_exact_at(data, off)
                    .map_err(|source| StoreError::Io {
                        key: format!("{what} at offset {off}"),
                        source,
                    })?;
                out.push(ChunkRef {
                    id: codec.id(data),
                    len,
                });
                off += u64::from(len);
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
        let out = Arc::new(OutFile::new(file, what));
        futures::stream::iter(offsets)
            .map(|(chunk, off)| {
                let out = Arc::clone(&out);
                async move {
                    let _permit = self.limiter.acquire().await.expect("limiter never closed");
                    self.chunks.get_into(chunk, out, off).await
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
        let body = match &self.codec.keys {
            Some(k) if !keys::is_unsealed(key) => Bytes::from(k.seal(key, &body)),
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
            (Some(k), Some(body)) if !keys::is_unsealed(key) => k
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

/// The key slots of an encrypted repository (`pitr key …`).
impl Repo {
    fn key_error(&self, detail: impl Into<String>) -> StoreError {
        StoreError::Key {
            url: self.url().to_string(),
            detail: detail.into(),
        }
    }

    fn unlocked(&self) -> Result<&Unlocked> {
        self.unlocked
            .as_deref()
            .ok_or_else(|| self.key_error("the repository is not encrypted (it has no keys)"))
    }

    fn repository_id(&self) -> &str {
        &self
            .config
            .encryption
            .as_ref()
            .expect("an unlocked repository has encryption settings")
            .repository_id
    }

    async fn put_slot(&self, slot: &KeySlot) -> Result<()> {
        let key = keys::key_slot(&slot.id);
        let body = serde_json::to_vec_pretty(slot).expect("slot serializes");
        match self.put_doc(&key, body.into()).await? {
            DocWrite::Created => Ok(()),
            DocWrite::Exists(_) => Err(self.key_error(format!("{key} exists already"))),
        }
    }

    /// Every key slot, in key order, and the ones that are damaged (key and why): a damaged
    /// slot opens nothing, and must not keep the others from opening.
    async fn slots(&self) -> Result<(Vec<KeySlot>, Vec<(String, String)>)> {
        let (mut good, mut damaged) = (Vec::new(), Vec::new());
        for listed in self.list_objects(keys::KEYS_PREFIX).await? {
            if listed.staging {
                continue;
            }
            let Some(body) = self.get_doc(&listed.key).await? else {
                continue;
            };
            match KeySlot::parse(&listed.key, &body) {
                Ok(slot) => good.push(slot),
                Err(detail) => damaged.push((listed.key, detail)),
            }
        }
        Ok((good, damaged))
    }

    /// Key slots that cannot be read (key and why); `pitr verify` reports them.
    pub async fn damaged_key_slots(&self) -> Result<Vec<(String, String)>> {
        if self.config.encryption.is_none() {
            return Ok(Vec::new());
        }
        Ok(self.slots().await?.1)
    }

    /// The key slots, the one that opened this repository marked.
    pub async fn key_slots(&self) -> Result<Vec<SlotInfo>> {
        let unlocked = self.unlocked()?;
        Ok(self
            .slots()
            .await?
            .0
            .iter()
            .map(|s| s.info(unlocked.slot.as_deref() == Some(s.id.as_str())))
            .collect())
    }

    /// Add a passphrase slot for `passphrase` (Argon2id at `cost`).
    pub async fn key_add_passphrase(
        &self,
        passphrase: &Secret,
        label: &str,
        cost: KdfCost,
    ) -> Result<SlotInfo> {
        let master = self.unlocked()?.master.clone();
        if !matches!(
            passphrase.kind().map_err(|d| self.key_error(d))?,
            SecretKind::Passphrase
        ) {
            return Err(self.key_error(format!(
                "{} holds a key file or an exported key, not a new passphrase",
                passphrase.origin()
            )));
        }
        let (slots, _) = self.slots().await?;
        if slots.iter().filter(|s| s.kind() == "passphrase").count() >= MAX_PASSPHRASE_SLOTS {
            return Err(self.key_error(format!(
                "the repository has {MAX_PASSPHRASE_SLOTS} passphrase slots, the most an unlock \
                 tries; remove one first (pitr key remove)"
            )));
        }
        let (id, label, pass) = (
            self.repository_id().to_string(),
            label.to_string(),
            passphrase.clone(),
        );
        let slot = tokio::task::spawn_blocking(move || {
            KeySlot::passphrase(&id, &label, pass.expose(), cost, &master)
        })
        .await
        .expect("key derivation does not panic")
        .map_err(|d| self.key_error(d))?;
        self.put_slot(&slot).await?;
        Ok(slot.info(false))
    }

    /// Add a key-file slot: returns it and the key file's text (256 random bits), which opens
    /// the repository without a passphrase's deliberately slow derivation.
    pub async fn key_add_key_file(
        &self,
        label: &str,
    ) -> Result<(SlotInfo, zeroize::Zeroizing<String>)> {
        let master = self.unlocked()?.master.clone();
        let (slot, text) = KeySlot::key_file(self.repository_id(), label, &master)
            .map_err(|d| self.key_error(d))?;
        self.put_slot(&slot).await?;
        Ok((slot.info(false), text))
    }

    /// Remove key slot `id`; the last slot is never removed (that would lose the repository).
    pub async fn key_remove(&self, id: &str) -> Result<()> {
        self.unlocked()?;
        let (slots, _) = self.slots().await?;
        if !slots.iter().any(|s| s.id == id) {
            return Err(self.key_error(format!("no key slot {id:?} (pitr key list shows them)")));
        }
        if slots.len() == 1 {
            return Err(self.key_error(format!(
                "{id} is the last key slot: removing it would make the repository unreadable; \
                 add another first (pitr key add)"
            )));
        }
        self.delete_docs(&[keys::key_slot(id)]).await?;
        Ok(())
    }

    /// The unwrapped master key as text, for a safe: with it (`pitr-master-key-v1:…` given as
    /// the passphrase) the repository opens even when every slot is lost.
    pub fn key_export(&self) -> Result<zeroize::Zeroizing<String>> {
        Ok(crate::keyslot::export_text(&self.unlocked()?.master))
    }
}

/// Find the master key `secret` opens and check it against the configuration's tag; the
/// result is cached in `options` (and its clones).
async fn unlock(
    raw: &Repo,
    url: &str,
    config_body: &[u8],
    config: &RepoConfig,
    enc: &EncryptionConfig,
    secret: &Secret,
    options: &RepoOptions,
) -> Result<Arc<Unlocked>> {
    let cache_key = (
        url.to_string(),
        config_body.to_vec(),
        *blake3::hash(secret.expose().as_bytes()).as_bytes(),
    );
    if let Some(u) = options.unlocked.get(&cache_key) {
        return Ok(u);
    }
    let key_err = |detail: String| StoreError::Key {
        url: url.to_string(),
        detail,
    };
    let kind = secret.kind().map_err(key_err)?;
    let canonical = config.canonical();
    let tag = hex::decode(&enc.mac).expect("validated");
    let check = |master: MasterKey, slot: Option<String>| -> Result<Arc<Unlocked>> {
        let keys = Keys::derive(&master);
        if !keys.config_mac_matches(&canonical, &tag) {
            return Err(StoreError::Corrupt {
                key: keys::CONFIG.into(),
                detail: match &slot {
                    Some(s) => format!(
                        "fails authentication with the key slot {s} opens: the configuration \
                         was changed, or the slot was not written by this repository's owner"
                    ),
                    None => "fails authentication with the exported key given: the \
                             configuration was changed, or the key is another repository's"
                        .into(),
                },
            });
        }
        Ok(Arc::new(Unlocked {
            keys: Arc::new(keys),
            master,
            slot,
        }))
    };
    let wrong = |tried: String| StoreError::WrongKey {
        url: url.to_string(),
        origin: secret.origin().to_string(),
        tried,
    };
    let unlocked = match kind {
        SecretKind::Master(master) => check(master, None)?,
        SecretKind::KeyFile { ref slot, .. } => {
            let key = keys::key_slot(slot);
            let Some(body) = raw.get_doc(&key).await? else {
                return Err(wrong(format!(
                    "its slot {key} is not there: removed, or the key file is another \
                     repository's"
                )));
            };
            let s = KeySlot::parse(&key, &body).map_err(|detail| StoreError::Corrupt {
                key: key.clone(),
                detail,
            })?;
            let master = s
                .open(&enc.repository_id, &kind, secret.expose())
                .ok_or_else(|| {
                    wrong(format!(
                        "{key} does not open with it: damaged, or the key file is another \
                         repository's"
                    ))
                })?;
            check(master, Some(s.id))?
        }
        SecretKind::Passphrase => {
            let mut found = None;
            let mut tried = Vec::new();
            let (slots, damaged) = raw.slots().await?;
            for (key, detail) in &damaged {
                tracing::warn!("{key}: damaged key slot skipped: {detail}");
            }
            // Each passphrase slot costs an Argon2id run (bounded by `KeySlot::parse`): try
            // at most MAX_PASSPHRASE_SLOTS of them.
            let passphrase_slots: Vec<KeySlot> = slots
                .into_iter()
                .filter(|s| s.kind() == "passphrase")
                .collect();
            let untried = passphrase_slots.len().saturating_sub(MAX_PASSPHRASE_SLOTS);
            for s in passphrase_slots.into_iter().take(MAX_PASSPHRASE_SLOTS) {
                tried.push(keys::key_slot(&s.id));
                let (s2, id, secret2) = (s.clone(), enc.repository_id.clone(), secret.clone());
                let opened = tokio::task::spawn_blocking(move || {
                    s2.open(&id, &SecretKind::Passphrase, secret2.expose())
                })
                .await
                .expect("key derivation does not panic");
                if let Some(master) = opened {
                    found = Some(check(master, Some(s.id))?);
                    break;
                }
            }
            found.ok_or_else(|| {
                let mut why = if tried.is_empty() {
                    "it has no passphrase slot; a key file or an exported key opens it".into()
                } else {
                    format!("wrong passphrase; tried {}", tried.join(", "))
                };
                if untried > 0 {
                    why.push_str(&format!(
                        "; {untried} more passphrase slots not tried (at most \
                         {MAX_PASSPHRASE_SLOTS} are: remove unused ones with `pitr key \
                         remove`, opening with a key file or an exported key)"
                    ));
                }
                for (key, detail) in &damaged {
                    why.push_str(&format!("; refused {key}: {detail}"));
                }
                wrong(why)
            })?
        }
    };
    options.unlocked.put(cache_key, Arc::clone(&unlocked));
    Ok(unlocked)
}

/// `n` bytes of `file` at `off`, one `pread` loop into a fresh buffer (`readbuf.rs`: huge
/// pages where the kernel allows). Reading short of `n` means the file (meant to be `len`
/// bytes) shrank under us.
fn read_range(file: &std::fs::File, off: u64, n: usize, len: u64, what: &str) -> Result<Bytes> {
    match crate::readbuf::ReadBuf::read_exact_at(file, off, n) {
        Ok(buf) => Ok(Bytes::from_owner(buf)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(StoreError::Io {
            key: what.to_string(),
            source: std::io::Error::new(
                e.kind(),
                format!(
                    "the file shrank while it was read: {len} bytes expected, \
                     fewer than {} there",
                    off + n as u64
                ),
            ),
        }),
        Err(source) => Err(StoreError::Io {
            key: format!("read {what} at offset {off}"),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            chunks: Arc::new(ObjectChunks::new(
                repo.backend.clone(),
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
