//! The backup manifest, `backups/<id>.json`: everything needed to lay a backup down again.
//! A backup exists exactly when this document exists; it is written last, create-only.

use pitr_pg::{Lsn, TimelineId, WalFileName};
use pitr_store::{keys, ChunkRef, Fingerprint, Repo};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Damaged, Loaded, RelPath};

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    File,
    Directory,
    Symlink,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the data directory (main archive) or to the tablespace directory.
    pub path: RelPath,
    /// Tablespace OID; absent for the main data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tablespace: Option<u32>,
    pub kind: FileKind,
    pub mode: u32,
    pub size: u64,
    pub mtime: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkRef>,
    /// BLAKE3 of each chunk, in the same order: how the next backup recognises an unchanged
    /// chunk cheaply. Absent in manifests written before pitr kept them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fingerprints: Vec<Fingerprint>,
    /// SHA-256 over the file's chunk IDs in order: one value for the whole file, derived
    /// from hashes already taken (each chunk ID is the SHA-256 of its bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

pub fn chunks_hash(chunks: &[ChunkRef]) -> String {
    let mut h = Sha256::new();
    for c in chunks {
        h.update(c.id.0);
        h.update(c.len.to_le_bytes());
    }
    hex::encode(h.finalize())
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Tablespace {
    pub oid: u32,
    pub location: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackupManifest {
    pub format_version: u32,
    pub id: String,
    pub label: String,
    pub start_time: chrono::DateTime<chrono::Utc>,
    pub stop_time: chrono::DateTime<chrono::Utc>,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    pub timeline: TimelineId,
    #[serde(with = "super::u64_string")]
    pub system_identifier: u64,
    pub pg_version: String,
    pub pg_version_num: u32,
    /// Bytes of data files as the server sent them.
    pub size_bytes: u64,
    /// Bytes of new chunks this backup added to the repository.
    pub stored_bytes: u64,
    pub wal_start: WalFileName,
    pub wal_stop: WalFileName,
    pub files: Vec<FileEntry>,
    pub tablespaces: Vec<Tablespace>,
    /// WAL streamed during the backup: `pg_wal/<segment>` files belonging to this backup only.
    pub wal: Vec<FileEntry>,
    /// The server's own backup_manifest, for pg_verifybackup.
    pub server_manifest: FileEntry,
    /// Warnings the server sent (e.g. page checksum failures).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl BackupManifest {
    pub fn key(id: &str) -> String {
        keys::backup(id)
    }

    /// The keys of every backup manifest in the repository.
    async fn keys(repo: &Repo) -> anyhow::Result<Vec<String>> {
        let keys = repo
            .list(keys::BACKUPS_PREFIX)
            .await?
            .into_iter()
            .map(|(k, _)| k);
        Ok(keys.filter(|k| k.ends_with(".json")).collect())
    }

    /// The manifest at `key`, if it is there: `Ok(Err(..))` when it is there but damaged
    /// (does not parse, or does not hold together), an error when it cannot be read.
    async fn load(
        repo: &Repo,
        key: &str,
    ) -> anyhow::Result<Option<Result<BackupManifest, Damaged>>> {
        let Some(body) = repo.get_doc(key).await? else {
            return Ok(None);
        };
        let parsed = serde_json::from_slice::<BackupManifest>(&body)
            .map_err(anyhow::Error::from)
            .and_then(|m| m.check(key).map(|()| m));
        Ok(Some(parsed.map_err(|e| Damaged::new(key, &e))))
    }

    /// What the parser cannot see: that the manifest is the one its key names, and that its
    /// WAL holds together (a zero or odd segment size would derail every WAL computation).
    fn check(&self, key: &str) -> anyhow::Result<()> {
        if Self::key(&self.id) != key {
            anyhow::bail!("it describes backup {}, not the one its key names", self.id);
        }
        let seg = self.segment_size();
        if !seg.is_power_of_two() || !(1 << 20..=1 << 30).contains(&seg) {
            anyhow::bail!("its WAL segment size {seg} is not a power of two from 1 MiB to 1 GiB");
        }
        if let Some(w) = self.wal.iter().find(|w| w.size != u64::from(seg)) {
            anyhow::bail!(
                "WAL file {} has {} bytes, not the segment size {seg}",
                w.path,
                w.size
            );
        }
        for (what, name) in [("wal_start", &self.wal_start), ("wal_stop", &self.wal_stop)] {
            if name.timeline() != self.timeline || name.segment_number(seg).is_none() {
                anyhow::bail!(
                    "{what} {name} is not a segment of timeline {}",
                    self.timeline
                );
            }
        }
        Ok(())
    }

    /// Every backup in the repository, oldest first, and the manifests that are damaged.
    pub async fn list(repo: &Repo) -> anyhow::Result<Loaded<BackupManifest>> {
        let mut out = Loaded::default();
        for key in Self::keys(repo).await? {
            match Self::load(repo, &key).await? {
                Some(Ok(m)) => out.docs.push(m),
                Some(Err(d)) => out.damaged.push(d),
                None => {}
            }
        }
        out.docs
            .sort_by(|a, b| a.start_time.cmp(&b.start_time).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// The newest backup (IDs are start times, so the greatest key), without reading the
    /// others.
    pub async fn newest(repo: &Repo) -> anyhow::Result<Option<BackupManifest>> {
        match Self::keys(repo).await?.into_iter().max() {
            Some(key) => Ok(Self::load(repo, &key).await?.transpose()?),
            None => Ok(None),
        }
    }

    /// The WAL segment size of the backed-up cluster (its streamed segments' size).
    pub fn segment_size(&self) -> u32 {
        self.wal
            .first()
            .map_or(pitr_pg::DEFAULT_WAL_SEGMENT_SIZE, |w| w.size as u32)
    }

    /// Every file the lay-down writes: data files, the backup's own WAL, the server's
    /// backup_manifest.
    pub fn all_files(&self) -> impl Iterator<Item = &FileEntry> {
        self.files
            .iter()
            .chain(&self.wal)
            .chain(std::iter::once(&self.server_manifest))
    }

    /// The summary `pitr list --json` prints.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "label": self.label,
            "start_time": self.start_time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "stop_time": self.stop_time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "start_lsn": self.start_lsn,
            "stop_lsn": self.stop_lsn,
            "timeline": self.timeline,
            "system_identifier": self.system_identifier.to_string(),
            "pg_version": self.pg_version,
            "size_bytes": self.size_bytes,
            "stored_bytes": self.stored_bytes,
            "wal_start": self.wal_start,
            "wal_stop": self.wal_stop,
            "files": self.files.len(),
            "tablespaces": self.tablespaces.len(),
        })
    }
}

impl Loaded<BackupManifest> {
    /// The backups a restore can choose from: a damaged manifest is skipped with a warning,
    /// unless it is the one asked for.
    pub fn for_restore(self, wanted: Option<&str>) -> anyhow::Result<Vec<BackupManifest>> {
        if let Some(id) = wanted {
            let key = BackupManifest::key(id);
            if let Some(d) = self.damaged.iter().find(|d| d.key == key) {
                return Err(d.clone().into());
            }
        }
        Ok(self.warn_damaged())
    }
}
