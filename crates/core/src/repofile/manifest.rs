//! The backup manifest, `backups/<id>.json`: everything needed to lay a backup down again.
//! A backup exists exactly when this document exists; it is written last, create-only.

use anyhow::Context;
use pitr_pg::{Lsn, TimelineId, WalFileName};
use pitr_store::{keys, ChunkRef, Fingerprint, Repo};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::RelPath;

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

impl Tablespace {
    /// The stored location as a path, if it is one a restore may use: absolute, with no `.`
    /// or `..` component and no NUL. Whether it overlaps the data directory or another
    /// tablespace, and whether it is empty, only the restore can tell.
    pub fn location_path(&self) -> anyhow::Result<std::path::PathBuf> {
        let p = std::path::Path::new(&self.location);
        let clean = p.is_absolute()
            && !self.location.contains('\0')
            && p.components().all(|c| {
                matches!(
                    c,
                    std::path::Component::RootDir | std::path::Component::Normal(_)
                )
            })
            && !self.location.split('/').any(|c| c == "." || c == "..");
        if !clean {
            anyhow::bail!(
                "tablespace {} location {:?} is not a plain absolute path: remap it with --tablespace-map {}=DIR",
                self.oid,
                self.location,
                self.oid
            );
        }
        Ok(p.to_path_buf())
    }
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

    /// The manifest at `key`, if it is there.
    async fn load(repo: &Repo, key: &str) -> anyhow::Result<Option<BackupManifest>> {
        let Some(body) = repo.get_doc(key).await? else {
            return Ok(None);
        };
        let m = serde_json::from_slice(&body).with_context(|| format!("parse {key}"))?;
        Ok(Some(m))
    }

    /// Every backup in the repository, oldest first.
    pub async fn list(repo: &Repo) -> anyhow::Result<Vec<BackupManifest>> {
        let mut out = Vec::new();
        for key in Self::keys(repo).await? {
            out.extend(Self::load(repo, &key).await?);
        }
        out.sort_by(|a, b| a.start_time.cmp(&b.start_time).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// The newest backup (IDs are start times, so the greatest key), without reading the
    /// others.
    pub async fn newest(repo: &Repo) -> anyhow::Result<Option<BackupManifest>> {
        match Self::keys(repo).await?.into_iter().max() {
            Some(key) => Self::load(repo, &key).await,
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

    /// Refuse what a restore must not trust, before anything is planned or written: a
    /// symbolic link other than a `pg_tblspc/<oid>` link of one of the backup's own tablespaces
    /// (pitr makes those itself, to the directories the plan shows, never to a stored target),
    /// a file of a tablespace the backup does not list, a tablespace listed twice.
    pub fn check_restorable(&self) -> anyhow::Result<()> {
        let mut oids = std::collections::HashSet::new();
        for t in &self.tablespaces {
            if !oids.insert(t.oid) {
                anyhow::bail!("backup {}: tablespace {} is listed twice", self.id, t.oid);
            }
        }
        for e in self.all_files() {
            if let Some(oid) = e.tablespace {
                if !oids.contains(&oid) {
                    anyhow::bail!(
                        "backup {}: entry {} belongs to tablespace {oid}, which the backup does not list",
                        self.id,
                        e.path
                    );
                }
            }
            let mut parts = e.path.components();
            if e.tablespace.is_none()
                && parts.next() == Some("pg_tblspc")
                && parts.next().is_some()
                && parts.next().is_some()
            {
                anyhow::bail!(
                    "backup {}: entry {} is below pg_tblspc/<oid>, where a tablespace link goes: refused",
                    self.id,
                    e.path
                );
            }
            if e.kind == FileKind::Symlink && !self.is_tablespace_link(e) {
                anyhow::bail!(
                    "backup {}: entry {} is a symbolic link (to {:?}): refused, a restore makes only the pg_tblspc/<oid> links of the backup's tablespaces, itself",
                    self.id,
                    e.path,
                    e.link.as_deref().unwrap_or("")
                );
            }
        }
        Ok(())
    }

    /// Whether `e` is the `pg_tblspc/<oid>` link of one of the backup's tablespaces.
    pub fn is_tablespace_link(&self, e: &FileEntry) -> bool {
        let mut parts = e.path.components();
        let oid = match (parts.next(), parts.next(), parts.next()) {
            (Some("pg_tblspc"), Some(oid), None) => oid.parse::<u32>().ok(),
            _ => None,
        };
        e.kind == FileKind::Symlink
            && e.tablespace.is_none()
            && oid.is_some_and(|oid| self.tablespaces.iter().any(|t| t.oid == oid))
    }

    /// Whether the backed-up data directory allowed group access (PGDATA 0750, files 0640;
    /// `initdb -g`), as its `global` directory's mode says: PostgreSQL gives every directory
    /// it creates the data directory's mode.
    pub fn group_access(&self) -> bool {
        self.files.iter().any(|e| {
            e.kind == FileKind::Directory
                && e.tablespace.is_none()
                && e.path.as_str() == "global"
                && e.mode & 0o050 != 0
        })
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
