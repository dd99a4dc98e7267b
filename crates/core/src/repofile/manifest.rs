//! The backup manifest, `backups/<id>.json`: everything needed to lay a backup down again.
//! A backup exists exactly when this document exists; it is written last, create-only.

use pitr_pg::{Lsn, TimelineId, WalFileName};
use pitr_store::{layout, ChunkRef, Fingerprint, Repo};
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
        layout::backup(id)
    }

    /// The keys of every backup manifest in the repository.
    async fn keys(repo: &Repo) -> anyhow::Result<Vec<String>> {
        let keys = repo
            .list(layout::BACKUPS_PREFIX)
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
        let body = match super::read_doc(repo, key).await? {
            None => return Ok(None),
            Some(Err(damaged)) => return Ok(Some(Err(damaged))),
            Some(Ok(body)) => body,
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

    /// Refuse what a restore must not trust, before anything is planned or written: an entry
    /// below a symbolic link (PostgreSQL never sends one: it does not descend into links, so
    /// such a manifest can only be a way to write through the link), an entry below
    /// `pg_tblspc/<oid>`, a file of a tablespace the backup does not list, a tablespace
    /// listed twice. Symbolic links themselves are never created from a stored target: the
    /// `pg_tblspc/<oid>` links pitr makes itself, to the directories the plan shows, and any
    /// other link (a DBA's `log -> /var/log/…`) is named by the restore, not made
    /// ([`BackupManifest::links_not_restored`]). A file whose chunks do not add up to its
    /// size, and a chunk named with two different lengths (a deduplicated chunk is the same
    /// bytes wherever it is named), are refused too, before anything is written.
    ///
    /// This is the one check of a manifest's content both a restore (before it plans) and
    /// `verify` (for every backup) run: whatever one refuses, the other reports.
    pub fn check_restorable(&self) -> anyhow::Result<()> {
        let links: std::collections::HashSet<(Option<u32>, &str)> = self
            .all_files()
            .filter(|e| e.kind == FileKind::Symlink)
            .map(|e| (e.tablespace, e.path.as_str()))
            .collect();
        let mut oids = std::collections::HashSet::new();
        for t in &self.tablespaces {
            if !oids.insert(t.oid) {
                anyhow::bail!("backup {}: tablespace {} is listed twice", self.id, t.oid);
            }
        }
        let mut lengths: std::collections::HashMap<pitr_store::ChunkId, (u32, &RelPath)> =
            std::collections::HashMap::new();
        for e in self.all_files() {
            let cut: u64 = e.chunks.iter().map(|c| u64::from(c.len)).sum();
            if e.kind == FileKind::File && cut != e.size {
                anyhow::bail!(
                    "backup {}: file {} has {} bytes, but its {} chunks add up to {cut}",
                    self.id,
                    e.path,
                    e.size,
                    e.chunks.len()
                );
            }
            for c in &e.chunks {
                let (len, first) = *lengths.entry(c.id).or_insert((c.len, &e.path));
                if len != c.len {
                    anyhow::bail!(
                        "backup {}: chunk {} is {} bytes in file {}, but {len} bytes in file {first}",
                        self.id,
                        c.id,
                        c.len,
                        e.path
                    );
                }
            }
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
            let path = e.path.as_str();
            let below_link = path
                .match_indices('/')
                .map(|(i, _)| &path[..i])
                .find(|parent| links.contains(&(e.tablespace, *parent)));
            if let Some(link) = below_link {
                anyhow::bail!(
                    "backup {}: entry {} is below {link}, which is a symbolic link: refused, nothing is written through a link",
                    self.id,
                    e.path
                );
            }
        }
        Ok(())
    }

    /// The symbolic links of the backup a restore does not make (every one but the
    /// tablespaces' `pg_tblspc/<oid>`): `(path, target)`, to be named so that the DBA can
    /// recreate them where the restored server runs.
    pub fn links_not_restored(&self) -> Vec<(&RelPath, &str)> {
        self.all_files()
            .filter(|e| e.kind == FileKind::Symlink && !self.is_tablespace_link(e))
            .map(|e| (&e.path, e.link.as_deref().unwrap_or("")))
            .collect()
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
