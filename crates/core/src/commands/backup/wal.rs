//! The backup's own WAL, streamed on a second replication connection while the files arrive.

use anyhow::bail;
use pitr_pg::{Lsn, TimelineId, WalFileName};
use pitr_protocol::{ReplicationClient, WalEvent};
use pitr_store::Uploader;
use tokio::sync::watch;

use super::sink::PendingEntry;
use crate::repofile::{FileEntry, FileKind};

/// Stream WAL from the segment holding `start` until the backup's end position arrives on
/// `end`, storing whole segments (the last one zero-padded, as pg_basebackup does) as files
/// of this backup only — never under the archive's names.
pub(super) async fn stream_wal(
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
        )
        .parse()
        .expect("a WAL segment path is a safe relative path"),
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
                        if pos.0.is_multiple_of(seg) {
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
    if !pos.0.is_multiple_of(seg) {
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
