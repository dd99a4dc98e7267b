//! `pitr info`: what the repository holds. For now the WAL half: timelines, first and last
//! segment, gaps, last archive time, bytes raw vs stored.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use pitr_pg::{TimelineId, WalFileKind, WalFileName, DEFAULT_WAL_SEGMENT_SIZE};
use pitr_store::Repo;
use serde::Serialize;

use crate::backup::BackupManifest;
use crate::cli::InfoArgs;
use crate::walref::{repo_system_identifier, WalRef};

#[derive(Serialize)]
struct Info {
    repository: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_identifier: Option<String>,
    chunk_size: u32,
    compression_level: i32,
    /// Every chunk body in the repository.
    stored_bytes: u64,
    backups: Vec<serde_json::Value>,
    /// From the end of the earliest backup to the last archived WAL.
    recoverable_from: Option<chrono::DateTime<chrono::Utc>>,
    recoverable_to: Option<chrono::DateTime<chrono::Utc>>,
    wal: WalInfo,
}

#[derive(Serialize, Default)]
struct WalInfo {
    timelines: Vec<TimelineInfo>,
    history_files: Vec<String>,
    files: usize,
    last_archived: Option<String>,
    last_archived_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Bytes of the archived files as PostgreSQL wrote them.
    raw_bytes: u64,
    /// Bytes of new chunks archiving added.
    stored_bytes: u64,
}

#[derive(Serialize)]
struct TimelineInfo {
    timeline: u32,
    first: String,
    last: String,
    segments: usize,
    /// Missing ranges between first and last: [first missing, last missing].
    gaps: Vec<[String; 2]>,
    partial: Vec<String>,
}

pub async fn info(url: &str, args: InfoArgs) -> anyhow::Result<()> {
    let repo = Repo::open(url).await?;
    let sysid = repo_system_identifier(&repo).await?;
    let refs = load_wal_refs(&repo).await?;
    let stored_bytes = repo.list("chunks/").await?.iter().map(|(_, s)| s).sum();
    let backups = BackupManifest::list(&repo).await?;
    let wal = summarize(&refs);
    let recoverable_from = backups.first().map(|b| b.stop_time);
    let info = Info {
        repository: repo.url().to_string(),
        system_identifier: sysid.map(|s| s.to_string()),
        chunk_size: repo.config().chunk_size,
        compression_level: repo.config().compression_level,
        stored_bytes,
        backups: backups.iter().map(BackupManifest::summary).collect(),
        recoverable_from,
        recoverable_to: recoverable_from
            .and(wal.last_archived_at)
            .max(recoverable_from),
        wal,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print_text(&info);
    }
    Ok(())
}

/// Every WAL ref of the repository.
pub(crate) async fn load_wal_refs(repo: &Repo) -> anyhow::Result<Vec<WalRef>> {
    let keys = repo.list("wal/").await?;
    futures::stream::iter(keys.into_iter().filter_map(|(k, _)| {
        let name = k.rsplit('/').next()?.strip_suffix(".json")?;
        name.parse::<WalFileName>().ok()
    }))
    .map(|name| {
        let repo = repo.clone();
        async move { WalRef::load(&repo, &name).await }
    })
    .buffered(32)
    .try_filter_map(|r| async move { Ok(r) })
    .try_collect()
    .await
}

/// Missing segment ranges, `(timeline, first missing, last missing)`, between the first and
/// the last archived segment of each timeline.
pub(crate) fn wal_gaps(refs: &[WalRef]) -> Vec<(u32, String, String)> {
    summarize(refs)
        .timelines
        .into_iter()
        .flat_map(|t| t.gaps.into_iter().map(move |[a, b]| (t.timeline, a, b)))
        .collect()
}

fn summarize(refs: &[WalRef]) -> WalInfo {
    let mut info = WalInfo::default();
    let mut segments: BTreeMap<TimelineId, Vec<(u64, u32)>> = BTreeMap::new();
    let mut partials: BTreeMap<TimelineId, Vec<String>> = BTreeMap::new();
    for r in refs {
        info.files += 1;
        info.raw_bytes += r.size;
        info.stored_bytes += r.stored_bytes;
        // Look-ahead stores later segments before earlier ones finish, so "last" is the
        // newest segment by name, and "when" the latest archive time of any file.
        if info.last_archived_at.is_none_or(|t| r.archived_at > t) {
            info.last_archived_at = Some(r.archived_at);
        }
        let Ok(name) = r.name.parse::<WalFileName>() else {
            continue;
        };
        if name.kind() == WalFileKind::Segment
            && info.last_archived.as_ref().is_none_or(|l| r.name > *l)
        {
            info.last_archived = Some(r.name.clone());
        }
        let seg_size = r.segment_size.unwrap_or(DEFAULT_WAL_SEGMENT_SIZE);
        match name.kind() {
            WalFileKind::Segment => segments
                .entry(name.timeline())
                .or_default()
                .push((name.segment_number(seg_size).unwrap_or(0), seg_size)),
            WalFileKind::Partial => partials
                .entry(name.timeline())
                .or_default()
                .push(r.name.clone()),
            WalFileKind::History => info.history_files.push(r.name.clone()),
            WalFileKind::BackupHistory => {}
        }
    }
    for (tli, mut segs) in segments {
        segs.sort();
        let seg_size = segs[0].1;
        let name = |n: u64| WalFileName::segment(tli, n, seg_size).to_string();
        let mut gaps = Vec::new();
        for w in segs.windows(2) {
            if w[1].0 > w[0].0 + 1 {
                gaps.push([name(w[0].0 + 1), name(w[1].0 - 1)]);
            }
        }
        info.timelines.push(TimelineInfo {
            timeline: tli.0,
            first: name(segs[0].0),
            last: name(segs[segs.len() - 1].0),
            segments: segs.len(),
            gaps,
            partial: partials.remove(&tli).unwrap_or_default(),
        });
    }
    info
}

fn print_text(info: &Info) {
    println!("repository:  {}", info.repository);
    if let Some(s) = &info.system_identifier {
        println!("system:      {s}");
    }
    println!(
        "chunks:      {} bytes stored (chunk size {}, zstd level {})",
        info.stored_bytes, info.chunk_size, info.compression_level
    );
    println!("backups:     {}", info.backups.len());
    for b in &info.backups {
        println!(
            "  {}  {} .. {}  {} MiB ({} MiB new)",
            b["id"].as_str().unwrap_or(""),
            b["start_time"].as_str().unwrap_or(""),
            b["stop_time"].as_str().unwrap_or(""),
            b["size_bytes"].as_u64().unwrap_or(0) >> 20,
            b["stored_bytes"].as_u64().unwrap_or(0) >> 20,
        );
    }
    if let (Some(from), Some(to)) = (info.recoverable_from, info.recoverable_to) {
        println!("recoverable: {} .. {}", from.to_rfc3339(), to.to_rfc3339());
    }
    let w = &info.wal;
    println!(
        "wal:         {} files, {} bytes raw, {} bytes stored",
        w.files, w.raw_bytes, w.stored_bytes
    );
    if let (Some(n), Some(t)) = (&w.last_archived, &w.last_archived_at) {
        println!("last:        {n} at {}", t.to_rfc3339());
    }
    for t in &w.timelines {
        println!(
            "timeline {}:  {} .. {} ({} segments{})",
            t.timeline,
            t.first,
            t.last,
            t.segments,
            if t.gaps.is_empty() {
                String::new()
            } else {
                format!(", {} gaps", t.gaps.len())
            }
        );
        for [a, b] in &t.gaps {
            println!("  missing:   {a} .. {b}");
        }
    }
    if !w.history_files.is_empty() {
        println!("history:     {}", w.history_files.join(", "));
    }
}
