//! `pitr info`: what the repository holds — backups, archived WAL per timeline, gaps, last
//! archive time, bytes raw vs stored. Computed here, printed by the binary.

use pitr_pg::WalFileName;
use pitr_store::{layout, Repo};
use serde::Serialize;

use crate::index::{ArchiveIndex, TimelineSummary};
use crate::repofile::{load_wal_refs, repo_system_identifier, BackupManifest, Damaged};
use crate::restore::plan::RepoArchive;
use crate::restore::window::{window, Recoverable};

#[derive(Serialize)]
pub struct Info {
    pub repository: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_identifier: Option<String>,
    pub chunk_size: u32,
    pub compression_level: i32,
    /// The repository's format version (1 unencrypted, 2 encrypted).
    pub format_version: u32,
    /// Whether everything in the repository is encrypted and authenticated.
    pub encrypted: bool,
    /// The cipher (`aes-256-gcm-hkdf-sha256`), `null` when not encrypted.
    pub cipher: Option<String>,
    /// Every chunk body in the repository.
    pub stored_bytes: u64,
    pub backups: Vec<serde_json::Value>,
    /// From the end of the earliest backup to the last archived WAL.
    pub recoverable_from: Option<chrono::DateTime<chrono::Utc>>,
    pub recoverable_to: Option<chrono::DateTime<chrono::Utc>>,
    /// Every interval of target times a restore reaches (a gap in the archived WAL ends one;
    /// a later backup opens the next), as `restore::window` computes it for restore too.
    pub recoverable: Vec<Recoverable>,
    pub wal: WalInfo,
    /// Documents that could not be used (each key and why); the rest is summarised without
    /// them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub damaged: Vec<Damaged>,
}

#[derive(Serialize, Default)]
pub struct WalInfo {
    pub timelines: Vec<TimelineSummary>,
    pub history_files: Vec<WalFileName>,
    pub files: usize,
    /// The last file archived on the newest timeline (the one the server is on): its highest
    /// segment, or its history file before any segment ([`ArchiveIndex::last_of_newest_timeline`]).
    pub last_archived: Option<WalFileName>,
    /// When `last_archived` itself was stored.
    pub last_archived_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Seconds since `last_archived` was stored (when this ran): what a monitor alerts on.
    pub last_archived_age_seconds: Option<i64>,
    /// Bytes of the archived files as PostgreSQL wrote them.
    pub raw_bytes: u64,
    /// Bytes of new chunks archiving added.
    pub stored_bytes: u64,
}

pub async fn info(repo: &Repo) -> anyhow::Result<Info> {
    let sysid = repo_system_identifier(repo).await?;
    let refs = load_wal_refs(repo).await?;
    let mut damaged = refs.damaged;
    let refs = refs.docs;
    let stored_bytes = repo
        .list(layout::CHUNKS_PREFIX)
        .await?
        .iter()
        .map(|(_, s)| s)
        .sum();
    let backups = BackupManifest::list(repo).await?;
    damaged.extend(backups.damaged);
    let backups = backups.docs;
    let index = ArchiveIndex::of_refs(&refs);
    // The last file of the timeline the server is on, and that file's own archive time.
    let last = index
        .last_of_newest_timeline()
        .and_then(|name| refs.iter().find(|r| r.name == name));
    let wal = WalInfo {
        timelines: index.timelines(),
        history_files: index.history_files().cloned().collect(),
        files: refs.len(),
        last_archived: last.map(|r| r.name.clone()),
        last_archived_at: last.map(|r| r.archived_at),
        last_archived_age_seconds: last.map(|r| (chrono::Utc::now() - r.archived_at).num_seconds()),
        raw_bytes: refs.iter().map(|r| r.size).sum(),
        stored_bytes: refs.iter().map(|r| r.stored_bytes).sum(),
    };
    let recoverable = window(&backups, &index, &RepoArchive(repo)).await?;
    Ok(Info {
        repository: repo.url().to_string(),
        system_identifier: sysid.map(|s| s.to_string()),
        chunk_size: repo.config().chunk_size,
        compression_level: repo.config().compression_level,
        format_version: repo.config().format_version,
        encrypted: repo.cipher().is_some(),
        cipher: repo.cipher().map(str::to_string),
        stored_bytes,
        backups: backups.iter().map(BackupManifest::summary).collect(),
        recoverable_from: recoverable.first().map(|r| r.from),
        recoverable_to: recoverable.last().map(|r| r.to),
        recoverable,
        wal,
        damaged,
    })
}
