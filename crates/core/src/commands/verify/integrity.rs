//! The integrity checks of `pitr verify`: what each document says of itself, the first page
//! of each archived segment, the history files, and whether the archived WAL carries every
//! backup forward without a missing segment.

use std::collections::{HashMap, HashSet};

use futures::StreamExt;

use pitr_pg::{
    timeline_path, HistoryEntry, Lsn, TimelineId, WalFileKind, WalFileName,
    DEFAULT_WAL_SEGMENT_SIZE,
};
use pitr_store::{ChunkId, ChunkRef, Repo};

use crate::index::{ArchiveIndex, Gap};
use crate::repofile::{BackupManifest, WalRef};

/// Missing archived segments: between archived ones of a timeline (whoever needs them), and
/// on each backup's way forward. One line per missing range, naming the oldest backup whose
/// recovery cannot get past it.
pub(super) fn continuity_problems(
    backups: &[BackupManifest],
    refs: &[WalRef],
    histories: &HashMap<TimelineId, Vec<HistoryEntry>>,
) -> Vec<String> {
    let seg_size = refs
        .iter()
        .find_map(|r| r.segment_size)
        .or(backups.first().map(BackupManifest::segment_size))
        .unwrap_or(DEFAULT_WAL_SEGMENT_SIZE);
    let mut index = ArchiveIndex::new(seg_size);
    for r in refs {
        index.insert(&r.name);
    }
    let segno = |n: &WalFileName| n.segment_number(seg_size).unwrap_or(0);
    let mut spans: Vec<(TimelineId, u64, u64, Option<&str>)> = index
        .gaps()
        .iter()
        .map(|g| (g.timeline, segno(&g.first), segno(&g.last), None))
        .collect();
    let mut by_start: Vec<&BackupManifest> = backups.iter().collect();
    by_start.sort_by_key(|b| b.start_time);
    for b in by_start {
        for g in backup_gaps(b, &index, histories) {
            spans.push((
                g.timeline,
                segno(&g.first),
                segno(&g.last),
                Some(b.id.as_str()),
            ));
        }
    }
    spans.sort_by_key(|s| (s.0, s.1));
    let mut merged: Vec<(TimelineId, u64, u64, Option<&str>)> = Vec::new();
    for s in spans {
        match merged.last_mut() {
            Some(m) if m.0 == s.0 && s.1 <= m.2.saturating_add(1) => {
                m.2 = m.2.max(s.2);
                m.3 = m.3.or(s.3);
            }
            _ => merged.push(s),
        }
    }
    merged
        .into_iter()
        .map(|(tli, a, b, who)| {
            let (first, last) = (index.segment_name(tli, a), index.segment_name(tli, b));
            let what = if a == b {
                format!("archived WAL on timeline {tli}: segment {first} is missing")
            } else {
                format!("archived WAL on timeline {tli}: segments {first} to {last} are missing")
            };
            match who {
                Some(id) => format!("{what} (recovery from backup {id} cannot get past it)"),
                None => what,
            }
        })
        .collect()
}

/// The segments recovery from backup `b` would ask the archive for and not find: from its
/// start (less the segments it carries itself) to the newest archived on its timeline path,
/// and at least to its stop segment when it does not carry that.
fn backup_gaps(
    b: &BackupManifest,
    index: &ArchiveIndex,
    histories: &HashMap<TimelineId, Vec<HistoryEntry>>,
) -> Vec<Gap> {
    let seg_size = index.segment_size();
    let Some(start) = b.wal_start.segment_number(seg_size) else {
        return Vec::new();
    };
    let stop = b.stop_lsn.0.saturating_sub(1).max(b.start_lsn.0) / u64::from(seg_size);
    let carried: HashSet<&str> = b
        .wal
        .iter()
        .filter_map(|f| f.path.as_str().strip_prefix("pg_wal/"))
        .collect();
    let carries =
        |segno: u64| carried.contains(WalFileName::segment(b.timeline, segno, seg_size).as_str());
    let mut from = start;
    while from < stop && carries(from) {
        from += 1;
    }
    let through = (!carries(stop)).then_some(stop);
    index.missing_along(&backup_path(b, index, histories), from, through)
}

/// The timelines recovery from `b` follows to the newest archived one (`latest`, as restore
/// plans it); just its own when the newest did not branch off it after it was consistent, or
/// its history is not in the archive (reported elsewhere).
fn backup_path(
    b: &BackupManifest,
    index: &ArchiveIndex,
    histories: &HashMap<TimelineId, Vec<HistoryEntry>>,
) -> Vec<(TimelineId, Lsn, Option<Lsn>)> {
    let own = vec![(b.timeline, Lsn(0), None)];
    let newest = index
        .newest_timeline()
        .map_or(b.timeline, |t| t.max(b.timeline));
    if newest == b.timeline {
        return own;
    }
    let Some(history) = histories.get(&newest) else {
        return own;
    };
    let path = timeline_path(newest, history);
    let follows = path
        .iter()
        .any(|(t, _, end)| *t == b.timeline && end.is_none_or(|e| e >= b.stop_lsn));
    if follows {
        path
    } else {
        own
    }
}

/// What a WAL ref says about itself that cannot be true (the checks restore-wal makes before
/// it fetches), and a cluster other than the repository's.
pub(super) fn check_ref(r: &WalRef, sysid: Option<u64>) -> Vec<String> {
    let key = WalRef::key(&r.name);
    let mut out = Vec::new();
    if let Err(e) = r.check(&r.name) {
        out.push(format!("archived WAL {} ({key}): {e:#}", r.name));
    }
    if let (Some(ours), Some(theirs)) = (sysid, r.system_identifier) {
        if ours != theirs {
            out.push(format!(
                "archived WAL {} ({key}): from database system {theirs}, the repository's is {ours}",
                r.name
            ));
        }
    }
    out
}

/// Whether `data`, the first chunk of archived segment `name` of `size` bytes, starts with
/// that segment's long page header (an older timeline is the copy a timeline's first segment
/// starts with).
fn check_first_page(
    data: &[u8],
    name: &WalFileName,
    size: u64,
    sysid: Option<u64>,
) -> Option<String> {
    let e = crate::repofile::check_first_page(data, name, size, sysid).err()?;
    Some(format!(
        "archived WAL {name} ({}): {e:#}",
        WalRef::key(name)
    ))
}

/// The archived history files by timeline, and those that do not parse (recovery would stop
/// on them).
pub(super) async fn read_histories(
    repo: &Repo,
    refs: &[WalRef],
) -> (Vec<String>, HashMap<TimelineId, Vec<HistoryEntry>>) {
    let mut out = Vec::new();
    let mut parsed_all = HashMap::new();
    for r in refs
        .iter()
        .filter(|r| r.name.kind() == WalFileKind::History)
    {
        // An unreadable chunk is reported by the chunk pass already.
        let Ok(bytes) = repo.get_bytes(&r.chunks).await else {
            continue;
        };
        let parsed = String::from_utf8(bytes)
            .map_err(|e| e.to_string())
            .and_then(|t| pitr_pg::parse_history(&t).map_err(|e| e.to_string()));
        match parsed {
            Ok(entries) => {
                parsed_all.insert(r.name.timeline(), entries);
            }
            Err(e) => out.push(format!(
                "archived WAL {} ({}): not a history file: {e}",
                r.name,
                WalRef::key(&r.name)
            )),
        }
    }
    (out, parsed_all)
}

/// A chunk to read, who needs it (for the message), and the WAL segments whose first page it
/// holds (checked on the bytes read).
pub(super) struct ToRead {
    pub(super) chunk: ChunkRef,
    owner: String,
    first_page_of: Vec<(WalFileName, u64)>,
}

/// Every distinct chunk the backups and the archived WAL name, under the first file that
/// names it, with the segments whose first page it holds.
pub(super) fn chunks_to_read(
    backups: &[BackupManifest],
    refs: &[WalRef],
) -> HashMap<(ChunkId, u32), ToRead> {
    let mut chunks: HashMap<(ChunkId, u32), ToRead> = HashMap::new();
    let mut name = |list: &[ChunkRef], owner: &dyn Fn() -> String| {
        for c in list {
            // Read once per length a chunk is named with: each reference's length is checked.
            chunks.entry((c.id, c.len)).or_insert_with(|| ToRead {
                chunk: *c,
                owner: owner(),
                first_page_of: Vec::new(),
            });
        }
    };
    for b in backups {
        for f in b.all_files() {
            name(&f.chunks, &|| format!("backup {} file {}", b.id, f.path));
        }
    }
    for r in refs {
        name(&r.chunks, &|| format!("archived WAL {}", r.name));
    }
    for r in refs {
        if matches!(r.name.kind(), WalFileKind::Segment | WalFileKind::Partial) {
            if let Some(first) = r
                .chunks
                .first()
                .and_then(|c| chunks.get_mut(&(c.id, c.len)))
            {
                first.first_page_of.push((r.name.clone(), r.size));
            }
        }
    }
    chunks
}

/// Read every chunk (decompressed and re-hashed by the store), `repo.concurrency()` at a
/// time, and check the first pages on the bytes read: the problems, sorted.
pub(super) async fn read_chunks(
    repo: &Repo,
    chunks: HashMap<(ChunkId, u32), ToRead>,
    sysid: Option<u64>,
) -> Vec<String> {
    let mut problems: Vec<String> = futures::stream::iter(chunks.into_values())
        .map(|c| {
            let repo = repo.clone();
            async move {
                let data = match repo.get_chunk(&c.chunk).await {
                    Ok(data) => data,
                    Err(err) => return vec![format!("{}: {err}", c.owner)],
                };
                c.first_page_of
                    .iter()
                    .filter_map(|(name, size)| check_first_page(&data, name, *size, sysid))
                    .collect()
            }
        })
        .buffer_unordered(repo.concurrency())
        .flat_map(futures::stream::iter)
        .collect()
        .await;
    problems.sort();
    problems
}
