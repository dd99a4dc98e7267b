//! `pitr backup`: a base backup over the replication protocol, streamed straight into the
//! store — files cut into chunks as the tar stream arrives, the WAL of the backup streamed on
//! a second connection, the manifest written last.

mod keepalive;
mod sink;
pub mod tar;
mod wal;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use pitr_pg::{Lsn, WalFileName};
use pitr_protocol::{
    BackupEvent, BaseBackupOptions, BaseBackupStream, CheckpointMode, ConnConfig, ReplicationClient,
};
use pitr_store::{ChunkedFile, DocWrite, KnownChunk, Repo, Uploader};
use tokio::sync::watch;

use sink::{ArchiveSink, PendingEntry};

use crate::progress::Reporter;
use crate::repofile::{claim_cluster, BackupManifest, FileEntry, FileKind, RelPath, Tablespace};

/// Where a file lives in a backup: tablespace OID (none for the data directory) and path.
type FileKey = (Option<u32>, RelPath);

/// The chunks of the previous backup's files, with their fingerprints, by file.
type KnownFiles = HashMap<FileKey, Arc<[KnownChunk]>>;

/// `pitr backup`.
pub struct BackupRequest {
    /// libpq connection string or URL; the PG* environment fills in the rest.
    pub dbname: Option<String>,
    /// The password when neither `dbname` nor `PGPASSWORD` gives one (the configuration
    /// file's `[backup] password_file`/`password_credential`).
    pub password: Option<String>,
    pub checkpoint: CheckpointMode,
    /// Backup label (default "pitr <id>").
    pub label: Option<String>,
    /// Server-side rate limit in kB/s.
    pub max_rate: Option<u32>,
}

/// Take a base backup of the server `args` names into `repo`; returns the committed manifest.
/// A marker (`markers/backup-…`) is in the repository from before the first chunk until
/// after the manifest, so that `pitr expire` deletes no chunk this backup may rely on; a
/// failed backup removes it too.
pub async fn backup(
    repo: &Repo,
    args: BackupRequest,
    reporter: &dyn Reporter,
) -> anyhow::Result<BackupManifest> {
    // Renewed while the backup runs, checked before the manifest is committed (keepalive.rs).
    let marker =
        keepalive::MarkerKeeper::start(repo, keepalive::RENEW_EVERY, keepalive::STALE).await?;
    let result = take_backup(repo, args, reporter, &marker).await;
    match marker.finish(repo).await {
        Ok(()) => {}
        // The backup itself is committed (or failed for its own reason): a marker left
        // behind only holds garbage collection back until it is stale.
        Err(e) => tracing::warn!("{e:#}; `pitr expire` will report it until it is stale"),
    }
    result
}

async fn take_backup(
    repo: &Repo,
    args: BackupRequest,
    reporter: &dyn Reporter,
    marker: &keepalive::MarkerKeeper,
) -> anyhow::Result<BackupManifest> {
    let started = Instant::now();
    let repo = repo.clone();
    let mut conn = ConnConfig::parse(args.dbname.as_deref().unwrap_or(""))?;
    conn.password = conn.password.or(args.password.clone());
    let mut main = ReplicationClient::connect(&conn)
        .await
        .with_context(|| format!("connect to {}", conn.target()))?;
    let system = main.identify_system().await?;
    claim_cluster(&repo, system.system_identifier, "this server").await?;
    let seg_size = main.wal_segment_size().await?;
    let pg_version = main.parameter("server_version").unwrap_or("").to_string();
    let pg_version_num = main.server_version_num().unwrap_or(0);

    // The slot first, on the WAL connection: it holds WAL from the last checkpoint's redo
    // point, which the backup's start cannot precede.
    let mut wal_client = ReplicationClient::connect(&conn)
        .await
        .with_context(|| format!("connect to {} for WAL streaming", conn.target()))?;
    let slot = format!("pitr_backup_{}", std::process::id());
    wal_client.create_temporary_physical_slot(&slot).await?;

    let known = known_files(&repo).await;
    let up = Uploader::new(repo.clone());
    let start_time = chrono::Utc::now();
    let id = start_time.format("%Y%m%dT%H%M%SZ").to_string();
    let label = args.label.clone().unwrap_or_else(|| format!("pitr {id}"));
    let options = BaseBackupOptions {
        label: label.clone(),
        progress: true,
        checkpoint: args.checkpoint,
        wait: false,
        manifest: true,
        tablespace_map: true,
        max_rate: args.max_rate,
        verify_checksums: true,
    };
    tracing::info!(
        "backup {id}: {} checkpoint on {} (system {})",
        if args.checkpoint == CheckpointMode::Fast {
            "fast"
        } else {
            "spread"
        },
        conn.target(),
        system.system_identifier
    );
    if !known.is_empty() {
        tracing::info!(
            "backup {id}: comparing {} files with the previous backup's chunk fingerprints",
            known.len()
        );
    }
    if args.checkpoint == CheckpointMode::Spread {
        say_spread_checkpoint(&mut main, &id).await;
    }
    let mut stream = main.base_backup(&options).await?;
    let (start_lsn, timeline) = match stream.next().await? {
        Some(BackupEvent::Start { lsn, timeline }) => (lsn, timeline),
        other => bail!("BASE_BACKUP began with {other:?} instead of its start position"),
    };
    tracing::info!("backup {id}: started at {start_lsn} on timeline {timeline}");
    let (end_tx, end_rx) = watch::channel(None::<Lsn>);
    let wal_task = tokio::spawn(wal::stream_wal(
        wal_client,
        slot,
        start_lsn,
        timeline,
        seg_size,
        end_rx,
        up.clone(),
    ));

    let Received {
        stop_lsn,
        entries,
        tablespaces,
        manifest_file,
    } = receive(&mut stream, &up, &known, reporter, &id).await?;
    let mut warnings: Vec<String> = stream
        .take_notices()
        .into_iter()
        .map(|n| n.to_string())
        .collect();
    drop(stream);
    warnings.extend(main.take_notices().into_iter().map(|n| n.to_string()));
    let _ = main.close().await;
    tracing::info!("backup {id}: server done at {stop_lsn}; waiting for WAL and uploads");
    end_tx.send_replace(Some(stop_lsn));

    let manifest_file = manifest_file.context("the server sent no backup_manifest")?;
    let server_manifest = server_manifest_entry(manifest_file, &up).await?;
    let wal = wal_task.await.context("WAL streaming task")??;
    let mut files = Vec::with_capacity(entries.len());
    for e in entries {
        files.push(e.resolve().await?);
    }
    let size_bytes = files.iter().map(|f| f.size).sum();
    let name_of = |lsn: Lsn| WalFileName::segment(timeline, lsn.0 / u64::from(seg_size), seg_size);
    let manifest = BackupManifest {
        format_version: 1,
        id: id.clone(),
        label,
        start_time,
        stop_time: chrono::Utc::now(),
        start_lsn,
        stop_lsn,
        timeline,
        system_identifier: system.system_identifier,
        pg_version,
        pg_version_num,
        size_bytes,
        stored_bytes: up.stored_bytes(),
        wal_start: name_of(start_lsn),
        wal_stop: name_of(Lsn(stop_lsn.0.saturating_sub(1).max(start_lsn.0))),
        files,
        tablespaces,
        wal,
        server_manifest,
        warnings,
    };
    for w in &manifest.warnings {
        tracing::warn!("backup {id}: server said: {w}");
    }
    marker.check_before_commit(&repo).await?;
    let manifest = commit(&repo, manifest).await?;
    let id = manifest.id.clone();
    let chunks: usize = manifest.files.iter().map(|f| f.chunks.len()).sum();
    tracing::info!(
        "backup {id} committed: {} files, {} MiB, {} MiB new in the repository, {} of {chunks} \
         chunks recognised unchanged by fingerprint, {:.1} s",
        manifest.files.len(),
        manifest.size_bytes >> 20,
        manifest.stored_bytes >> 20,
        up.recognised_chunks(),
        started.elapsed().as_secs_f64()
    );
    Ok(manifest)
}

/// While the server's spread checkpoint runs it answers nothing, for up to most of
/// checkpoint_timeout: say so, rather than sit silent for minutes.
async fn say_spread_checkpoint(main: &mut ReplicationClient, id: &str) {
    let timeout = main.show("checkpoint_timeout").await.ok();
    let target = main.show("checkpoint_completion_target").await.ok();
    let bound = match (&timeout, &target) {
        (Some(t), Some(c)) => {
            format!(" (up to about checkpoint_timeout {t} × checkpoint_completion_target {c})")
        }
        _ => String::new(),
    };
    tracing::info!(
        "backup {id}: waiting for the server's spread checkpoint{bound}; \
         --checkpoint fast starts at once, at the cost of an I/O burst"
    );
}

/// What the BASE_BACKUP stream brought after its start: the files (being stored), the
/// tablespaces, the server's backup_manifest, and the end position.
struct Received {
    stop_lsn: Lsn,
    entries: Vec<PendingEntry>,
    tablespaces: Vec<Tablespace>,
    manifest_file: Option<ChunkedFile>,
}

/// Follow the BASE_BACKUP stream to its end: each tar archive cut into files and chunks as
/// it arrives (`known`: the previous backup's, recognised by fingerprint), progress reported.
async fn receive(
    stream: &mut BaseBackupStream<'_>,
    up: &Uploader,
    known: &KnownFiles,
    reporter: &dyn Reporter,
    id: &str,
) -> anyhow::Result<Received> {
    let mut entries: Vec<PendingEntry> = Vec::new();
    let mut tablespaces = Vec::new();
    let mut sink: Option<(String, ArchiveSink)> = None;
    let mut manifest_file: Option<ChunkedFile> = None;
    let mut total_estimate = 0u64;
    let mut saw_base = false;
    let progress = reporter.start(format!("backup {id}"), 0);
    let stop_lsn = loop {
        let Some(event) = stream.next().await? else {
            bail!("BASE_BACKUP ended without its end position");
        };
        match event {
            BackupEvent::Start { .. } => bail!("BASE_BACKUP sent a second start"),
            BackupEvent::Tablespaces(list) => {
                for t in list {
                    total_estimate += t.size_kb.unwrap_or(0).max(0) as u64 * 1024;
                    if let (Some(oid), Some(location)) = (t.oid, t.location) {
                        tablespaces.push(Tablespace { oid, location });
                    }
                }
                progress.set_total(total_estimate);
            }
            BackupEvent::NewArchive { name, .. } => {
                if let Some((prev, s)) = sink.take() {
                    s.finish(&prev)?;
                }
                let tablespace = match name.as_str() {
                    "base.tar" if saw_base => bail!("the server sent base.tar twice"),
                    "base.tar" => {
                        saw_base = true;
                        None
                    }
                    other => Some(
                        other
                            .strip_suffix(".tar")
                            .and_then(|o| o.parse::<u32>().ok())
                            .with_context(|| format!("unexpected archive name {other:?}"))?,
                    ),
                };
                sink = Some((name, ArchiveSink::new(tablespace)));
            }
            BackupEvent::Data(bytes) => {
                let (name, s) = sink.as_mut().context("backup data before any archive")?;
                s.feed(&bytes, up, known, &mut entries)
                    .await
                    .with_context(|| format!("archive {name}"))?;
            }
            BackupEvent::Progress(done) => progress.set(done),
            BackupEvent::ManifestStart => {
                if let Some((prev, s)) = sink.take() {
                    s.finish(&prev)?;
                }
                manifest_file = Some(up.file(None));
            }
            BackupEvent::ManifestData(bytes) => {
                let m = manifest_file
                    .as_mut()
                    .context("manifest data before its start")?;
                m.push(up, &bytes).await;
            }
            BackupEvent::End { lsn, .. } => break lsn,
        }
    };
    progress.finish();
    if let Some((prev, s)) = sink.take() {
        s.finish(&prev)?;
    }
    if !saw_base {
        bail!("the server sent no base.tar: nothing to restore the data directory from");
    }
    Ok(Received {
        stop_lsn,
        entries,
        tablespaces,
        manifest_file,
    })
}

/// The server's backup_manifest as a file of the backup.
async fn server_manifest_entry(
    manifest_file: ChunkedFile,
    up: &Uploader,
) -> anyhow::Result<FileEntry> {
    PendingEntry {
        entry: FileEntry {
            path: "backup_manifest".parse().expect("a safe relative path"),
            tablespace: None,
            kind: FileKind::File,
            mode: 0o600,
            size: manifest_file.size,
            mtime: chrono::Utc::now().timestamp(),
            chunks: Vec::new(),
            fingerprints: Vec::new(),
            hash: None,
            link: None,
        },
        chunks: Some(manifest_file.finish(up).await),
    }
    .resolve()
    .await
}

/// Write the manifest create-only: the backup is committed. Two backups started in the same
/// second: the later one takes the next free suffix.
async fn commit(repo: &Repo, mut manifest: BackupManifest) -> anyhow::Result<BackupManifest> {
    let id = manifest.id.clone();
    for n in 1.. {
        let body = serde_json::to_vec(&manifest)?;
        match repo
            .put_doc(&BackupManifest::key(&manifest.id), body.into())
            .await?
        {
            DocWrite::Created => break,
            DocWrite::Exists(_) if n < 100 => manifest.id = format!("{id}-{}", n + 1),
            DocWrite::Exists(_) => bail!("backup IDs {id} to {} are all taken", manifest.id),
        }
    }
    Ok(manifest)
}

/// The chunks and fingerprints of the newest backup's files. A backup that cannot be read
/// only costs speed: this one then hashes every chunk with SHA-256.
async fn known_files(repo: &Repo) -> KnownFiles {
    let manifest = match BackupManifest::newest(repo).await {
        Ok(Some(m)) => m,
        Ok(None) => return KnownFiles::new(),
        Err(e) => {
            tracing::warn!("cannot read the newest backup ({e:#}); every chunk will be hashed");
            return KnownFiles::new();
        }
    };
    manifest
        .files
        .into_iter()
        .filter(|f| !f.chunks.is_empty() && f.fingerprints.len() == f.chunks.len())
        .map(|f| {
            let known: Arc<[KnownChunk]> = f
                .chunks
                .iter()
                .zip(&f.fingerprints)
                .map(|(&chunk, &fingerprint)| KnownChunk { chunk, fingerprint })
                .collect();
            ((f.tablespace, f.path), known)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pitr_store::{ChunkId, ChunkRef, Fingerprint, RepoConfig};

    fn file(path: &str, chunks: &[&[u8]], fingerprints: bool) -> serde_json::Value {
        let refs: Vec<ChunkRef> = chunks
            .iter()
            .map(|c| ChunkRef {
                id: ChunkId::of(c),
                len: c.len() as u32,
            })
            .collect();
        let fps: Vec<Fingerprint> = if fingerprints {
            chunks.iter().map(|c| Fingerprint::of(c)).collect()
        } else {
            Vec::new()
        };
        serde_json::json!({"path": path, "kind": "file", "mode": 384, "size": 3, "mtime": 0,
                           "chunks": refs, "fingerprints": fps})
    }

    async fn put_manifest(repo: &Repo, id: &str, files: Vec<serde_json::Value>) {
        let server = serde_json::json!({"path": "backup_manifest", "kind": "file", "mode": 384,
                                        "size": 0, "mtime": 0});
        let m = serde_json::json!({
            "format_version": 1, "id": id, "label": id,
            "start_time": "2026-11-26T00:00:00Z", "stop_time": "2026-11-26T00:00:01Z",
            "start_lsn": "0/2000028", "stop_lsn": "0/2000100", "timeline": 1,
            "system_identifier": "1", "pg_version": "15.18", "pg_version_num": 150018,
            "size_bytes": 3, "stored_bytes": 3,
            "wal_start": "000000010000000000000002", "wal_stop": "000000010000000000000002",
            "files": files, "tablespaces": [], "wal": [], "server_manifest": server,
        });
        let body = serde_json::to_vec(&m).unwrap();
        repo.put_doc(&BackupManifest::key(id), body.into())
            .await
            .unwrap();
    }

    /// The newest manifest's fingerprints are what the next backup compares with; files of a
    /// manifest without them (written before pitr kept them) are simply not known.
    #[tokio::test]
    async fn known_files_come_from_the_newest_manifest_with_fingerprints() {
        let (repo, _) = Repo::init(
            "memory://",
            RepoConfig::default(),
            &pitr_store::RepoOptions::default(),
        )
        .await
        .unwrap();
        assert!(
            known_files(&repo).await.is_empty(),
            "no backups, nothing known"
        );

        put_manifest(
            &repo,
            "20261126T000000Z",
            vec![file("base/1/1", &[b"old"], true)],
        )
        .await;
        put_manifest(
            &repo,
            "20261126T000100Z",
            vec![
                file("base/1/2", &[b"abc", b"def"], true),
                file("base/1/3", &[b"ghi"], false),
            ],
        )
        .await;
        let known = known_files(&repo).await;
        assert_eq!(
            known.len(),
            1,
            "only the newest backup's files with fingerprints"
        );
        let k = &known[&(None, "base/1/2".parse().unwrap())];
        assert_eq!(k.len(), 2);
        assert_eq!(k[1].chunk.id, ChunkId::of(b"def"));
        assert_eq!(k[1].fingerprint, Fingerprint::of(b"def"));
    }
}
