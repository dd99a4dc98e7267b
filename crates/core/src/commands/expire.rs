//! `pitr expire`: retention, then garbage collection. Which backups stay ([`backups_to_keep`]:
//! the newest N, the last D days, pins), which WAL only the others needed ([`wal_to_remove`]),
//! and which chunks no remaining document names — deleted in that order, and only under the
//! rules of docs/format.md ("Garbage collection") that keep a concurrent backup or
//! archive-wal safe. Nothing is deleted when any document cannot be read.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use pitr_pg::{parse_history, TimelineId, WalFileKind};
use pitr_store::{layout, ChunkId, ChunkRemoval, Listed, Repo};
use serde::Serialize;

use crate::repofile::{load_pins, load_wal_refs, BackupManifest, BackupMarker, Damaged, WalRef};

/// What to keep. At least one of `full` and `days` must be given.
#[derive(Clone, Debug, Default)]
pub struct Retention {
    /// Keep the newest N backups.
    pub full: Option<usize>,
    /// Keep what restores to any moment of the last D: the newest backup that finished
    /// before now − D and every newer one.
    pub days: Option<chrono::Duration>,
    /// Keep WAL archived in the last D even when no kept backup needs it.
    pub wal_days: Option<chrono::Duration>,
}

impl Retention {
    /// Refuse a policy that would keep nothing, naming the flag to give.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.full.is_none() && self.days.is_none() {
            bail!(
                "no retention given: pass --retain-full N (keep the newest N backups) or \
                 --retain-days D (keep what restores to any moment of the last D days); \
                 nothing was deleted"
            );
        }
        if self.full == Some(0) {
            bail!("--retain-full 0 would expire every backup; give at least 1");
        }
        Ok(())
    }
}

/// `pitr expire`.
#[derive(Clone, Debug)]
pub struct ExpireRequest {
    pub retention: Retention,
    /// Report what would go, delete nothing.
    pub dry_run: bool,
    /// Unreferenced chunks (and staging files) younger than this stay: a writer may be
    /// about to name them.
    pub gc_grace: Duration,
    /// A backup marker older than this is reported and ignored (its backup was killed).
    pub marker_stale: Duration,
    /// `--retire-timeline N`: remove the history file and every WAL file of these stray
    /// timelines (never automatic; refused for a timeline a kept backup uses or reaches).
    pub retire_timelines: Vec<TimelineId>,
}

/// One object that goes (or would go).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Removed {
    pub key: String,
    pub bytes: u64,
}

/// A backup that goes.
#[derive(Clone, Debug, Serialize)]
pub struct ExpiredBackup {
    pub id: String,
    pub stop_time: DateTime<Utc>,
    pub key: String,
    pub bytes: u64,
}

/// What `pitr expire` did, or with `dry_run` would do.
#[derive(Clone, Debug, Serialize)]
pub struct ExpireReport {
    pub dry_run: bool,
    /// Backups that stay, oldest first.
    pub kept: Vec<String>,
    pub pinned: Vec<String>,
    pub backups: Vec<ExpiredBackup>,
    /// WAL refs of files no kept backup needs (a retired timeline's included).
    pub wal: Vec<Removed>,
    /// Stray timelines whose history and WAL go (`--retire-timeline`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retired_timelines: Vec<TimelineId>,
    /// Chunks no remaining document names.
    pub chunks: Vec<Removed>,
    /// Staging files killed writers left.
    pub staging: Vec<Removed>,
    /// Unreferenced chunks kept because they are younger than the grace period or were
    /// refreshed by a writer meanwhile.
    pub chunks_in_grace: usize,
    /// Why no chunk was collected, when none was (a live backup marker).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks_skipped: Option<String>,
    /// Markers of backups that were killed: older than the stale age (ignored), or written by
    /// a process of this host that is gone (removed).
    pub stale_markers: Vec<String>,
    pub bytes_freed: u64,
}

/// The backups `retention` keeps (IDs), `backups` oldest first: pins, the newest
/// `retention.full`, and for `retention.days` the newest backup that finished before
/// `now − days` and every one that finished after.
pub fn backups_to_keep(
    backups: &[BackupManifest],
    pins: &BTreeSet<String>,
    retention: &Retention,
    now: DateTime<Utc>,
) -> anyhow::Result<BTreeSet<String>> {
    retention.check()?;
    let mut keep: BTreeSet<String> = backups
        .iter()
        .filter(|b| pins.contains(&b.id))
        .map(|b| b.id.clone())
        .collect();
    if let Some(n) = retention.full {
        let mut by_start: Vec<&BackupManifest> = backups.iter().collect();
        by_start.sort_by(|a, b| a.start_time.cmp(&b.start_time).then(a.id.cmp(&b.id)));
        keep.extend(by_start.iter().rev().take(n).map(|b| b.id.clone()));
    }
    if let Some(days) = retention.days {
        let since = now - days;
        keep.extend(
            backups
                .iter()
                .filter(|b| b.stop_time >= since)
                .map(|b| b.id.clone()),
        );
        // The base for the oldest moment of the window.
        if let Some(base) = backups
            .iter()
            .filter(|b| b.stop_time < since)
            .max_by_key(|b| (b.stop_time, b.id.clone()))
        {
            keep.insert(base.id.clone());
        }
    }
    Ok(keep)
}

/// The timelines each timeline descends from (its history file's parents), for the
/// timelines that have a history file in the archive.
pub type Ancestry = BTreeMap<TimelineId, BTreeSet<TimelineId>>;

/// The WAL refs no kept backup needs: a file of timeline T at segment S stays when a kept
/// backup on timeline B can reach T (T is B or descends from it) and S is not before the
/// backup's first segment; history files always stay; a timeline whose ancestry is unknown
/// (no history file) stays; with `keep_since`, everything archived since then stays. With
/// no kept backup, nothing goes.
pub fn wal_to_remove<'a>(
    refs: &'a [WalRef],
    kept: &[&BackupManifest],
    ancestry: &Ancestry,
    keep_since: Option<DateTime<Utc>>,
) -> Vec<&'a WalRef> {
    let Some(first) = kept.first() else {
        return Vec::new();
    };
    let seg_size = first.segment_size();
    let starts: Vec<(TimelineId, u64)> = kept
        .iter()
        .map(|b| {
            let start = b
                .wal_start
                .segment_number(seg_size)
                .expect("a backup's first WAL file is a segment");
            (b.timeline, start)
        })
        .collect();
    let reaches = |from: TimelineId, to: TimelineId| {
        from == to || ancestry.get(&to).is_some_and(|a| a.contains(&from))
    };
    refs.iter()
        .filter(|r| {
            if r.name.kind() == WalFileKind::History {
                return false;
            }
            if keep_since.is_some_and(|t| r.archived_at >= t) {
                return false;
            }
            let tli = r.name.timeline();
            if tli.0 > 1 && !ancestry.contains_key(&tli) {
                return false;
            }
            let Some(segno) = r.name.segment_number(seg_size) else {
                return false;
            };
            !starts
                .iter()
                .any(|&(b_tli, start)| reaches(b_tli, tli) && segno >= start)
        })
        .collect()
}

/// The WAL refs (history files included) of the timelines `--retire-timeline` names, each
/// refused unless it is a stray: something is archived for it, it is no kept backup's
/// timeline, no kept backup's timeline descends from it, and no kept backup can reach it
/// (`unreachable_timelines`, the rule `check` warns by).
async fn timelines_to_retire<'a>(
    repo: &Repo,
    refs: &'a [WalRef],
    kept: &[&BackupManifest],
    ancestry: &Ancestry,
    req: &ExpireRequest,
) -> anyhow::Result<Vec<&'a WalRef>> {
    if req.retire_timelines.is_empty() {
        return Ok(Vec::new());
    }
    let kept_docs: Vec<BackupManifest> = kept.iter().map(|b| (*b).clone()).collect();
    let index = crate::index::ArchiveIndex::of_refs(refs);
    let archive = crate::restore::plan::RepoArchive(repo);
    let strays = crate::restore::plan::unreachable_timelines(&kept_docs, &index, &archive).await;
    let mut out = Vec::new();
    for &tli in &req.retire_timelines {
        let files: Vec<&WalRef> = refs.iter().filter(|r| r.name.timeline() == tli).collect();
        if files.is_empty() {
            bail!(
                "--retire-timeline {tli}: nothing is archived for timeline {tli} in {}",
                repo.url()
            );
        }
        if let Some(b) = kept.iter().find(|b| b.timeline == tli) {
            bail!(
                "--retire-timeline {tli}: kept backup {} is on timeline {tli}; nothing was deleted",
                b.id
            );
        }
        if let Some(b) = kept
            .iter()
            .find(|b| ancestry.get(&b.timeline).is_some_and(|a| a.contains(&tli)))
        {
            bail!(
                "--retire-timeline {tli}: timeline {} of kept backup {} descends from timeline {tli}; nothing was deleted",
                b.timeline,
                b.id
            );
        }
        if !strays.iter().any(|s| s.timeline == tli) {
            bail!(
                "--retire-timeline {tli}: a kept backup can restore onto timeline {tli} (restores follow it); \
                 only a timeline no backup reaches (as `pitr check` names it) is retired; nothing was deleted"
            );
        }
        out.extend(files);
    }
    Ok(out)
}

/// Every chunk `manifests` and `refs` name.
pub fn referenced_chunks<'a>(
    manifests: impl IntoIterator<Item = &'a BackupManifest>,
    refs: impl IntoIterator<Item = &'a WalRef>,
) -> HashSet<ChunkId> {
    let mut out = HashSet::new();
    for m in manifests {
        for f in m.all_files() {
            out.extend(f.chunks.iter().map(|c| c.id));
        }
    }
    for r in refs {
        out.extend(r.chunks.iter().map(|c| c.id));
    }
    out
}

/// The chunk a listed key of `chunks/` names, if it is one.
fn chunk_of_key(key: &str) -> Option<ChunkId> {
    let hex = key
        .strip_prefix(layout::CHUNKS_PREFIX)?
        .rsplit('/')
        .next()?;
    let id: ChunkId = hex.parse().ok()?;
    (id.key() == key).then_some(id)
}

/// Everything a retention decision reads, refused when any of it is damaged.
struct Documents {
    manifests: Vec<BackupManifest>,
    refs: Vec<WalRef>,
}

async fn load_documents(repo: &Repo) -> anyhow::Result<(Documents, Vec<Damaged>)> {
    let manifests = BackupManifest::list(repo).await?;
    let refs = load_wal_refs(repo).await?;
    let mut damaged = manifests.damaged;
    damaged.extend(refs.damaged);
    Ok((
        Documents {
            manifests: manifests.docs,
            refs: refs.docs,
        },
        damaged,
    ))
}

fn refuse_damaged(damaged: &[Damaged]) -> anyhow::Result<()> {
    if damaged.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = damaged.iter().map(ToString::to_string).collect();
    bail!(
        "expire deletes nothing while a document cannot be read: {}",
        names.join("; ")
    )
}

/// The ancestry of every timeline with a history file among `refs`.
async fn load_ancestry(repo: &Repo, refs: &[WalRef]) -> anyhow::Result<Ancestry> {
    let mut out = Ancestry::new();
    for r in refs
        .iter()
        .filter(|r| r.name.kind() == WalFileKind::History)
    {
        let what = || format!("read {} (expire deletes nothing without it)", r.name);
        let bytes = repo.get_bytes(&r.chunks).await.with_context(what)?;
        let text = String::from_utf8(bytes).with_context(what)?;
        let entries = parse_history(&text).with_context(what)?;
        out.insert(
            r.name.timeline(),
            entries.into_iter().map(|e| e.parent).collect(),
        );
    }
    Ok(out)
}

/// Backup markers below `markers/`.
#[derive(Default)]
struct Markers {
    live: Vec<String>,
    /// Older than the stale age: reported and ignored.
    stale: Vec<String>,
    /// Of a backup process on this host that no longer exists (killed): removed.
    dead: Vec<String>,
}

async fn markers(repo: &Repo, now: DateTime<Utc>, stale: Duration) -> anyhow::Result<Markers> {
    let stale_before = now - chrono::Duration::from_std(stale).unwrap_or(chrono::Duration::MAX);
    let mut out = Markers::default();
    for m in repo.list_objects(layout::MARKERS_PREFIX).await? {
        if m.staging {
            continue;
        }
        if m.modified < stale_before {
            out.stale.push(m.key);
            continue;
        }
        // A marker that cannot be read counts as live: the safe side.
        let dead = match crate::repofile::read_doc(repo, &m.key).await? {
            Some(Ok(body)) => {
                serde_json::from_slice::<BackupMarker>(&body).is_ok_and(|b| b.is_dead_here())
            }
            Some(Err(_)) => false,
            // Removed since the listing: its backup finished.
            None => continue,
        };
        if dead {
            out.dead.push(m.key);
        } else {
            out.live.push(m.key);
        }
    }
    Ok(out)
}

/// How often the deletion of chunks looks at the markers again: a backup that starts
/// meanwhile stops it within this time (and waits longer than this after writing its
/// marker before relying on a chunk, where relying does not refresh the chunk).
const MARKER_RECHECK: Duration = Duration::from_secs(1);

/// Run `pitr expire` on `repo`.
pub async fn expire(repo: &Repo, req: &ExpireRequest) -> anyhow::Result<ExpireReport> {
    req.retention.check()?;
    let started = Utc::now();
    let fresh_since = started - chrono::Duration::from_std(req.gc_grace)?;

    // 1. Read everything the decision needs; refuse on anything unreadable.
    let (docs, mut damaged) = load_documents(repo).await?;
    let pins = load_pins(repo).await?;
    damaged.extend(pins.damaged);
    refuse_damaged(&damaged)?;
    let pinned: BTreeSet<String> = pins.docs.into_iter().map(|p| p.id).collect();
    let ancestry = load_ancestry(repo, &docs.refs).await?;
    let sizes: HashMap<String, u64> = repo
        .list_objects("")
        .await?
        .into_iter()
        .map(|l| (l.key, l.size))
        .collect();

    // 2. Decide.
    let keep = backups_to_keep(&docs.manifests, &pinned, &req.retention, started)?;
    let kept: Vec<&BackupManifest> = docs
        .manifests
        .iter()
        .filter(|b| keep.contains(&b.id))
        .collect();
    let keep_wal_since = req.retention.wal_days.map(|d| started - d);
    let mut gone_wal: BTreeSet<String> =
        wal_to_remove(&docs.refs, &kept, &ancestry, keep_wal_since)
            .into_iter()
            .map(|r| WalRef::key(&r.name))
            .collect();
    let retired = timelines_to_retire(repo, &docs.refs, &kept, &ancestry, req).await?;
    // A retired timeline's history file goes last, after its segments.
    let (retired_history, retired_wal): (Vec<&WalRef>, Vec<&WalRef>) = retired
        .iter()
        .partition(|r| r.name.kind() == WalFileKind::History);
    gone_wal.extend(retired_wal.iter().map(|r| WalRef::key(&r.name)));
    let mut all_gone = gone_wal.clone();
    all_gone.extend(retired_history.iter().map(|r| WalRef::key(&r.name)));
    let mut report = decided(req, &docs, &keep, &pinned, &all_gone, &sizes);
    report.retired_timelines = req.retire_timelines.clone();

    // 3. Documents: manifests first, then WAL (each batch durable before the next step).
    if !req.dry_run {
        delete_documents(repo, &report, &gone_wal).await?;
        let history: Vec<String> = retired_history
            .iter()
            .map(|r| WalRef::key(&r.name))
            .collect();
        repo.delete_docs_in_order(&history).await?;
        for t in &req.retire_timelines {
            tracing::info!("retired timeline {t}: its history file and WAL are removed");
        }
    }
    let gone_wal = all_gone;

    // 4. Chunks, under the rules of docs/format.md: markers first, then the documents as
    //    they are now (a concurrent writer's new ones included), then the chunks.
    let live = look_at_markers(repo, req, &mut report).await?;
    let referenced = if req.dry_run {
        let remaining_refs = docs
            .refs
            .iter()
            .filter(|r| !gone_wal.contains(&WalRef::key(&r.name)));
        referenced_chunks(kept.iter().copied(), remaining_refs)
    } else {
        let (now_docs, damaged) = load_documents(repo).await?;
        refuse_damaged(&damaged)?;
        referenced_chunks(&now_docs.manifests, &now_docs.refs)
    };
    let listed: Vec<Listed> = repo.list_objects("").await?;
    let candidates = unreferenced_chunks(&listed, &referenced, fresh_since, &mut report);
    if !live.is_empty() {
        report.chunks_skipped = Some(format!(
            "a backup is running ({}): no chunk is collected while it may rely on one",
            live.join(", ")
        ));
    } else if req.dry_run {
        report.chunks = candidates
            .into_iter()
            .map(|(_, key, bytes)| Removed { key, bytes })
            .collect();
    } else {
        collect_chunks(repo, req, candidates, fresh_since, &mut report).await?;
    }

    // 5. Staging files older than the grace period.
    clear_old_staging(repo, req, &listed, fresh_since, &mut report).await?;
    if !req.dry_run {
        repo.sync().await?;
    }
    report.bytes_freed = report.backups.iter().map(|b| b.bytes).sum::<u64>()
        + report.wal.iter().map(|w| w.bytes).sum::<u64>()
        + report.chunks.iter().map(|c| c.bytes).sum::<u64>()
        + report.staging.iter().map(|s| s.bytes).sum::<u64>();
    Ok(report)
}

/// The report of what was decided: the backups kept (and pinned), the backups and WAL to
/// remove with their sizes (`sizes`: every object's); chunks and staging files to come.
fn decided(
    req: &ExpireRequest,
    docs: &Documents,
    keep: &BTreeSet<String>,
    pinned: &BTreeSet<String>,
    gone_wal: &BTreeSet<String>,
    sizes: &HashMap<String, u64>,
) -> ExpireReport {
    let size = |key: &str| sizes.get(key).copied().unwrap_or(0);
    let (kept, gone): (Vec<&BackupManifest>, Vec<&BackupManifest>) =
        docs.manifests.iter().partition(|b| keep.contains(&b.id));
    ExpireReport {
        dry_run: req.dry_run,
        kept: kept.iter().map(|b| b.id.clone()).collect(),
        pinned: kept
            .iter()
            .filter(|b| pinned.contains(&b.id))
            .map(|b| b.id.clone())
            .collect(),
        backups: gone
            .into_iter()
            .map(|b| {
                let key = BackupManifest::key(&b.id);
                ExpiredBackup {
                    id: b.id.clone(),
                    stop_time: b.stop_time,
                    bytes: size(&key),
                    key,
                }
            })
            .collect(),
        wal: gone_wal
            .iter()
            .map(|k| Removed {
                key: k.clone(),
                bytes: size(k),
            })
            .collect(),
        retired_timelines: Vec::new(),
        chunks: Vec::new(),
        staging: Vec::new(),
        chunks_in_grace: 0,
        chunks_skipped: None,
        stale_markers: Vec::new(),
        bytes_freed: 0,
    }
}

/// Delete the expired manifests, then the expired WAL refs oldest first (key order is
/// segment order within a timeline): a killed expire leaves the archive without a hole.
async fn delete_documents(
    repo: &Repo,
    report: &ExpireReport,
    gone_wal: &BTreeSet<String>,
) -> anyhow::Result<()> {
    let manifests: Vec<String> = report.backups.iter().map(|b| b.key.clone()).collect();
    repo.delete_docs(&manifests).await?;
    for b in &report.backups {
        tracing::info!("expired backup {} (finished {})", b.id, b.stop_time);
    }
    let wal: Vec<String> = gone_wal.iter().cloned().collect();
    repo.delete_docs_in_order(&wal).await?;
    if !wal.is_empty() {
        tracing::info!(
            "expired {} WAL files ({} .. {})",
            wal.len(),
            wal.first().expect("not empty"),
            wal.last().expect("not empty")
        );
    }
    Ok(())
}

/// The running backups' markers: the live ones returned; stale and dead ones reported (and,
/// unless a dry run, the dead ones removed).
async fn look_at_markers(
    repo: &Repo,
    req: &ExpireRequest,
    report: &mut ExpireReport,
) -> anyhow::Result<Vec<String>> {
    let Markers { live, stale, dead } = markers(repo, Utc::now(), req.marker_stale).await?;
    for m in &stale {
        tracing::warn!(
            "{m}: a backup marker older than {}s, ignored (its backup was killed); remove it \
             if no backup is running",
            req.marker_stale.as_secs()
        );
    }
    for m in &dead {
        tracing::info!("{m}: the backup process that wrote it is gone (killed); ignored");
    }
    if !req.dry_run {
        repo.delete_docs(&dead).await?;
    }
    report.stale_markers = stale;
    report.stale_markers.extend(dead);
    Ok(live)
}

/// The listed chunks no document names, stored before the grace period (those within it
/// are counted in the report).
fn unreferenced_chunks(
    listed: &[Listed],
    referenced: &HashSet<ChunkId>,
    fresh_since: DateTime<Utc>,
    report: &mut ExpireReport,
) -> Vec<(ChunkId, String, u64)> {
    let mut candidates = Vec::new();
    for l in listed {
        if l.staging {
            continue;
        }
        let Some(id) = chunk_of_key(&l.key) else {
            continue;
        };
        if referenced.contains(&id) {
            continue;
        }
        if l.modified >= fresh_since {
            report.chunks_in_grace += 1;
            continue;
        }
        candidates.push((id, l.key.clone(), l.size));
    }
    candidates
}

/// Staging files older than the grace period go (a chunk a killed expire had set aside goes
/// back whatever its age).
async fn clear_old_staging(
    repo: &Repo,
    req: &ExpireRequest,
    listed: &[Listed],
    fresh_since: DateTime<Utc>,
    report: &mut ExpireReport,
) -> anyhow::Result<()> {
    for l in listed.iter().filter(|l| l.staging) {
        let set_aside = l
            .key
            .rsplit_once('#')
            .is_some_and(|(_, s)| s.starts_with("gc"));
        if l.modified >= fresh_since && !set_aside {
            continue;
        }
        let bytes = if req.dry_run {
            if set_aside {
                0
            } else {
                l.size
            }
        } else {
            repo.clear_staging(&l.key).await?
        };
        report.staging.push(Removed {
            key: l.key.clone(),
            bytes,
        });
    }
    Ok(())
}

/// Delete `candidates`, looking at the markers again whenever half of [`MARKER_RECHECK`] has
/// passed, and starting no deletion more than [`MARKER_RECHECK`] after the last look (a
/// deletion not started in time waits for the next look): a backup that started meanwhile
/// stops the collection before it can rely on a chunk being deleted.
async fn collect_chunks(
    repo: &Repo,
    req: &ExpireRequest,
    candidates: Vec<(ChunkId, String, u64)>,
    fresh_since: DateTime<Utc>,
    report: &mut ExpireReport,
) -> anyhow::Result<()> {
    let mut pending: std::collections::VecDeque<(ChunkId, String)> = candidates
        .into_iter()
        .map(|(id, key, _)| (id, key))
        .collect();
    let mut checked = Instant::now();
    let batch = repo.concurrency().max(1);
    while !pending.is_empty() {
        if checked.elapsed() >= MARKER_RECHECK / 2 {
            let live = markers(repo, Utc::now(), req.marker_stale).await?.live;
            if !live.is_empty() {
                report.chunks_skipped = Some(format!(
                    "a backup started while chunks were collected ({}); the rest stay until \
                     the next expire",
                    live.join(", ")
                ));
                break;
            }
            checked = Instant::now();
        }
        let n = batch.min(pending.len());
        let this: Vec<(ChunkId, String)> = pending.drain(..n).collect();
        let done: Vec<(Option<ChunkRemoval>, ChunkId, String)> = futures::stream::iter(this)
            .map(|(id, key)| async move {
                if checked.elapsed() >= MARKER_RECHECK {
                    return anyhow::Ok((None, id, key));
                }
                let removal = repo.remove_chunk_unless_fresh(&id, fresh_since).await?;
                Ok((Some(removal), id, key))
            })
            .buffer_unordered(batch)
            .try_collect()
            .await?;
        for (removal, id, key) in done {
            match removal {
                Some(ChunkRemoval::Deleted(bytes)) => report.chunks.push(Removed { key, bytes }),
                Some(ChunkRemoval::Fresh) => report.chunks_in_grace += 1,
                Some(ChunkRemoval::Absent) => {}
                // Not started in time: again after the next look at the markers.
                None => pending.push_back((id, key)),
            }
        }
    }
    report.chunks.sort_by(|a, b| a.key.cmp(&b.key));
    if !report.chunks.is_empty() {
        tracing::info!("collected {} chunks no document names", report.chunks.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
