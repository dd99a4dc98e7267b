//! `pitr backup`: a base backup over the replication protocol, streamed straight into the
//! store — files cut into chunks as the tar stream arrives, the WAL of the backup streamed on
//! a second connection, the manifest written last.

mod manifest;
pub mod tar;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use pitr_pg::{Lsn, TimelineId, WalFileName};
use pitr_protocol::{
    BackupEvent, BaseBackupOptions, CheckpointMode, ConnConfig, ReplicationClient, WalEvent,
};
use pitr_store::{ChunkedFile, DocWrite, KnownChunk, PendingChunks, Repo, Uploader};
use tokio::sync::watch;

use manifest::{chunks_hash, Tablespace};
pub use manifest::{BackupManifest, FileEntry, FileKind};
use tar::{EntryKind, TarEvent, TarHeader, TarParser};

use crate::cli::{BackupArgs, Checkpoint, ListArgs};
use crate::progress::Progress;
use crate::walref::claim_cluster;

/// Where a file lives in a backup: tablespace OID (none for the data directory) and path.
type FileKey = (Option<u32>, String);

/// The chunks of the previous backup's files, with their fingerprints, by file.
type KnownFiles = HashMap<FileKey, Arc<[KnownChunk]>>;

/// A manifest entry whose chunks may still be uploading.
struct PendingEntry {
    entry: FileEntry,
    chunks: Option<PendingChunks>,
}

impl PendingEntry {
    async fn resolve(self) -> anyhow::Result<FileEntry> {
        let mut entry = self.entry;
        if let Some(p) = self.chunks {
            (entry.chunks, entry.fingerprints) = p.wait().await?;
            entry.hash = Some(chunks_hash(&entry.chunks));
        }
        Ok(entry)
    }
}

fn entry_from(h: &TarHeader, tablespace: Option<u32>) -> FileEntry {
    FileEntry {
        path: h.path.clone(),
        tablespace,
        kind: match h.kind {
            EntryKind::File => FileKind::File,
            EntryKind::Directory => FileKind::Directory,
            EntryKind::Symlink => FileKind::Symlink,
        },
        mode: h.mode & 0o7777,
        size: h.size,
        mtime: h.mtime,
        chunks: Vec::new(),
        fingerprints: Vec::new(),
        hash: None,
        link: (h.kind == EntryKind::Symlink).then(|| h.link_target.clone()),
    }
}

enum Act<'a> {
    Start(TarHeader),
    Data(&'a [u8]),
    End,
}

/// Receives one tablespace's tar stream and turns it into manifest entries.
struct ArchiveSink {
    tablespace: Option<u32>,
    parser: TarParser,
    current: Option<(FileEntry, ChunkedFile)>,
}

impl ArchiveSink {
    fn new(tablespace: Option<u32>) -> Self {
        ArchiveSink {
            tablespace,
            parser: TarParser::default(),
            current: None,
        }
    }

    async fn feed(
        &mut self,
        data: &[u8],
        up: &Uploader,
        known: &KnownFiles,
        out: &mut Vec<PendingEntry>,
    ) -> anyhow::Result<()> {
        let mut acts = Vec::new();
        self.parser.feed(data, |e| {
            acts.push(match e {
                TarEvent::Entry(h) => Act::Start(h),
                TarEvent::Data(d) => Act::Data(d),
                TarEvent::EntryEnd => Act::End,
            });
            Ok(())
        })?;
        for act in acts {
            match act {
                Act::Start(h) => {
                    let entry = entry_from(&h, self.tablespace);
                    let key = (self.tablespace, entry.path.clone());
                    let file = up.file(known.get(&key).cloned());
                    self.current = Some((entry, file));
                }
                Act::Data(d) => {
                    let (_, file) = self.current.as_mut().context("tar data outside an entry")?;
                    file.push(up, d).await;
                }
                Act::End => {
                    let (entry, file) = self.current.take().context("tar entry end twice")?;
                    let chunks = (entry.kind == FileKind::File).then_some(file);
                    let chunks = match chunks {
                        Some(f) => Some(f.finish(up).await),
                        None => None,
                    };
                    out.push(PendingEntry { entry, chunks });
                }
            }
        }
        Ok(())
    }

    fn finish(&self, name: &str) -> anyhow::Result<()> {
        self.parser
            .finish()
            .with_context(|| format!("archive {name}"))?;
        Ok(())
    }
}

pub async fn backup(url: &str, args: BackupArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let repo = Repo::open(url).await?;
    let conn = ConnConfig::parse(args.dbname.as_deref().unwrap_or(""))?;
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
        checkpoint: match args.checkpoint {
            Checkpoint::Fast => CheckpointMode::Fast,
            Checkpoint::Spread => CheckpointMode::Spread,
        },
        wait: false,
        manifest: true,
        tablespace_map: true,
        max_rate: args.max_rate,
        verify_checksums: true,
    };
    tracing::info!(
        "backup {id}: {} checkpoint on {} (system {})",
        if args.checkpoint == Checkpoint::Fast {
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
    let mut stream = main.base_backup(&options).await?;
    let (start_lsn, timeline) = match stream.next().await? {
        Some(BackupEvent::Start { lsn, timeline }) => (lsn, timeline),
        other => bail!("BASE_BACKUP began with {other:?} instead of its start position"),
    };
    tracing::info!("backup {id}: started at {start_lsn} on timeline {timeline}");
    let (end_tx, end_rx) = watch::channel(None::<Lsn>);
    let wal_task = tokio::spawn(stream_wal(
        wal_client,
        slot,
        start_lsn,
        timeline,
        seg_size,
        end_rx,
        up.clone(),
    ));

    let mut entries: Vec<PendingEntry> = Vec::new();
    let mut tablespaces = Vec::new();
    let mut sink: Option<(String, ArchiveSink)> = None;
    let mut manifest_file: Option<ChunkedFile> = None;
    let mut total_estimate = 0u64;
    let progress = Progress::new(format!("backup {id}"), 0);
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
                    "base.tar" => None,
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
                let (_, s) = sink.as_mut().context("backup data before any archive")?;
                s.feed(&bytes, &up, &known, &mut entries).await?;
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
                m.push(&up, &bytes).await;
            }
            BackupEvent::End { lsn, .. } => break lsn,
        }
    };
    progress.finish();
    if let Some((prev, s)) = sink.take() {
        s.finish(&prev)?;
    }
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
    let manifest_size = manifest_file.size;
    let server_manifest = PendingEntry {
        entry: FileEntry {
            path: "backup_manifest".into(),
            tablespace: None,
            kind: FileKind::File,
            mode: 0o600,
            size: manifest_size,
            mtime: chrono::Utc::now().timestamp(),
            chunks: Vec::new(),
            fingerprints: Vec::new(),
            hash: None,
            link: None,
        },
        chunks: Some(manifest_file.finish(&up).await),
    }
    .resolve()
    .await?;
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
        start_lsn: start_lsn.to_string(),
        stop_lsn: stop_lsn.to_string(),
        timeline: timeline.0,
        system_identifier: system.system_identifier.to_string(),
        pg_version,
        pg_version_num,
        size_bytes,
        stored_bytes: up.stored_bytes(),
        wal_start: name_of(start_lsn).to_string(),
        wal_stop: name_of(Lsn(stop_lsn.0.saturating_sub(1).max(start_lsn.0))).to_string(),
        files,
        tablespaces,
        wal,
        server_manifest,
        warnings,
    };
    for w in &manifest.warnings {
        tracing::warn!("backup {id}: server said: {w}");
    }
    // Two backups started in the same second: the later one takes the next free suffix.
    let mut manifest = manifest;
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
    println!("{id}");
    Ok(())
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

/// Stream WAL from the segment holding `start` until the backup's end position arrives on
/// `end`, storing whole segments (the last one zero-padded, as pg_basebackup does) as files
/// of this backup only — never under the archive's names.
async fn stream_wal(
    mut client: ReplicationClient,
    slot: String,
    start: Lsn,
    timeline: TimelineId,
    seg_size: u32,
    mut end: watch::Receiver<Option<Lsn>>,
    up: Uploader,
) -> anyhow::Result<Vec<FileEntry>> {
    let seg = u64::from(seg_size);
    let mut pos = Lsn(start.0 - start.0 % seg);
    let mut stream = client.start_replication(Some(&slot), pos, timeline).await?;
    let mut current = up.file(None);
    let mut done: Vec<PendingEntry> = Vec::new();
    let segment_entry = |pos: Lsn, size: u64| FileEntry {
        path: format!(
            "pg_wal/{}",
            WalFileName::segment(timeline, pos.0 / seg, seg_size)
        ),
        tablespace: None,
        kind: FileKind::File,
        mode: 0o600,
        size,
        mtime: chrono::Utc::now().timestamp(),
        chunks: Vec::new(),
        fingerprints: Vec::new(),
        hash: None,
        link: None,
    };
    loop {
        if let Some(end) = *end.borrow() {
            if pos >= end {
                break;
            }
        }
        tokio::select! {
            event = stream.next() => match event? {
                Some(WalEvent::XLogData { start, data }) => {
                    if start != pos {
                        bail!("WAL stream jumped from {pos} to {start}");
                    }
                    let mut data = &data[..];
                    while !data.is_empty() {
                        let room = (seg - pos.0 % seg) as usize;
                        let take = room.min(data.len());
                        current.push(&up, &data[..take]).await;
                        data = &data[take..];
                        pos = Lsn(pos.0 + take as u64);
                        if pos.0 % seg == 0 {
                            let file = std::mem::replace(&mut current, up.file(None));
                            done.push(PendingEntry {
                                entry: segment_entry(Lsn(pos.0 - seg), seg),
                                chunks: Some(file.finish(&up).await),
                            });
                            stream.send_status(pos, pos, Lsn(0), false).await?;
                        }
                    }
                }
                Some(WalEvent::Keepalive { .. }) => {}
                Some(WalEvent::EndOfTimeline { next_tli, .. }) => {
                    bail!("timeline switched to {next_tli} during the backup (at {pos}); take the backup again")
                }
                None => bail!("WAL stream ended at {pos}, before the backup's end"),
            },
            changed = end.changed() => {
                if changed.is_err() {
                    bail!("backup ended before its WAL was complete");
                }
            }
        }
    }
    stream.finish().await?;
    let _ = client.close().await;
    if pos.0 % seg != 0 {
        let seg_start = Lsn(pos.0 - pos.0 % seg);
        let zeros = vec![0u8; up.chunk_size()];
        let mut left = seg - pos.0 % seg;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            current.push(&up, &zeros[..n]).await;
            left -= n as u64;
        }
        done.push(PendingEntry {
            entry: segment_entry(seg_start, seg),
            chunks: Some(current.finish(&up).await),
        });
    }
    let mut out = Vec::with_capacity(done.len());
    for d in done {
        out.push(d.resolve().await?);
    }
    Ok(out)
}

pub async fn list(url: &str, args: ListArgs) -> anyhow::Result<()> {
    let repo = Repo::open(url).await?;
    let backups = BackupManifest::list(&repo).await?;
    if args.json {
        let list: Vec<_> = backups.iter().map(BackupManifest::summary).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if backups.is_empty() {
        println!("no backups in {}", repo.url());
        return Ok(());
    }
    println!(
        "{:<17} {:<20} {:<20} {:>12} {:>12} {:>4}  wal",
        "id", "start", "stop", "size MiB", "new MiB", "tli"
    );
    for b in &backups {
        println!(
            "{:<17} {:<20} {:<20} {:>12} {:>12} {:>4}  {}..{}",
            b.id,
            b.start_time.format("%Y-%m-%d %H:%M:%S"),
            b.stop_time.format("%Y-%m-%d %H:%M:%S"),
            b.size_bytes >> 20,
            b.stored_bytes >> 20,
            b.timeline,
            b.wal_start,
            b.wal_stop
        );
    }
    Ok(())
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
        let (repo, _) = Repo::init("memory://", RepoConfig::default())
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
        let k = &known[&(None, "base/1/2".to_string())];
        assert_eq!(k.len(), 2);
        assert_eq!(k[1].chunk.id, ChunkId::of(b"def"));
        assert_eq!(k[1].fingerprint, Fingerprint::of(b"def"));
    }
}
