//! Restore planning, before anything touches disk: which backup, which timeline path, and
//! whether the archive holds every WAL segment between the backup and the target.
//!
//! [`plan`] is a function of the backups, the [`ArchiveIndex`] and what an [`ArchiveReader`]
//! answers (history files, archive times and commit times of segments): the repository is
//! one reader ([`RepoArchive`]), a test's fixture another.

use std::path::PathBuf;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use pitr_pg::{
    parse_history, timeline_path, HistoryEntry, Lsn, TimedKind, TimedRecord, TimelineId,
    WalFileName,
};
use pitr_store::Repo;
use serde::Serialize;

use crate::index::ArchiveIndex;
use crate::repofile::{BackupManifest, WalRef};
use crate::time::format_pg_time;

/// What recovery should stop at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Replay all archived WAL.
    End,
    Immediate,
    Time(DateTime<Utc>),
    Lsn(Lsn),
    Xid(u64),
    Name(String),
}

impl Target {
    pub fn describe(&self) -> String {
        match self {
            Target::End => "end of archived WAL".into(),
            Target::Immediate => "consistency point of the backup".into(),
            Target::Time(t) => format!("time {}", format_pg_time(t)),
            Target::Lsn(l) => format!("LSN {l}"),
            Target::Xid(x) => format!("transaction {x}"),
            Target::Name(n) => format!("restore point {n:?}"),
        }
    }
}

/// Which timeline recovery should follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TimelineChoice {
    Latest,
    Current,
    Id(u32),
}

impl std::str::FromStr for TimelineChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "latest" => Ok(TimelineChoice::Latest),
            "current" => Ok(TimelineChoice::Current),
            n => n
                .parse::<u32>()
                .ok()
                .filter(|&n| n > 0)
                .map(TimelineChoice::Id)
                .ok_or_else(|| format!("{s:?}: expected latest, current or a timeline number")),
        }
    }
}

impl std::fmt::Display for TimelineChoice {
    /// As `recovery_target_timeline` takes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TimelineChoice::Latest => f.write_str("latest"),
            TimelineChoice::Current => f.write_str("current"),
            TimelineChoice::Id(n) => write!(f, "{n}"),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SegmentNeed {
    pub first: WalFileName,
    pub last: Option<WalFileName>,
    pub count: usize,
}

/// Where a tablespace goes, as the plan shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PlannedTablespace {
    pub oid: u32,
    /// The location the backup recorded.
    pub location: String,
    /// Where the restore puts it.
    pub directory: PathBuf,
    /// Moved with `--tablespace-map`.
    pub remapped: bool,
}

/// An interval of target times a restore reaches, both ends included (computed by
/// `window`, which walks the archive the way this planner does).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Recoverable {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub backup: String,
    pub backup_stop_time: DateTime<Utc>,
    pub backup_stop_lsn: Lsn,
    pub target: String,
    pub timeline: TimelineId,
    pub timeline_path: Vec<TimelineId>,
    pub wal: Option<SegmentNeed>,
    pub recoverable_from: DateTime<Utc>,
    pub recoverable_to: Option<DateTime<Utc>>,
    /// With `--dry-run`: every interval of target times a restore reaches (`window`, the
    /// same computation `info` shows).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recoverable: Vec<Recoverable>,
    /// Where each tablespace goes (filled in by the restore, which knows the remapping).
    pub tablespaces: Vec<PlannedTablespace>,
    /// With `--target-timeline latest`: newer archived timelines recovery from this backup
    /// cannot reach (a stray fork), passed over; each is warned about.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stray_timelines: Vec<StrayTimeline>,
    /// The restored server's `archive_mode`: `off` (`--archive-mode off`, a clone that never
    /// archives) or `preserve` (the backup's own setting; filled in by the restore).
    pub archive_mode: &'static str,
    #[serde(skip)]
    pub manifest: BackupManifest,
}

/// What the planner needs to read from the archive beyond its listing.
#[allow(async_fn_in_trait)] // used generically, never as a trait object
pub trait ArchiveReader {
    /// The parsed history file of timeline `tli` (> 1).
    async fn history(&self, tli: TimelineId) -> anyhow::Result<Vec<HistoryEntry>>;
    /// When archived segment `name` was stored.
    async fn archived_at(&self, name: &WalFileName) -> anyhow::Result<DateTime<Utc>>;
    /// The commit, abort and restore-point records of segment `name`: their LSNs, times,
    /// transactions and restore point names.
    async fn records(
        &self,
        name: &WalFileName,
        segment_size: u32,
    ) -> anyhow::Result<Vec<TimedRecord>>;
}

/// The archive of a repository.
pub struct RepoArchive<'a>(pub &'a Repo);

impl ArchiveReader for RepoArchive<'_> {
    async fn history(&self, tli: TimelineId) -> anyhow::Result<Vec<HistoryEntry>> {
        let name: WalFileName = format!("{:08X}.history", tli.0).parse()?;
        let r = WalRef::load(self.0, &name)
            .await?
            .with_context(|| format!("timeline {tli}: {name} is not in the archive"))?;
        let bytes = self.0.get_bytes(&r.chunks).await?;
        let text = String::from_utf8(bytes).with_context(|| format!("{name} is not text"))?;
        parse_history(&text).with_context(|| format!("parse {name}"))
    }

    async fn archived_at(&self, name: &WalFileName) -> anyhow::Result<DateTime<Utc>> {
        let r = WalRef::load(self.0, name)
            .await?
            .context("segment vanished")?;
        Ok(r.archived_at)
    }

    async fn records(
        &self,
        name: &WalFileName,
        segment_size: u32,
    ) -> anyhow::Result<Vec<TimedRecord>> {
        let r = WalRef::load(self.0, name)
            .await?
            .context("segment vanished")?;
        let bytes = self.0.get_bytes(&r.chunks).await?;
        let start = name.start_lsn(segment_size).context("a segment")?;
        pitr_pg::timed_records(&bytes, start).with_context(|| format!("read the records of {name}"))
    }
}

pub struct PlanRequest<'a> {
    pub target: &'a Target,
    /// `--target-exclusive`: a record exactly at a time target is already past it.
    pub exclusive: bool,
    pub backup_id: Option<&'a str>,
    pub timeline: &'a TimelineChoice,
}

/// Plan a restore from the repository at `repo_url` holding `backups` (oldest first) and the
/// archive `index` (counted in the chosen backup's segment size).
pub async fn plan(
    repo_url: &str,
    backups: &[BackupManifest],
    index: &ArchiveIndex,
    archive: &impl ArchiveReader,
    req: PlanRequest<'_>,
) -> anyhow::Result<Plan> {
    let manifest = choose_backup(repo_url, backups, &req)?;
    manifest.check_restorable()?;
    let earliest = backups[0].stop_time;
    refuse_target_before_backup(manifest, req.target)?;
    let route = Route::new(manifest, index, archive, req.timeline).await?;
    let (target_tli, path) = (route.target, &route.path);
    let name = |segno: u64| route.segment_name(index, segno);
    let first = route.first_segment();

    let mut recoverable_to = None;
    let wal = match req.target {
        Target::Immediate => None,
        _ => {
            let scan = scan_wal(&route, index, archive, &req, manifest).await?;
            recoverable_to = scan.recoverable_to;
            refuse_unreached(&req, manifest, &scan, earliest, &name)?;
            Some(SegmentNeed {
                first: name(first),
                last: scan.last.map(name),
                count: scan.count,
            })
        }
    };
    Ok(Plan {
        backup: manifest.id.clone(),
        backup_stop_time: manifest.stop_time,
        backup_stop_lsn: manifest.stop_lsn,
        target: req.target.describe(),
        timeline: target_tli,
        timeline_path: path.iter().map(|(t, _, _)| *t).collect(),
        wal,
        recoverable_from: earliest,
        recoverable_to,
        recoverable: Vec::new(),
        tablespaces: Vec::new(),
        stray_timelines: route.strays.clone(),
        archive_mode: "preserve",
        manifest: manifest.clone(),
    })
}

/// A target time or LSN before the backup was consistent cannot be reached from it.
fn refuse_target_before_backup(manifest: &BackupManifest, target: &Target) -> anyhow::Result<()> {
    let stop_lsn = manifest.stop_lsn;
    if let Target::Time(t) = target {
        if *t <= manifest.stop_time {
            bail!(
                "target time {} is before backup {} finished ({}); choose an earlier backup or a later time",
                format_pg_time(t),
                manifest.id,
                format_pg_time(&manifest.stop_time)
            );
        }
    }
    if let Target::Lsn(l) = target {
        if *l < stop_lsn {
            bail!(
                "target LSN {l} is before backup {} reached consistency at {stop_lsn}",
                manifest.id
            );
        }
    }
    Ok(())
}

/// What the walk over the archived WAL from the backup's first segment found.
struct Scan {
    count: usize,
    /// The last segment walked.
    last: Option<u64>,
    /// For a time target: when the last segment walked was archived.
    recoverable_to: Option<DateTime<Utc>>,
    /// For a time target: a record recovery stops at was found.
    stop_found: bool,
    /// For a transaction or restore point target: whether the scan met it, or met a
    /// COMMIT/ABORT PREPARED whose transaction it cannot tell (then it cannot refuse).
    named_found: bool,
    unsure: bool,
}

/// Walk the archived segments along the route from its first segment until the target is
/// found, the target LSN's segment is passed, or the archive ends; a segment missing before
/// the newest archived one is refused.
async fn scan_wal(
    route: &Route,
    index: &ArchiveIndex,
    archive: &impl ArchiveReader,
    req: &PlanRequest<'_>,
    manifest: &BackupManifest,
) -> anyhow::Result<Scan> {
    let seg_size = index.segment_size();
    let stop_lsn = manifest.stop_lsn;
    let path = &route.path;
    let name = |segno: u64| route.segment_name(index, segno);
    let first = route.first_segment();
    let has = |segno: u64| route.has(index, segno);
    // The newest archived segment on the path.
    let last_on_path = path
        .iter()
        .filter_map(|(t, begin, end)| {
            let segs = index.segments(*t)?;
            let lo = begin.segment_number(seg_size);
            let hi = end.map_or(u64::MAX, |e| e.segment_number(seg_size));
            segs.range(lo..=hi).next_back().copied()
        })
        .max();
    let mut recoverable_to = None;
    let end = match req.target {
        Target::Lsn(l) => Some(l.0 / u64::from(seg_size)),
        _ => None,
    };
    let mut segno = first;
    let mut stop_found = false;
    let (mut named_found, mut unsure) = (false, false);
    let mut count = 0;
    let mut last = None;
    let last_archived = last_on_path.unwrap_or(0);
    loop {
        if end.is_some_and(|e| segno > e) {
            break;
        }
        if !has(segno) {
            if end.is_some() || segno <= last_archived {
                bail!(
                    "WAL segment {} is missing from the archive: recovery from backup {} cannot get past it (needed for {})",
                    name(segno),
                    manifest.id,
                    req.target.describe()
                );
            }
            break;
        }
        count += 1;
        last = Some(segno);
        if let Target::Time(t) = req.target {
            let seg_name = name(segno);
            let archived_at = archive.archived_at(&seg_name).await?;
            recoverable_to = Some(archived_at);
            // A segment archived before the target cannot hold the record recovery
            // stops at; one archived after it may (the archiver can lag), so read it.
            if archived_at > *t
                && holds_stop_record(archive, &seg_name, seg_size, t, req.exclusive).await?
            {
                stop_found = true;
                break;
            }
        }
        if let Target::Xid(_) | Target::Name(_) = req.target {
            // Recovery stops there only after the backup is consistent.
            let seg_name = name(segno);
            for r in archive.records(&seg_name, seg_size).await? {
                if r.lsn < stop_lsn {
                    continue;
                }
                match (req.target, r.kind) {
                    (Target::Xid(x), TimedKind::Commit | TimedKind::Abort) => {
                        // recovery_target_xid compares the 32-bit xid (an xid8
                        // from pg_current_xact_id() carries the epoch above it).
                        named_found |= r.xid == (*x & 0xFFFF_FFFF) as u32;
                        unsure |= r.xid == 0;
                    }
                    (Target::Name(n), TimedKind::RestorePoint) => {
                        named_found |= r.restore_point.as_deref() == Some(n.as_str());
                    }
                    _ => {}
                }
            }
            if named_found {
                break;
            }
        }
        segno += 1;
    }
    Ok(Scan {
        count,
        last,
        recoverable_to,
        stop_found,
        named_found,
        unsure,
    })
}

/// Refuse a target the scanned WAL does not reach: a transaction or restore point it does
/// not hold, a time it holds no stop record after, or a time after the archive's end.
fn refuse_unreached(
    req: &PlanRequest<'_>,
    manifest: &BackupManifest,
    scan: &Scan,
    earliest: DateTime<Utc>,
    name: &dyn Fn(u64) -> WalFileName,
) -> anyhow::Result<()> {
    let (last, recoverable_to) = (scan.last, scan.recoverable_to);
    let scanned = || last.map_or("no segment".to_string(), |s| format!("up to {}", name(s)));
    match req.target {
        Target::Xid(x) if !scan.named_found && !scan.unsure => bail!(
            "transaction {x} commits or aborts nowhere in the archived WAL after backup {} ({}): \
             recovery would end without reaching it; check the ID (SELECT pg_current_xact_id()) or wait for more WAL",
            manifest.id,
            scanned()
        ),
        Target::Name(n) if !scan.named_found => bail!(
            "no restore point named {n:?} in the archived WAL after backup {} ({}): \
             recovery would end without reaching it (pg_create_restore_point makes one)",
            manifest.id,
            scanned()
        ),
        _ => {}
    }
    if let (Target::Time(t), false) = (req.target, scan.stop_found) {
        if recoverable_to.is_some_and(|r| r > *t) {
            bail!(
                "archived WAL up to {} holds no commit, abort or restore point after {}: recovery could not stop there yet; wait for more WAL to be archived (or use --target-lsn)",
                last.map_or("-".to_string(), |s| name(s).to_string()),
                format_pg_time(t)
            );
        }
    }
    if let Target::Time(t) = req.target {
        if recoverable_to.is_none_or(|r| r <= *t) {
            bail!(
                "target time {} is after the last archived WAL ({}): the recoverable window is {} .. {}",
                format_pg_time(t),
                recoverable_to.map_or("none".into(), |r| format_pg_time(&r)),
                format_pg_time(&earliest),
                recoverable_to.map_or("none".into(), |r| format_pg_time(&r)),
            );
        }
    }
    Ok(())
}

/// How recovery from one backup walks the archive: the path of timelines that leads to the
/// target timeline, and for each segment number the timeline it is read from. Shared by the
/// planner and the recoverable window (`window`), so both walk the same way.
pub(crate) struct Route {
    pub target: TimelineId,
    pub path: Vec<(TimelineId, Lsn, Option<Lsn>)>,
    /// With `latest`: the newer timelines passed over because their history does not contain
    /// the backup (a stray fork, e.g. a side-by-side restore that archived here).
    pub strays: Vec<StrayTimeline>,
    backup_tli: TimelineId,
    first: u64,
    seg_size: u32,
}

impl Route {
    /// The route from `manifest` to the timeline `choice` names; refused when the backup is
    /// not on that timeline's path, or the path forks before the backup was consistent.
    pub async fn new(
        manifest: &BackupManifest,
        index: &ArchiveIndex,
        archive: &impl ArchiveReader,
        choice: &TimelineChoice,
    ) -> anyhow::Result<Route> {
        let backup_tli = manifest.timeline;
        let (target, path, strays) = match choice {
            TimelineChoice::Latest => latest_containing(manifest, index, archive).await?,
            TimelineChoice::Current | TimelineChoice::Id(_) => {
                let target = match choice {
                    TimelineChoice::Id(n) => TimelineId(*n),
                    _ => backup_tli,
                };
                let history = if target.0 == 1 {
                    Vec::new()
                } else {
                    archive.history(target).await?
                };
                let path = timeline_path(target, &history);
                if let Err(why) = reaches(manifest, target, &path) {
                    bail!("{why}");
                }
                (target, path, Vec::new())
            }
        };
        let stop_lsn = manifest.stop_lsn;
        let seg_size = index.segment_size();
        // Recovery asks for segments from the backup's stop segment on (the backup carries
        // its own WAL before that).
        let first = stop_lsn.0.saturating_sub(1).max(manifest.start_lsn.0) / u64::from(seg_size);
        Ok(Route {
            target,
            path,
            strays,
            backup_tli,
            first,
            seg_size,
        })
    }

    /// The first segment recovery asks the archive for.
    pub fn first_segment(&self) -> u64 {
        self.first
    }

    /// The timeline segment `segno` is read from.
    pub fn timeline_of(&self, segno: u64) -> TimelineId {
        self.path
            .iter()
            .rev()
            .find(|(_, begin, _)| begin.segment_number(self.seg_size) <= segno)
            .map_or(self.backup_tli, |(t, _, _)| *t)
    }

    pub fn segment_name(&self, index: &ArchiveIndex, segno: u64) -> WalFileName {
        index.segment_name(self.timeline_of(segno), segno)
    }

    pub fn has(&self, index: &ArchiveIndex, segno: u64) -> bool {
        index.has_segment(self.timeline_of(segno), segno)
    }

    /// The last segment of the unbroken run of archived segments from the first one on, if
    /// the first is archived.
    pub fn last_unbroken(&self, index: &ArchiveIndex) -> Option<u64> {
        let mut segno = self.first;
        if !self.has(index, segno) {
            return None;
        }
        while self.has(index, segno + 1) {
            segno += 1;
        }
        Some(segno)
    }
}

/// A timeline newer than the one a restore follows whose history does not contain the backup:
/// recovery from the backup cannot reach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StrayTimeline {
    pub timeline: TimelineId,
    /// Why it is not a candidate, naming the backup.
    pub reason: String,
}

/// Why recovery from `manifest` cannot reach `target` along `path` (its timeline path), if it
/// cannot: the backup's timeline is not on the path, or the path leaves it before the backup
/// was consistent.
fn reaches(
    manifest: &BackupManifest,
    target: TimelineId,
    path: &[(TimelineId, Lsn, Option<Lsn>)],
) -> Result<(), String> {
    let (backup_tli, stop_lsn) = (manifest.timeline, manifest.stop_lsn);
    match path.iter().find(|(t, _, _)| *t == backup_tli) {
        None => Err(format!(
            "backup {} is on timeline {backup_tli}, which is not an ancestor of target timeline {target}: \
             --target-timeline current (or {backup_tli}) follows the backup's own timeline",
            manifest.id
        )),
        Some((_, _, Some(end))) if *end < stop_lsn => Err(format!(
            "timeline {target} forked from timeline {backup_tli} at {end}, before backup {} was consistent at {stop_lsn}: \
             --target-timeline current (or {backup_tli}) stays on the backup's timeline; to reach timeline {target}, restore a backup that finished before {end}",
            manifest.id
        )),
        _ => Ok(()),
    }
}

/// The rule for `--target-timeline latest` (the default): the newest archived timeline whose
/// history contains the backup — the backup's own timeline when no newer one does. Every newer
/// timeline passed over is returned as a stray, with why. One rule for the planner, the
/// recoverable window (`info`, `--dry-run`) and `check`/`verify`'s stray-timeline warning.
async fn latest_containing(
    manifest: &BackupManifest,
    index: &ArchiveIndex,
    archive: &impl ArchiveReader,
) -> anyhow::Result<(
    TimelineId,
    Vec<(TimelineId, Lsn, Option<Lsn>)>,
    Vec<StrayTimeline>,
)> {
    let backup_tli = manifest.timeline;
    let mut strays = Vec::new();
    for tli in index.known_timelines() {
        if tli <= backup_tli {
            break;
        }
        let history = match archive.history(tli).await {
            Ok(h) => h,
            Err(e) => {
                strays.push(StrayTimeline {
                    timeline: tli,
                    reason: format!("its history cannot be read: {e:#}"),
                });
                continue;
            }
        };
        let path = timeline_path(tli, &history);
        match reaches(manifest, tli, &path) {
            Ok(()) => return Ok((tli, path, strays)),
            Err(_) => strays.push(StrayTimeline {
                timeline: tli,
                reason: stray_reason(manifest, &path),
            }),
        }
    }
    let history = if backup_tli.0 == 1 {
        Vec::new()
    } else {
        archive.history(backup_tli).await?
    };
    Ok((backup_tli, timeline_path(backup_tli, &history), strays))
}

/// The archived timelines no backup can reach: not on the route any backup's restore takes
/// (nor an ancestor of a backup's timeline), and no backup is on their history before it
/// forked. A stray fork, e.g. of a side-by-side restore that archived into this repository;
/// `check` and `verify` warn about each, `pitr expire --retire-timeline N` removes one.
/// Without a backup nothing is judged.
pub async fn unreachable_timelines(
    backups: &[BackupManifest],
    index: &ArchiveIndex,
    archive: &impl ArchiveReader,
) -> Vec<StrayTimeline> {
    // Every backup counts, restorable or not: what expire keeps must not be retired.
    let backups: Vec<&BackupManifest> = backups.iter().collect();
    let mut used = std::collections::BTreeSet::new();
    for b in &backups {
        used.insert(b.timeline);
        if let Ok(route) = Route::new(b, index, archive, &TimelineChoice::Latest).await {
            used.extend(route.path.iter().map(|(t, _, _)| *t));
        }
    }
    let mut out = Vec::new();
    if backups.is_empty() {
        return out;
    }
    for tli in index.known_timelines() {
        if used.contains(&tli) {
            continue;
        }
        let history = if tli.0 == 1 {
            Ok(Vec::new())
        } else {
            archive.history(tli).await
        };
        let history = match history {
            Ok(h) => h,
            Err(e) => {
                out.push(StrayTimeline {
                    timeline: tli,
                    reason: format!("its history cannot be read: {e:#}"),
                });
                continue;
            }
        };
        let path = timeline_path(tli, &history);
        if backups.iter().any(|b| reaches(b, tli, &path).is_ok()) {
            continue;
        }
        let on_path = backups
            .iter()
            .rev()
            .find(|b| path.iter().any(|(t, _, _)| *t == b.timeline));
        out.push(StrayTimeline {
            timeline: tli,
            reason: match on_path {
                Some(b) => format!("no backup reaches it: {}", stray_reason(b, &path)),
                None => "no backup reaches it: its history contains the timeline of no backup"
                    .to_string(),
            },
        });
    }
    out
}

/// Why a timeline whose path is `path` does not contain `manifest`, in a warning's words.
fn stray_reason(manifest: &BackupManifest, path: &[(TimelineId, Lsn, Option<Lsn>)]) -> String {
    let (backup_tli, stop_lsn) = (manifest.timeline, manifest.stop_lsn);
    match path.iter().find(|(t, _, _)| *t == backup_tli) {
        Some((_, _, Some(end))) => format!(
            "it forked from timeline {backup_tli} at {end}, before backup {} was consistent at {stop_lsn}",
            manifest.id
        ),
        _ => format!(
            "its history does not contain timeline {backup_tli} of backup {}",
            manifest.id
        ),
    }
}

/// The backup a restore starts from: the one asked for, else the newest that finished before
/// the target.
fn choose_backup<'a>(
    repo_url: &str,
    backups: &'a [BackupManifest],
    req: &PlanRequest<'_>,
) -> anyhow::Result<&'a BackupManifest> {
    let Some(earliest) = backups.first() else {
        bail!("repository {repo_url} holds no backups: run `pitr backup` first");
    };
    Ok(match (req.backup_id, req.target) {
        (Some(id), _) => backups.iter().find(|b| b.id == id).with_context(|| {
            format!(
                "no backup {id} in {repo_url} (have: {})",
                backups
                    .iter()
                    .map(|b| b.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?,
        (None, Target::Time(t)) => backups.iter().rev().find(|b| b.stop_time < *t).with_context(|| {
            format!(
                "target time {} is before the earliest backup finished ({}): the recoverable window starts there",
                format_pg_time(t),
                format_pg_time(&earliest.stop_time)
            )
        })?,
        (None, Target::Lsn(l)) => backups.iter().rev().find(|b| b.stop_lsn <= *l).with_context(|| {
            format!(
                "target LSN {l} is before the end of the earliest backup ({})",
                earliest.stop_lsn
            )
        })?,
        (None, _) => backups.last().expect("not empty"),
    })
}

/// Whether the archived segment holds a commit, abort or restore point past `target`.
async fn holds_stop_record(
    archive: &impl ArchiveReader,
    name: &WalFileName,
    seg_size: u32,
    target: &DateTime<Utc>,
    exclusive: bool,
) -> anyhow::Result<bool> {
    let t = target.timestamp_micros();
    Ok(archive
        .records(name, seg_size)
        .await?
        .iter()
        .any(|r| r.unix_micros > t || (exclusive && r.unix_micros == t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testutil::{at, backup, Fixture};

    async fn plan_for(
        backups: &[BackupManifest],
        archive: &Fixture,
        target: Target,
        timeline: TimelineChoice,
    ) -> anyhow::Result<Plan> {
        let req = PlanRequest {
            target: &target,
            exclusive: false,
            backup_id: None,
            timeline: &timeline,
        };
        plan("memory://t", backups, &archive.index(), archive, req).await
    }

    /// The message refusing a plan from [`two_backups`] on `latest` to `target`.
    async fn refusal(archive: &Fixture, target: Target) -> String {
        match plan_for(&two_backups(), archive, target, TimelineChoice::Latest).await {
            Ok(p) => panic!("planned {p:?}, expected a refusal"),
            Err(e) => e.to_string(),
        }
    }

    fn two_backups() -> Vec<BackupManifest> {
        vec![
            backup("b1", "0/2000028", "0/2000100", "2026-11-26T10:00:00Z"),
            backup("b2", "0/4000028", "0/4000100", "2026-11-26T12:00:00Z"),
        ]
    }

    #[test]
    fn timeline_choice() {
        assert_eq!("latest".parse(), Ok(TimelineChoice::Latest));
        assert_eq!("3".parse(), Ok(TimelineChoice::Id(3)));
        assert!("0".parse::<TimelineChoice>().is_err());
    }

    /// A time target takes the newest backup that finished before it, and the WAL from that
    /// backup up to the first segment holding a commit past the target.
    #[tokio::test]
    async fn a_time_target_uses_the_newest_backup_before_it_and_the_wal_up_to_it() {
        let mut a = Fixture::default();
        a.segment(
            "000000010000000000000004",
            "2026-11-26T12:10:00Z",
            &["2026-11-26T12:05:00Z"],
        )
        .segment(
            "000000010000000000000005",
            "2026-11-26T12:30:00Z",
            &["2026-11-26T12:25:00Z"],
        )
        .segment("000000010000000000000006", "2026-11-26T13:00:00Z", &[]);
        let target = Target::Time(at("2026-11-26T12:20:00Z"));
        let p = plan_for(&two_backups(), &a, target, TimelineChoice::Latest)
            .await
            .unwrap();
        assert_eq!(p.backup, "b2");
        let wal = p.wal.unwrap();
        assert_eq!(wal.first.as_str(), "000000010000000000000004");
        assert_eq!(
            wal.last.map(|l| l.to_string()).as_deref(),
            Some("000000010000000000000005"),
            "the scan stops at the segment whose commit is past the target"
        );
        assert_eq!(wal.count, 2);

        // before the second backup finished: the first one
        let early = Target::Time(at("2026-11-26T11:00:00Z"));
        a.segment(
            "000000010000000000000002",
            "2026-11-26T11:30:00Z",
            &["2026-11-26T11:10:00Z"],
        )
        .segment("000000010000000000000003", "2026-11-26T11:40:00Z", &[]);
        let p = plan_for(&two_backups(), &a, early, TimelineChoice::Latest)
            .await
            .unwrap();
        assert_eq!(p.backup, "b1");
        // and before any backup finished: refused, naming the window's start
        let e = refusal(&a, Target::Time(at("2026-11-26T09:00:00Z"))).await;
        assert!(e.contains("before the earliest backup"), "{e}");
    }

    /// A segment missing between the backup and the target refuses the plan, naming it.
    #[tokio::test]
    async fn a_missing_segment_before_the_target_is_refused() {
        let mut a = Fixture::default();
        a.segment("000000010000000000000004", "2026-11-26T12:10:00Z", &[])
            .segment("000000010000000000000006", "2026-11-26T12:30:00Z", &[]);
        let e = refusal(&a, Target::Lsn("0/6000000".parse().unwrap())).await;
        assert!(e.contains("000000010000000000000005 is missing"), "{e}");
        // replaying to the end stops at the gap only when nothing after it is archived
        let e = refusal(&a, Target::End).await;
        assert!(e.contains("000000010000000000000005 is missing"), "{e}");
    }

    /// `latest` follows the newest timeline through its history file: segments after the
    /// switch point come from the new timeline.
    #[tokio::test]
    async fn the_latest_timeline_is_followed_through_its_history() {
        let mut a = Fixture::default();
        a.segment("000000010000000000000004", "2026-11-26T12:10:00Z", &[])
            .segment("000000010000000000000005", "2026-11-26T12:20:00Z", &[])
            .segment("000000020000000000000005", "2026-11-26T12:30:00Z", &[])
            .segment("000000020000000000000006", "2026-11-26T12:40:00Z", &[]);
        a.histories
            .insert(2, "1\t0/5000100\tno recovery target specified\n".into());
        let p = plan_for(&two_backups(), &a, Target::End, TimelineChoice::Latest)
            .await
            .unwrap();
        assert_eq!(p.timeline, TimelineId(2));
        assert_eq!(p.timeline_path, [TimelineId(1), TimelineId(2)]);
        let wal = p.wal.unwrap();
        assert_eq!(
            wal.last.map(|l| l.to_string()).as_deref(),
            Some("000000020000000000000006")
        );
        assert_eq!(wal.count, 3);
        // `current` stays on the backup's timeline
        let p = plan_for(&two_backups(), &a, Target::End, TimelineChoice::Current)
            .await
            .unwrap();
        assert_eq!(p.timeline, TimelineId(1));
    }

    /// A stray fork (a side-by-side restore that archived its timeline 2 here, branching
    /// before the newest backup was consistent) is not what `latest` means for that backup:
    /// the plan follows the newest timeline whose history contains the backup, and names the
    /// stray. A newer timeline that does contain it is still followed.
    #[tokio::test]
    async fn latest_passes_over_a_stray_fork_before_the_backup() {
        let mut a = Fixture::default();
        a.segment("000000010000000000000004", "2026-11-26T12:10:00Z", &[])
            .segment("000000010000000000000005", "2026-11-26T12:20:00Z", &[])
            .segment("000000020000000000000003", "2026-11-26T11:30:00Z", &[]);
        a.histories
            .insert(2, "1\t0/3000100\tno recovery target specified\n".into());
        let p = plan_for(&two_backups(), &a, Target::End, TimelineChoice::Latest)
            .await
            .unwrap();
        assert_eq!(p.backup, "b2");
        assert_eq!(p.timeline, TimelineId(1));
        assert_eq!(p.timeline_path, [TimelineId(1)]);
        assert_eq!(p.wal.unwrap().count, 2);
        assert_eq!(p.stray_timelines.len(), 1);
        assert_eq!(p.stray_timelines[0].timeline, TimelineId(2));
        let why = &p.stray_timelines[0].reason;
        assert!(
            why.contains("forked from timeline 1 at 0/3000100, before backup b2"),
            "{why}"
        );
        // asked for by number, the stray is still refused
        let e = plan_for(&two_backups(), &a, Target::End, TimelineChoice::Id(2))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("timeline 2 forked"), "{e}");

        // a timeline 3 forking from 1 after the backup is followed; 2 stays a stray
        a.segment("000000030000000000000005", "2026-11-26T12:30:00Z", &[]);
        a.histories
            .insert(3, "1\t0/5000100\tno recovery target specified\n".into());
        let p = plan_for(&two_backups(), &a, Target::End, TimelineChoice::Latest)
            .await
            .unwrap();
        assert_eq!(p.timeline, TimelineId(3));
        assert_eq!(p.timeline_path, [TimelineId(1), TimelineId(3)]);
        let strays: Vec<u32> = p.stray_timelines.iter().map(|s| s.timeline.0).collect();
        assert!(
            strays.is_empty(),
            "{strays:?}: newer than 2 was found first"
        );
    }

    /// The stray fork is a timeline no backup reaches; the timeline that does contain a
    /// backup, and the backups' own, are not.
    #[tokio::test]
    async fn unreachable_timelines_are_the_strays() {
        let mut a = Fixture::default();
        a.segment("000000010000000000000004", "2026-11-26T12:10:00Z", &[])
            .segment("000000020000000000000003", "2026-11-26T11:30:00Z", &[])
            .segment("000000030000000000000005", "2026-11-26T12:30:00Z", &[]);
        a.histories
            .insert(2, "1\t0/3000100\tno recovery target specified\n".into());
        a.histories
            .insert(3, "1\t0/5000100\tno recovery target specified\n".into());
        // only b2: timeline 2 forked before it was consistent
        let b2 = &two_backups()[1..];
        let strays = unreachable_timelines(b2, &a.index(), &a).await;
        assert_eq!(strays.len(), 1, "{strays:?}");
        assert_eq!(strays[0].timeline, TimelineId(2));
        assert!(strays[0].reason.contains("before backup b2"), "{strays:?}");
        // b1 finished before the fork: timeline 2 is reachable from it
        let strays = unreachable_timelines(&two_backups(), &a.index(), &a).await;
        assert!(strays.is_empty(), "{strays:?}");
    }

    /// A transaction or restore point target must be in the archived WAL after the backup:
    /// otherwise recovery would run to the end and fail, so the plan is refused up front.
    #[tokio::test]
    async fn transaction_and_restore_point_targets_need_their_record() {
        let mut a = Fixture::default();
        a.segment("000000010000000000000004", "2026-11-26T12:10:00Z", &[])
            .segment("000000010000000000000005", "2026-11-26T12:20:00Z", &[])
            .commit("000000010000000000000005", 900, "2026-11-26T12:15:00Z")
            .restore_point("000000010000000000000005", "before", "2026-11-26T12:16:00Z");
        let ok = |t: Target| {
            let a = &a;
            async move { plan_for(&two_backups(), a, t, TimelineChoice::Latest).await }
        };
        assert!(ok(Target::Xid(900)).await.is_ok());
        // an xid8 with an epoch above the 32-bit xid is the same transaction
        assert!(ok(Target::Xid((1 << 32) | 900)).await.is_ok());
        assert!(ok(Target::Name("before".into())).await.is_ok());
        let e = refusal(&a, Target::Xid(901)).await;
        assert!(
            e.contains("transaction 901 commits or aborts nowhere"),
            "{e}"
        );
        let e = refusal(&a, Target::Name("nope".into())).await;
        assert!(e.contains("no restore point named \"nope\""), "{e}");
    }
}
